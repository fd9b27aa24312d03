"""The README's main job: ``dream-trainer run`` on 2 local processes, and the import boundary."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# The installed console script, next to this interpreter (a pyenv shim may not exist yet).
CLI = str(Path(sys.executable).parent / "dream-trainer")


def test_run_trains_the_example_on_two_processes(tmp_path: Path) -> None:
    done = subprocess.run(
        [CLI, "run", "examples/llama/train.py", "--nproc", "2", "--",
         "--max-steps", "12", "--log-every", "4", "--val-every", "12", "--dim", "64",
         "--layers", "2", "--seq-len", "64"],
        cwd=ROOT, capture_output=True, text=True, timeout=600,
        env={**os.environ, "DREAM_LOG_DIR": str(tmp_path)})  # not runs/ in the checkout
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert (tmp_path / "loss_curve.png").is_file()
    out = done.stdout
    assert "dp_shard=2" in out  # FSDP over both processes
    losses = [float(x) for x in re.findall(r"step \d+/12 \| epoch \d+ \| loss ([\d.]+)", out)]
    assert len(losses) == 3 and losses[-1] < losses[0], out
    assert re.search(r"validation @ step 12 \| val_loss [\d.]+", out), out
    assert re.search(r"done: 12 steps in .* \| final loss [\d.]+ \| [\d,]+ tok/s", out), out


def test_run_rejects_a_missing_script() -> None:
    done = subprocess.run([CLI, "run", "nope.py"], cwd=ROOT, capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 2 and "'nope.py' not found" in done.stderr


def test_contract_and_operator_do_not_import_torch() -> None:
    code = ("import sys, dream_trainer.contract, dream_operator; "
            "assert 'torch' not in sys.modules, 'torch was imported'; "
            "print(dream_trainer.contract.CHECKPOINT_URI)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "DREAM_CHECKPOINT_URI"


def test_example_runs_as_a_plain_process(tmp_path: Path) -> None:
    """``python train.py``: distributed_launch runs it as a world of one (no torchrun)."""
    done = subprocess.run(
        [sys.executable, "examples/llama/train.py", "--max-steps", "4", "--log-every", "2",
         "--val-every", "4", "--dim", "32", "--layers", "1", "--seq-len", "32"],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
        env={**{k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE")},
             "DREAM_LOG_DIR": str(tmp_path)})
    assert done.returncode == 0, done.stderr[-3000:]
    assert "world size 1" in done.stdout
    assert re.search(r"done: 4 steps in .* \| final loss [\d.]+", done.stdout), done.stdout
