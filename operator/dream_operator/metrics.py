"""Prometheus metrics of the operator (served by ``dream-operator run --metrics-port``)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

RECONCILES = Counter("dream_operator_reconciles_total", "Reconciliations of a job", ["result"])
RECONCILE_SECONDS = Histogram("dream_operator_reconcile_seconds", "Time to reconcile one job")
CONFLICTS = Counter("dream_operator_status_conflicts_total",
                    "Status writes rejected because the job changed since it was read")
TRANSITIONS = Counter("dream_operator_phase_transitions_total", "Jobs entering a phase", ["phase"])
RESTARTS = Counter("dream_operator_group_restarts_total", "Gang restarts of pod groups")
PODS_CREATED = Counter("dream_operator_pods_created_total", "Worker pods created")
PODS_DELETED = Counter("dream_operator_pods_deleted_total", "Worker pods deleted", ["force"])
LEADING = Gauge("dream_operator_leader", "1 while this replica holds the leader lease")
