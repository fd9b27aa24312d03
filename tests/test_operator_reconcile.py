"""The operator's pure core: desired group and reconcile decisions, one test per path."""

from __future__ import annotations

import json
from datetime import timedelta

import pytest
from dream_operator import api
from dream_operator.api import ConditionType, Phase, Reason
from dream_operator.controller import merge_patch
from dream_operator.group import desired_group
from dream_operator.observe import pod_view
from dream_operator.reconcile import (
    CreatePod,
    CreateService,
    DeleteJob,
    DeletePod,
    Settings,
    backoff_seconds,
    reconcile,
    with_final_progress,
    with_progress,
)
from operator_fixtures import T0, job, node, pod, ts, with_status

NODES = [node("n0"), node("n1"), node("n2")]


def decide(body, pods=(), nodes=NODES, now=T0, settings=Settings()):
    return reconcile(body, list(pods), list(nodes), now, settings)


def cond(status, type_):
    return next((c for c in status.conditions if c.type == type_), None)


def creates(decision):
    return [a.manifest["metadata"]["name"] for a in decision.actions if isinstance(a, CreatePod)]


def deletes(decision):
    return {a.name: a.grace_seconds for a in decision.actions if isinstance(a, DeletePod)}


def env_of(manifest):
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in manifest["spec"]["containers"][0]["env"]}


def running_job(**kw):
    """A job whose first group is up: its status as the operator wrote it, and its pods."""
    body = job(**kw)
    first = decide(body)
    pods = [pod("llama", 0, r, node=f"n{r}") for r in range(2)]
    up = decide(with_status(body, first.status), pods)
    assert up.status.phase == Phase.RUNNING
    return with_status(body, up.status), pods


# --- the desired group --------------------------------------------------------------------------


def test_new_job_creates_service_and_one_pod_per_node():
    d = decide(job())
    assert d.status.phase == Phase.PENDING
    assert cond(d.status, ConditionType.CREATED).status == "True"
    assert d.status.start_time == T0 and d.status.observed_generation == 1
    assert creates(d) == ["llama-g0-0", "llama-g0-1"]
    assert any(isinstance(a, CreateService) for a in d.actions)
    assert [e.reason for e in d.events] == [Reason.JOB_CREATED]


def test_pod_runs_torchrun_with_the_contract():
    body = job(checkpoint={"uri": "s3://bucket/run", "secretRef": {"name": "s3-creds"}},
               env=[{"name": "FOO", "value": "1"}], args=["--lr", "3e-4"],
               wandb={"project": "p", "mode": "offline", "apiKeySecretRef": {"name": "wb"}},
               podTemplate={"nodeSelector": {"gpu": "h100"}, "labels": {"team": "a"}})
    parsed = api.DreamTrainJob.model_validate(body)
    service, pods = desired_group(parsed, 3)
    p = pods[1]
    c = p["spec"]["containers"][0]
    assert c["command"] == ["torchrun"]
    assert c["args"] == ["--nnodes=2:2", "--nproc-per-node=2", "--rdzv-backend=c10d",
                         "--rdzv-endpoint=$(DREAM_RDZV_ENDPOINT)", "--rdzv-id=uid-1-3",
                         "--max-restarts=0", "train.py", "--lr", "3e-4"]
    env = env_of(p)
    assert env["DREAM_JOB_NAME"] == "llama" and env["DREAM_JOB_UID"] == "uid-1"
    assert env["DREAM_RESTART_COUNT"] == "3" and env["DREAM_CHECKPOINT_URI"] == "s3://bucket/run"
    assert env["DREAM_PROGRESS_PORT"] == "8090" and env["FOO"] == "1"
    assert env["DREAM_RDZV_ENDPOINT"] == "llama-0.llama.default.svc:29400"
    assert env["WANDB_MODE"] == "offline" and env["WANDB_PROJECT"] == "p"
    assert env["WANDB_API_KEY"] == {"secretKeyRef": {"name": "wb", "key": "api-key"}}
    assert c["envFrom"] == [{"secretRef": {"name": "s3-creds"}}]
    assert p["spec"]["restartPolicy"] == "Never"
    assert p["spec"]["hostname"] == "llama-1" and p["spec"]["subdomain"] == "llama"
    assert p["spec"]["nodeSelector"] == {"gpu": "h100"}
    assert p["metadata"]["labels"]["team"] == "a"
    owner = p["metadata"]["ownerReferences"][0]
    assert owner["uid"] == "uid-1" and owner["controller"] is True
    assert service["spec"]["clusterIP"] == "None" and service["spec"]["publishNotReadyAddresses"]


def test_module_command_and_elastic_range():
    parsed = api.DreamTrainJob.model_validate(job(command=["-m", "pkg.train"], nodes={"min": 1, "max": 3}))
    _, pods = desired_group(parsed, 0)
    args = pods[0]["spec"]["containers"][0]["args"]
    assert len(pods) == 3
    assert args[0] == "--nnodes=1:3" and "--max-restarts=100" in args
    assert args[-2:] == ["--module", "pkg.train"]


def test_reserved_env_is_an_invalid_spec_naming_the_field():
    d = decide(job(env=[{"name": "DREAM_RESTART_COUNT", "value": "7"}]))
    assert d.status.phase == Phase.FAILED
    assert "spec.env[0].name" in d.status.message
    assert cond(d.status, ConditionType.FAILED).reason == Reason.INVALID_SPEC
    assert creates(d) == []


@pytest.mark.parametrize("spec, field", [
    ({"nodes": {"min": 3, "max": 2}}, "spec.nodes"),
    ({"nodes": {"count": 0}}, "spec.nodes.count"),
    ({"nprocPerNode": -1}, "spec.nprocPerNode"),
    ({"restartPolicy": {"maxRestarts": "many"}}, "spec.restartPolicy.maxRestarts"),
    ({"bogus": 1}, "spec.bogus"),
])
def test_invalid_specs_fail_with_the_field_named(spec, field):
    d = decide(job(**spec) if "nodes" not in spec else job(nodes=spec["nodes"]))
    assert d.status.phase == Phase.FAILED
    assert field in d.status.message
    assert [e.type for e in d.events][-1] == "Warning"


def test_overlong_name_fails():
    d = decide(job(name="x" * 57))
    assert d.status.phase == Phase.FAILED and "metadata.name" in d.status.message


# --- running and idempotence ------------------------------------------------------------------


def test_all_pods_running_is_running_and_repeat_changes_nothing():
    body, pods = running_job()
    again = decide(body, pods)
    assert again.status == api.DreamTrainJobStatus.model_validate(body["status"]).model_copy(
        update={"observed_generation": 1})
    assert again.actions == [] and again.events == []
    assert again.status.ready_nodes == 2 and again.status.world_size == 4
    assert cond(again.status, ConditionType.RUNNING).status == "True"


def test_only_missing_pods_are_created():
    body = job()
    first = decide(body)
    d = decide(with_status(body, first.status), [pod("llama", 0, 0)])
    assert creates(d) == ["llama-g0-1"]


# --- failures and gang restarts -----------------------------------------------------------------


@pytest.mark.parametrize("failed, reason, text", [
    (pod("llama", 0, 1, phase="Failed", exit_code=1), Reason.WORKER_FAILED, "exit code 1"),
    (pod("llama", 0, 1, phase="Failed", reason="Evicted"), Reason.WORKER_EVICTED, "evicted"),
    (pod("llama", 0, 1, phase="Failed", exit_code=143), Reason.WORKER_PREEMPTED, "SIGTERM"),
    (pod("llama", 0, 1, deleting_at=T0), Reason.WORKER_DELETED, "being deleted"),
])
def test_worker_failure_restarts_the_whole_group(failed, reason, text):
    body, pods = running_job()
    d = decide(body, [pods[0], failed])
    s = d.status
    assert s.phase == Phase.RESTARTING and s.restarts == 1 and s.group_generation == 1
    assert s.group_start_time == T0 + timedelta(seconds=10)
    assert cond(s, ConditionType.RESTARTING).reason == reason and text in s.message
    assert cond(s, ConditionType.RUNNING).status == "False"
    assert "llama-g0-0" in deletes(d) and creates(d) == []
    assert d.requeue_after == pytest.approx(10)
    assert d.events[-1].type == "Warning" and d.events[-1].reason == reason


def test_restart_waits_for_old_pods_then_backoff_then_creates_next_generation():
    body, pods = running_job()
    restarted = with_status(body, decide(body, [pods[0], pod("llama", 0, 1, phase="Failed", exit_code=1)]).status)
    # Old pods still there (one already terminating): delete the rest, create nothing.
    d = decide(restarted, [pod("llama", 0, 0, deleting_at=T0), pod("llama", 0, 1, phase="Failed")])
    assert deletes(d) == {"llama-g0-1": None} and creates(d) == []
    assert d.status.restarts == 1  # the stale failure is not counted twice
    # Old pods gone, backoff running: wait.
    d = decide(restarted, [], now=T0 + timedelta(seconds=4))
    assert creates(d) == [] and d.requeue_after == pytest.approx(6)
    # Backoff over: generation 1 with its own rendezvous id and restart count.
    d = decide(restarted, [], now=T0 + timedelta(seconds=10))
    assert creates(d) == ["llama-g1-0", "llama-g1-1"]
    manifest = d.actions[-1].manifest
    assert env_of(manifest)["DREAM_RESTART_COUNT"] == "1"
    assert "--rdzv-id=uid-1-1" in manifest["spec"]["containers"][0]["args"]
    assert d.status.phase == Phase.RESTARTING
    # Running again.
    up = decide(with_status(restarted, d.status), [pod("llama", 1, r) for r in range(2)],
                now=T0 + timedelta(seconds=20))
    assert up.status.phase == Phase.RUNNING
    assert cond(up.status, ConditionType.RESTARTING).status == "False"


def test_backoff_is_exponential_and_capped():
    policy = api.RestartPolicy(backoff_seconds=10, max_backoff_seconds=60)
    assert [backoff_seconds(policy, n) for n in range(6)] == [0, 10, 20, 40, 60, 60]
    assert backoff_seconds(api.RestartPolicy(backoff_seconds=0), 3) == 0


def test_not_ready_node_is_a_node_failure():
    body, pods = running_job()
    nodes = [node("n0"), node("n1", ready=False, since=T0 - timedelta(seconds=1))]
    d = decide(body, pods, nodes)
    assert d.status.restarts == 1
    assert cond(d.status, ConditionType.RESTARTING).reason == Reason.NODE_LOST


def test_node_not_ready_within_tolerance_waits():
    body, pods = running_job()
    nodes = [node("n0"), node("n1", ready=False, since=T0 - timedelta(seconds=5))]
    d = decide(body, pods, nodes, settings=Settings(node_lost_after_seconds=30))
    assert d.status.restarts == 0 and d.actions == []
    assert d.requeue_after == pytest.approx(25)


def test_deleted_node_object_is_a_node_failure():
    body, pods = running_job()
    d = decide(body, pods, [node("n0")])
    assert cond(d.status, ConditionType.RESTARTING).reason == Reason.NODE_LOST


def test_pod_stuck_terminating_on_dead_node_is_force_deleted_after_grace():
    body, pods = running_job()
    restarted = with_status(body, decide(body, pods, [node("n0")]).status)
    dead = [node("n0")]
    stuck = [pod("llama", 0, 0, phase="Failed"), pod("llama", 0, 1, node="n1", deleting_at=T0 - timedelta(seconds=10))]
    d = decide(restarted, stuck, dead)
    assert deletes(d) == {"llama-g0-0": None}  # not forced yet (30 s past its deadline)
    assert d.requeue_after == pytest.approx(10)  # the backoff ends first; the force time is 20 s away
    d = decide(restarted, stuck, dead, now=T0 + timedelta(seconds=21))
    assert deletes(d)["llama-g0-1"] == 0
    assert creates(d) == []  # the new group waits until the stuck pod is really gone


def test_terminating_pod_on_live_node_is_not_forced():
    body, pods = running_job()
    restarted = with_status(body, decide(body, [pods[0], pod("llama", 0, 1, phase="Failed")]).status)
    d = decide(restarted, [pod("llama", 0, 0, deleting_at=T0 - timedelta(hours=1))])
    assert deletes(d) == {}


def test_max_restarts_exceeded_fails_with_reason_and_cleans_running_pods():
    body, pods = running_job(restartPolicy={"maxRestarts": 0})
    d = decide(body, [pods[0], pod("llama", 0, 1, phase="Failed", exit_code=2)])
    assert d.status.phase == Phase.FAILED and d.status.completion_time == T0
    c = cond(d.status, ConditionType.FAILED)
    assert c.reason == Reason.MAX_RESTARTS_EXCEEDED and "maxRestarts=0" in c.message
    assert deletes(d) == {"llama-g0-0": None}  # cleanPodPolicy Running keeps the failed pod


@pytest.mark.parametrize("policy, deleted", [("All", {"llama-g0-0", "llama-g0-1"}), ("None", set())])
def test_clean_pod_policy(policy, deleted):
    body, pods = running_job(restartPolicy={"maxRestarts": 0}, runPolicy={"cleanPodPolicy": policy})
    d = decide(body, [pods[0], pod("llama", 0, 1, phase="Failed", exit_code=2)])
    assert set(deletes(d)) == deleted


# --- elastic ------------------------------------------------------------------------------------


def elastic_running():
    body = job(nodes={"min": 2, "max": 3})
    first = decide(body)
    pods = [pod("llama", 0, r, node=f"n{r}") for r in range(3)]
    up = decide(with_status(body, first.status), pods)
    assert up.status.phase == Phase.RUNNING
    return with_status(body, up.status), pods


def test_elastic_job_replaces_a_lost_node_without_restarting():
    body, pods = elastic_running()
    d = decide(body, [pods[0], pods[1], pod("llama", 0, 2, phase="Failed", exit_code=1)])
    assert d.status.restarts == 0 and d.status.phase == Phase.RUNNING
    assert deletes(d) == {"llama-g0-2": None} and creates(d) == []
    assert d.events[-1].reason == Reason.REPLACING_NODE
    d = decide(with_status(body, d.status), pods[:2])
    assert creates(d) == ["llama-g0-2"] and d.status.restarts == 0


def test_elastic_job_below_min_restarts():
    body, pods = elastic_running()
    failed = [pod("llama", 0, r, phase="Failed", exit_code=1) for r in (1, 2)]
    d = decide(body, [pods[0], *failed])
    assert d.status.restarts == 1 and d.status.group_generation == 1


def test_elastic_job_losing_rank0_restarts():
    body, pods = elastic_running()
    d = decide(body, [pod("llama", 0, 0, phase="Failed", exit_code=1), *pods[1:]])
    assert d.status.restarts == 1
    assert cond(d.status, ConditionType.RESTARTING).reason == Reason.RENDEZVOUS_HOST_LOST


# --- success, suspend, deadline, ttl -----------------------------------------------------------


def test_all_workers_succeeded():
    body, _ = running_job()
    d = decide(body, [pod("llama", 0, r, phase="Succeeded") for r in range(2)])
    assert d.status.phase == Phase.SUCCEEDED and d.status.completion_time == T0
    assert cond(d.status, ConditionType.SUCCEEDED).status == "True"
    assert cond(d.status, ConditionType.RUNNING).status == "False"
    done = decide(with_status(body, d.status), [pod("llama", 0, r, phase="Succeeded") for r in range(2)])
    assert done.actions == [] and done.events == [] and done.status.phase == Phase.SUCCEEDED


def finished_pod(generation: int, rank: int, message: str) -> dict:
    out = pod("llama", generation, rank, phase="Succeeded", exit_code=0)
    out["status"]["containerStatuses"][0]["state"]["terminated"]["message"] = message
    return out


def test_final_progress_comes_from_rank0s_termination_message():
    """After the pods exit nobody serves /progress: the last step comes from the message the
    runtime wrote to its terminationMessagePath, stable across reconciles."""
    body, _ = running_job()
    report = {"step": 120, "epoch": 1, "loss": 2.47, "last_checkpoint": "s3://b/step_120",
              "updated": T0.timestamp() - 5}
    pods = [finished_pod(0, 0, json.dumps(report)), finished_pod(0, 1, "")]
    d = decide(body, pods)
    assert d.status.phase == Phase.SUCCEEDED
    assert (d.status.progress.step, d.status.progress.loss) == (120, 2.47)
    assert d.status.progress.update_time == T0 - timedelta(seconds=5)
    assert d.status.last_checkpoint == "s3://b/step_120"
    again = decide(with_status(body, d.status), pods, now=T0 + timedelta(minutes=1))
    assert again.status == d.status
    # A message that is not a progress report with its time changes nothing.
    for message in ("OOMKilled: out of memory", json.dumps({"step": 9}), json.dumps([1])):
        other = decide(body, [finished_pod(0, r, message) for r in range(2)])
        assert other.status.progress is None
    # Nor does a message of an older group.
    s = with_final_progress(d.status.model_copy(update={"group_generation": 1, "progress": None}),
                            [pod_view(pods[0])])
    assert s.progress is None


def test_partial_success_waits_and_never_starts_stragglers():
    body, pods = running_job()
    d = decide(body, [pod("llama", 0, 0, phase="Succeeded")])
    assert d.status.phase != Phase.SUCCEEDED and creates(d) == []


def test_elastic_success_with_an_unscheduled_pod():
    body, _ = elastic_running()
    d = decide(body, [pod("llama", 0, 0, phase="Succeeded"), pod("llama", 0, 1, phase="Succeeded"),
                      pod("llama", 0, 2, phase="Pending", node=None)])
    assert d.status.phase == Phase.SUCCEEDED
    assert deletes(d) == {"llama-g0-2": None}


def test_suspend_deletes_pods_and_resume_starts_a_new_group():
    body, pods = running_job()
    body["spec"]["runPolicy"] = {"suspend": True}
    d = decide(body, pods)
    assert d.status.phase == Phase.SUSPENDED and set(deletes(d)) == {"llama-g0-0", "llama-g0-1"}
    assert cond(d.status, ConditionType.SUSPENDED).status == "True"
    suspended = with_status(body, d.status)
    suspended["spec"]["runPolicy"] = {"suspend": False}
    later = T0 + timedelta(hours=1)
    d = decide(suspended, [], now=later)
    assert cond(d.status, ConditionType.SUSPENDED).status == "False"
    assert d.status.group_generation == 1 and d.status.restarts == 0 and d.status.start_time == later
    assert creates(d) == ["llama-g1-0", "llama-g1-1"]


def test_active_deadline():
    body, pods = running_job(runPolicy={"activeDeadlineSeconds": 60})
    d = decide(body, pods, now=T0 + timedelta(seconds=30))
    assert d.status.phase == Phase.RUNNING and d.requeue_after == pytest.approx(30)
    d = decide(body, pods, now=T0 + timedelta(seconds=60))
    assert d.status.phase == Phase.FAILED
    assert cond(d.status, ConditionType.FAILED).reason == Reason.DEADLINE_EXCEEDED
    assert set(deletes(d)) == {"llama-g0-0", "llama-g0-1"}


def test_ttl_deletes_finished_job():
    body, _ = running_job(runPolicy={"ttlSecondsAfterFinished": 60})
    done = [pod("llama", 0, r, phase="Succeeded") for r in range(2)]
    finished = with_status(body, decide(body, done).status)
    d = decide(finished, done, now=T0 + timedelta(seconds=10))
    assert not any(isinstance(a, DeleteJob) for a in d.actions) and d.requeue_after == pytest.approx(50)
    d = decide(finished, done, now=T0 + timedelta(seconds=60))
    assert any(isinstance(a, DeleteJob) for a in d.actions)


# --- progress and status plumbing --------------------------------------------------------------


def test_progress_report_updates_status():
    status = api.DreamTrainJobStatus()
    s = with_progress(status, {"step": 12, "epoch": 1, "loss": 2.5, "last_checkpoint": "s3://b/step_10"}, T0)
    assert s.progress.step == 12 and s.progress.loss == 2.5 and s.progress.update_time == T0
    assert s.last_checkpoint == "s3://b/step_10"
    assert with_progress(s, {"step": 13, "loss": float("nan")}, T0).progress.loss is None
    assert with_progress(s, {"step": -1}, T0) == s
    assert with_progress(s, "garbage", T0) == s
    assert with_progress(s, {"step": True}, T0) == s


def test_merge_patch_clears_removed_fields():
    old = {"phase": "Running", "message": "x", "progress": {"step": 1, "loss": 2.0}}
    new = {"phase": "Running", "progress": {"step": 2}}
    assert merge_patch(old, new) == {"message": None, "progress": {"step": 2, "loss": None}}


def test_status_round_trips_through_json():
    body, pods = running_job()
    assert body["status"]["conditions"][0]["lastTransitionTime"] == ts(T0)


def test_phase_stays_running_while_workers_finish():
    body, pods = running_job()
    d = decide(body, [pod("llama", 0, 0, phase="Succeeded"), pods[1]])
    assert d.status.phase == Phase.RUNNING


def test_force_deletion_counts_from_the_request_not_the_grace_period():
    body, pods = running_job()
    restarted = with_status(body, decide(body, pods, [node("n0")]).status)
    stuck = pod("llama", 0, 1, node="n1", deleting_at=T0 + timedelta(seconds=120))
    stuck["metadata"]["deletionGracePeriodSeconds"] = 120  # requested at T0, 120 s grace
    assert deletes(decide(restarted, [stuck], [node("n0")], now=T0 + timedelta(seconds=29))) == {}
    assert deletes(decide(restarted, [stuck], [node("n0")], now=T0 + timedelta(seconds=30))) == {"llama-g0-1": 0}
