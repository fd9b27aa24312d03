"""The whole system: kubectl applies examples/jobs/llama-s3.yaml, the operator runs it, faults
strike mid-training, and every time the job resumes from its last committed checkpoint and ends
with exactly the loss of an uninterrupted run."""

from __future__ import annotations

import time
from typing import Any

import pytest

from e2e.harness import (
    JOB,
    RESUMED,
    Environment,
    LocalEnvironment,
    Recovery,
    final_summary,
    finish,
    start_job,
    train_through,
    wait_for,
)

pytestmark = pytest.mark.timeout(600)


@pytest.fixture(scope="module")
def uninterrupted(env: Environment) -> dict[str, Any]:
    """One run with no fault: its status and the final loss every faulty run must match."""
    status, logs = finish(env, start_job(env))
    return {"status": status, "logs": logs, "loss": final_summary(logs)["loss"]}


@pytest.fixture
def nodes_revived(env: Environment):
    yield
    if isinstance(env, LocalEnvironment):
        env.revive_nodes()


def check(recovery: Recovery, uninterrupted: dict[str, Any]) -> None:
    assert recovery.restarts >= 1, recovery
    assert recovery.resumed_step > 0, recovery
    if recovery.fault != "sigterm":  # a crash resumes from a periodic checkpoint (every 20)
        assert recovery.resumed_step % 20 == 0, recovery
    assert recovery.final_loss == uninterrupted["loss"], recovery
    print(f"\n{recovery} steps_lost={recovery.steps_lost}")


def test_the_example_job_trains_and_succeeds(env: Environment,
                                             uninterrupted: dict[str, Any]) -> None:
    status = uninterrupted["status"]
    assert status["restarts"] == 0
    assert final_summary(uninterrupted["logs"])["steps"] == 120
    # The last step and loss: from rank 0's termination message, after the pods exited.
    assert status["progress"]["step"] == 120
    assert 0 < status["progress"]["loss"] < 10  # rank 0's mean over the last 10 steps
    assert status["lastCheckpoint"].startswith("s3://dream-checkpoints/llama-s3/step_")
    assert RESUMED.search(uninterrupted["logs"]) is None  # a fresh start, nothing to resume
    table = env.kubectl("get", "dtj", JOB)
    assert "Succeeded" in table and " 120 " in table
    described = env.kubectl("describe", "dtj", JOB)
    assert "AllWorkersSucceeded" in described


def test_killed_worker(env: Environment, uninterrupted: dict[str, Any]) -> None:
    check(train_through(env, "kill worker", lambda: env.kill_pod_processes(f"{JOB}-g0-1")),
          uninterrupted)


def test_dead_node(env: Environment, uninterrupted: dict[str, Any], nodes_revived: None) -> None:
    recovery = train_through(env, "node NotReady", lambda: env.kill_node_of(f"{JOB}-g0-1"))
    check(recovery, uninterrupted)


def test_killed_rendezvous_host(env: Environment, uninterrupted: dict[str, Any]) -> None:
    check(train_through(env, "kill pod 0", lambda: env.kill_pod_processes(f"{JOB}-g0-0")),
          uninterrupted)


def test_operator_killed_and_restarted(env: Environment, uninterrupted: dict[str, Any]) -> None:
    """The operator dies mid-training; a worker dies while it is down. The pods train on, and
    the restarted operator restarts the group."""

    def inject() -> None:
        with env.operator_down():
            env.kill_pod_processes(f"{JOB}-g0-1")
            wait_for(lambda: any(p["status"].get("phase") == "Failed" for p in env.pods(JOB)),
                     60, "the worker pod to fail")
            time.sleep(1)
            assert env.status(JOB)["phase"] == "Running"  # nobody reconciled it meanwhile

    check(train_through(env, "operator killed", inject), uninterrupted)


def test_sigterm_checkpoints_and_loses_nothing(env: Environment,
                                               uninterrupted: dict[str, Any]) -> None:
    """Graceful deletion (what eviction and drains do): the workers finish their step, write an
    emergency checkpoint and exit; the next group resumes from exactly there."""
    recovery = train_through(env, "sigterm", lambda: env.evict(f"{JOB}-g0-1"))
    check(recovery, uninterrupted)
    assert recovery.resumed_step >= recovery.last_step_before
    assert recovery.steps_lost == 0
