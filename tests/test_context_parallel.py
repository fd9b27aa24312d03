"""Context parallelism. PyTorch cannot train it on CPU (see test_model_parallel for the error);
this check runs where two GPUs exist and is skipped, with that reason, elsewhere."""

from __future__ import annotations

import pytest
import torch

from dream_trainer.configs import DeviceParameters
from test_distributed import assert_same_training, torchrun
from toy import run, toy_config


@pytest.mark.skipif(torch.cuda.device_count() < 2,
                    reason="context parallelism trains only on GPUs (needs 2)")
def test_context_parallel_matches_single_process(tmp_path) -> None:
    torchrun(2, tmp_path, ["cp"])
    got = torch.load(tmp_path / "cp.pt")
    want = run(toy_config(DeviceParameters.SINGLE_DEVICE(param_dtype=torch.float32), n_layers=4,
                          val_every_n_steps=4, val_steps_per_epoch=2))
    assert_same_training(got, want)
