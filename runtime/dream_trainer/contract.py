"""The environment contract between the operator and the runtime.

The operator sets these variables in every worker pod; the runtime reads them. This module is
imported by both sides, so it must stay free of torch, kopf and any third-party import.
"""

from __future__ import annotations

JOB_NAME = "DREAM_JOB_NAME"
"""Name of the DreamTrainJob this process belongs to."""

JOB_NAMESPACE = "DREAM_JOB_NAMESPACE"
"""Namespace of the DreamTrainJob."""

JOB_UID = "DREAM_JOB_UID"
"""UID of the DreamTrainJob; with the generation it forms the rendezvous id."""

RESTART_COUNT = "DREAM_RESTART_COUNT"
"""The pod group's generation: 0 on first start, +1 on every gang restart."""

CHECKPOINT_URI = "DREAM_CHECKPOINT_URI"
"""Where checkpoints live: a local path, ``file://`` or ``s3://bucket/prefix`` URL."""

PROGRESS_PORT = "DREAM_PROGRESS_PORT"
"""Port of the rank-0 progress endpoint that the operator polls (and Prometheus may scrape)."""

TERMINATION_LOG = "DREAM_TERMINATION_LOG"
"""File that rank 0 writes its final progress to (JSON, as served by ``/progress``) when training
ends: the container's ``terminationMessagePath``, so Kubernetes keeps it in the pod's status and
the operator can show the last step after the pods have exited."""

LOG_DIR = "DREAM_LOG_DIR"
"""Where the local logger writes ``metrics.jsonl`` and ``loss_curve.png`` (when the config does
not say). ``dream-trainer run JOB.yaml`` sets it to its run directory, next to the nodes' logs; in
a pod, set it in ``spec.env`` to a mounted volume's path to keep the files. Not reserved: the
operator never sets it."""

PREEMPTED_EXIT_CODE = 143
"""Exit status of a worker that was asked to stop (SIGTERM: eviction, node drain) and wrote its
emergency checkpoint (128 + SIGTERM, as a shell reports it). The group should be restarted."""

ALL = (JOB_NAME, JOB_NAMESPACE, JOB_UID, RESTART_COUNT, CHECKPOINT_URI, PROGRESS_PORT,
       TERMINATION_LOG)
