"""Checkpoints under torchrun: kill and resume bitwise (2 and 4 ranks), reshard 4 -> 2 with every
sample seen exactly once, a rank killed mid-save, and SIGTERM preemption."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import torch

from dream_trainer.checkpoint.storage import CheckpointStore

SCRIPT = Path(__file__).parent / "distributed" / "checkpoint_scenarios.py"


def launch(nproc: int, out: Path, root: str, scenarios: list[str], *, expect_ok: bool = True,
           env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone",
               f"--nproc-per-node={nproc}", str(SCRIPT), str(out), root, *scenarios]
    done = subprocess.run(command, env={**os.environ, "OMP_NUM_THREADS": "1", **(env or {})},
                          capture_output=True, text=True, timeout=600)
    if expect_ok and done.returncode:
        raise AssertionError(f"launch failed ({done.returncode}):\n{done.stderr[-6000:]}")
    if not expect_ok:
        assert done.returncode != 0, "the launch was meant to be killed"
    return done


def load(out: Path, name: str) -> dict[str, Any]:
    return torch.load(out / f"{name}.pt")


def assert_bitwise(got: dict[str, Any], want: dict[str, Any]) -> None:
    assert got["params"].keys() == want["params"].keys()
    for name, value in want["params"].items():
        assert torch.equal(got["params"][name], value), name


def epoch_permutation(seed: int = 42, epoch: int = 0, n: int = 64) -> list[int]:
    """The order DistributedSampler visits the toy data set in (independent of world size)."""
    generator = torch.Generator().manual_seed(seed + epoch)
    return torch.randperm(n, generator=generator).tolist()


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory, s3: dict[str, str]) -> dict[str, Any]:
    """All launches; local disk for 4 ranks, SeaweedFS S3 for 2 ranks (and the 4 -> 2 reshard
    reads the 4-rank checkpoint from disk and writes to S3)."""
    import s3fs

    s3fs.S3FileSystem().mkdir("ckpt-distributed")
    out4, out2 = tmp_path_factory.mktemp("out4"), tmp_path_factory.mktemp("out2")
    root4, root2 = str(tmp_path_factory.mktemp("root4")), "s3://ckpt-distributed/ranks2"
    sigterm_log = tmp_path_factory.mktemp("sigterm") / "steps.log"
    env = {"RESHARD_FROM": f"{root4}/killed/step_000000003", "SIGTERM_LOG": str(sigterm_log)}

    launch(4, out4, root4, ["uninterrupted", "killed"], expect_ok=False, env=env)
    launch(4, out4, root4, ["resumed"], env=env)
    launch(2, out2, root2, ["resharded", "uninterrupted", "killed"], expect_ok=False, env=env)
    launch(2, out2, root2, ["resumed", "killed_in_save"], expect_ok=False, env=env)
    launch(2, out2, root2, ["after_killed_save"], env=env)

    # SIGTERM the launcher mid-training, as the kubelet does on eviction.
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone",
               "--nproc-per-node=2", str(SCRIPT), str(out2), root2, "sigterm"]
    process = subprocess.Popen(command, env={**os.environ, "OMP_NUM_THREADS": "1", **env},
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.monotonic() + 300
    while not (sigterm_log.exists() and len(sigterm_log.read_text().split()) >= 3):
        assert process.poll() is None, process.stdout.read()[-4000:]
        assert time.monotonic() < deadline, "training never reached step 3"
        time.sleep(0.1)
    process.send_signal(signal.SIGTERM)
    output, _ = process.communicate(timeout=300)
    launch(2, out2, root2, ["after_sigterm"], env=env)
    return {"out4": out4, "out2": out2, "root4": root4, "root2": root2,
            "sigterm_output": output, "sigterm_log": sigterm_log.read_text().split()}


@pytest.mark.parametrize("ranks", [4, 2])
def test_killed_job_resumes_bitwise(runs, ranks) -> None:
    out = runs[f"out{ranks}"]
    uninterrupted, resumed = load(out, "uninterrupted"), load(out, "resumed")
    assert resumed["resumed_from"] == 3  # saved at 3, killed after 4: step 4 is redone
    assert resumed["global_step"] == uninterrupted["global_step"] == 8
    assert resumed["losses"] == uninterrupted["losses"][3:]  # bitwise
    assert resumed["batches"] == uninterrupted["batches"][3:]
    assert_bitwise(resumed, uninterrupted)


def test_resharded_4_to_2_sees_every_sample_once(runs) -> None:
    four, resharded = load(runs["out4"], "uninterrupted"), load(runs["out2"], "resharded")
    assert resharded["resumed_from"] == 3
    order = epoch_permutation()
    seen = [i for batch in four["batches"][:3] for i in batch] + [
        i for batch in resharded["batches"] for i in batch]
    assert sorted(seen) == list(range(64))  # every sample of the epoch exactly once
    assert resharded["batches"] == [sorted(order[8 * k:8 * k + 8]) for k in range(3, 8)]
    # The loss curve continues where the 4-rank run was: same values up to reduction order.
    torch.testing.assert_close(torch.tensor(resharded["losses"]),
                               torch.tensor(four["losses"][3:]), rtol=1e-5, atol=1e-6)


def test_rank_killed_during_save_resumes_from_previous_commit(runs) -> None:
    store = CheckpointStore(f"{runs['root2']}/in_save")
    after = load(runs["out2"], "after_killed_save")
    assert after["resumed_from"] == 2  # the save at step 4 never committed
    assert after["global_step"] == 8
    committed = [r.step for r in store.committed()]
    assert 4 in committed  # the resumed run saved step 4 again, properly this time
    assert_bitwise(after, load(runs["out2"], "uninterrupted"))


def test_sigterm_writes_an_emergency_checkpoint_and_loses_no_step(runs) -> None:
    store = CheckpointStore(f"{runs['root2']}/sigterm")
    records = store.committed()
    # The preempted run's emergency checkpoint, then the resumed run's final one.
    assert [(r.reason, r.step) for r in records][1:] == [("last", 8)]
    last_finished = int(runs["sigterm_log"][-1])
    assert records[0].reason == "preemption"
    assert records[0].step == last_finished  # the step in flight finished and was saved
    assert "got signal: 15" in runs["sigterm_output"]  # the launcher was SIGTERMed
    after = load(runs["out2"], "after_sigterm")
    assert after["resumed_from"] == last_finished
    assert_bitwise(after, load(runs["out2"], "uninterrupted"))
