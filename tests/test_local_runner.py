"""The local runner: ``dream-trainer run JOB.yaml`` runs a DreamTrainJob manifest on this machine."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from dream_operator import group, local

ROOT = Path(__file__).resolve().parents[1]
LLAMA = ROOT / "examples" / "jobs" / "llama.yaml"
JOB = "kind: DreamTrainJob\napiVersion: dreamtrainer.dev/v1alpha1\n"


def write(path: Path, text: str) -> Path:
    path.write_text(textwrap.dedent(text))
    return path


def run_cli(*args: str, cwd: Path = ROOT, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "dream_trainer.cli", "run", *args], cwd=cwd,
                          check=False, capture_output=True, text=True, timeout=timeout)


def summary(output: str) -> dict:
    lines = [line for line in output.splitlines() if line.startswith("[node 0] summary ")]
    assert lines, output[-3000:]
    return json.loads(lines[-1].removeprefix("[node 0] summary "))


# ------------------------------------------------------------------------------------ manifests
@pytest.mark.parametrize("body, expected", [
    ("kind: Pod\napiVersion: v1\nmetadata: {name: x}\n", "exactly one document of kind"),
    ("kind: DreamTrainJob\napiVersion: dreamtrainer.dev/v1\nmetadata: {name: x}\n",
     "apiVersion: 'dreamtrainer.dev/v1'"),
    (JOB + "metadata: {name: Bad_Name}\nspec: {image: i, command: [t.py], nodes: {count: 1}}\n",
     "metadata.name: 'Bad_Name'"),
    (JOB + "metadata: {name: x}\nspec: {image: i, command: [t.py], nodes: {count: 0}}\n",
     "spec.nodes.count"),
    (JOB + "metadata: {name: x}\n"
     + "spec: {image: i, command: [t.py], nodes: {count: 1}, nprocPerNode: '2'}\n",
     "spec.nprocPerNode"),
])
def test_bad_manifests_name_the_field(tmp_path: Path, body: str, expected: str) -> None:
    path = write(tmp_path / "job.yaml", body)
    with pytest.raises(local.ManifestError, match="job.yaml") as error:
        local.load_job(path)
    assert expected in str(error.value)


def test_cli_rejects_bad_input_with_status_2(tmp_path: Path) -> None:
    missing = run_cli(str(tmp_path / "nope.yaml"))
    assert missing.returncode == 2 and "cannot read the manifest" in missing.stderr
    nproc = run_cli(str(LLAMA), "--nproc", "4")
    assert nproc.returncode == 2 and "spec.nprocPerNode" in nproc.stderr
    node = run_cli(str(LLAMA), "--fail-node-at-step", "5", "--fail-node", "2")
    assert node.returncode == 2 and "--fail-node=2: the job has nodes 0..1" in node.stderr
    script = write(tmp_path / "job.yaml", """\
        kind: DreamTrainJob
        apiVersion: dreamtrainer.dev/v1alpha1
        metadata: {name: x}
        spec: {image: i, command: [no/such/train.py], nodes: {count: 1}}
        """)
    absent = run_cli(str(script))
    assert absent.returncode == 2 and "spec.command[0]: 'no/such/train.py'" in absent.stderr


def test_node_commands_are_the_operator_pods_localised() -> None:
    job = local.load_job(LLAMA, ["--max-steps", "7"])
    settings = group.GroupSettings(rendezvous_port=40001, progress_port=40002)
    commands = local.node_commands(job, 3, "/tmp/ckpt", settings, base_env={"PATH": "/bin"})
    assert [c.rank for c in commands] == [0, 1]
    for command in commands:
        argv = command.argv
        assert argv[:3] == [sys.executable, "-m", "torch.distributed.run"]
        assert "--rdzv-endpoint=127.0.0.1:40001" in argv
        assert f"--rdzv-id={job.metadata.uid}-3" in argv
        assert "--nnodes=2:2" in argv and "--nproc-per-node=1" in argv
        assert argv[argv.index("examples/llama/train.py"):][-2:] == ["--max-steps", "7"]
        env = command.env
        assert env["PATH"] == "/bin" and env["OMP_NUM_THREADS"] == "1"
        assert env["DREAM_JOB_NAME"] == "llama" and env["DREAM_RESTART_COUNT"] == "3"
        assert env["DREAM_CHECKPOINT_URI"] == "/tmp/ckpt"
        assert env["DREAM_PROGRESS_PORT"] == "40002"
        assert command.grace_seconds == group.TERMINATION_GRACE_SECONDS


def test_backoff_follows_the_restart_policy() -> None:
    policy = local.api.RestartPolicy(backoff_seconds=2, max_backoff_seconds=5)
    assert [local.backoff_seconds(policy, n) for n in (1, 2, 3, 4)] == [2, 4, 5, 5]


# ------------------------------------------------------------------------------------ real runs
def test_a_killed_node_restarts_the_group_and_resumes_exactly(tmp_path: Path) -> None:
    """The README's demo: kill node 1 at step 25 of 40 (checkpoints every 20); the group
    restarts, resumes from step 20 and ends with the uninterrupted run's loss, bit for bit."""
    args = ["--", "--max-steps", "40"]
    reference = run_cli(str(LLAMA), "--run-dir", str(tmp_path / "reference"), *args)
    assert reference.returncode == 0, reference.stdout[-3000:] + reference.stderr[-3000:]
    faulty = run_cli(str(LLAMA), "--run-dir", str(tmp_path / "faulty"),
                     "--fail-node-at-step", "25", *args)
    out = faulty.stdout
    assert faulty.returncode == 0, out[-3000:] + faulty.stderr[-3000:]
    assert "--fail-node-at-step 25: killing node 1" in out
    assert "restart 1/3" in out and "DREAM_RESTART_COUNT=1" in out
    assert "resumed from" in out and "at step 20" in out
    assert "job llama succeeded" in out
    assert summary(out)["loss"] == summary(reference.stdout)["loss"]
    assert summary(out)["steps"] == 20  # the resumed group trained steps 21..40
    logs = sorted(p.name for p in (tmp_path / "faulty").glob("node-*.log"))
    assert logs == ["node-0.g0.log", "node-0.g1.log", "node-1.g0.log", "node-1.g1.log"]
    assert (tmp_path / "faulty" / "checkpoints").is_dir()
    # The trainer's metrics and loss curve, next to the logs, covering both attempts.
    steps = {row["step"] for row in map(json.loads,
                                        (tmp_path / "faulty" / "metrics.jsonl").open())}
    assert {10, 20, 30, 40} <= steps
    assert (tmp_path / "faulty" / "loss_curve.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_restarts_run_out_and_the_job_fails(tmp_path: Path) -> None:
    write(tmp_path / "crash.py", "import os, sys\nprint('restart', os.environ['DREAM_RESTART_COUNT'])\nsys.exit(3)\n")
    manifest = write(tmp_path / "job.yaml", """\
        kind: DreamTrainJob
        apiVersion: dreamtrainer.dev/v1alpha1
        metadata: {name: crash}
        spec:
          image: unused-locally
          command: [crash.py]
          nodes: {count: 1}
          restartPolicy: {maxRestarts: 1, backoffSeconds: 0}
        """)
    result = run_cli(str(manifest), "--run-dir", str(tmp_path / "run"), cwd=tmp_path)
    assert result.returncode == 1, result.stdout[-3000:]
    assert "[node 0] restart 0" in result.stdout and "[node 0] restart 1" in result.stdout
    assert "job failed: 1 restart(s) used of restartPolicy.maxRestarts=1" in result.stdout
