"""FP8 training (torchao float8): module selection on any machine, training where the GPU can."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
import torch

from dream_trainer.configs import ConfigError, DeviceParameters
from dream_trainer.models import Llama
from dream_trainer.trainer.mixins import ExcludeModuleByName, ExcludeSubmodules, QuantizeMixin
from dream_trainer.trainer.mixins.quantize import (
    QuantizeConfigMixin,
    convert_to_fp8,
    fp8_supported,
)
from toy import ToyConfig, ToyTrainer, llama_args, toy_config

LINEARS = ("attention.wq", "attention.wk", "attention.wv", "attention.wo",
           "feed_forward.w1", "feed_forward.w2", "feed_forward.w3")


def test_filters_choose_which_linears_become_fp8() -> None:
    with torch.device("meta"):
        model = Llama(llama_args(n_layers=3))
    converted = convert_to_fp8(model, [ExcludeModuleByName(["output"]),
                                       ExcludeSubmodules(["layers.0"])])
    assert sorted(converted) == sorted(f"layers.{i}.{n}" for i in (1, 2) for n in LINEARS)
    assert type(model.layers["1"].attention.wq).__name__ == "Float8Linear"
    assert type(model.layers["0"].attention.wq).__name__ == "Linear"
    assert type(model.output).__name__ == "Linear"


def test_linears_fp8_cannot_multiply_are_skipped() -> None:
    model = torch.nn.Sequential(torch.nn.Linear(32, 48), torch.nn.Linear(48, 10))
    assert convert_to_fp8(model) == ["0"]  # 10 outputs: not a multiple of 16


@dataclass(kw_only=True)
class FP8Config(ToyConfig, QuantizeConfigMixin):
    pass


class FP8Trainer(QuantizeMixin, ToyTrainer):
    pass


def fp8_config(**kwargs) -> FP8Config:
    base = toy_config(**kwargs)
    return FP8Config(fp8=True, device_parameters=base.device_parameters,
                     training_parameters=base.training_parameters, callbacks=base.callbacks)


FP8_GPU = torch.cuda.is_available() and fp8_supported(torch.device("cuda", 0))


@pytest.mark.skipif(FP8_GPU, reason="this machine can train in FP8 (tested below instead)")
def test_fp8_without_a_capable_gpu_is_a_clear_error() -> None:
    with pytest.raises(ConfigError, match="FP8Config.fp8=True: FP8 matmuls need a CUDA GPU"):
        FP8Trainer(fp8_config()).fit()


@pytest.mark.skipif(not FP8_GPU,
                    reason="FP8 training needs a CUDA GPU with compute capability >= 8.9")
def test_fp8_training_learns_on_gpu() -> None:
    trainer = FP8Trainer(fp8_config(steps=20, device=DeviceParameters.SINGLE_DEVICE()))
    trainer.fit()
    losses = trainer.config.callbacks["LossRecorder"].losses
    assert type(trainer.model.layers["0"].attention.wq).__name__ == "Float8Linear"
    assert all(torch.isfinite(torch.tensor(losses))) and losses[-1] < losses[0]
