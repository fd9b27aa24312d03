"""Model-parallel features that run in one process, and the errors of bad parallel setups."""

from __future__ import annotations

import pytest
import torch

from dream_trainer.configs import ConfigError, DeviceParameters
from dream_trainer.parallel.blocks import blocks
from dream_trainer.parallel.pipeline import check_schedule, split_layers, stage_ids
from dream_trainer.parallel.tensor_parallel import check_sequence_length
from test_distributed import assert_same_training
from toy import ToyTrainer, run, toy_config


@pytest.fixture(scope="module")
def eager() -> dict:
    return run(toy_config(steps=3))


@pytest.mark.parametrize("mode", ["full", "selective"])
def test_activation_checkpointing_equals_no_checkpointing(eager, mode) -> None:
    device = DeviceParameters.SINGLE_DEVICE(checkpoint_activations=True,
                                            activation_checkpointing_mode=mode)
    trainer = ToyTrainer(toy_config(device, steps=3))
    trainer.fit()
    wrapped = [type(b).__name__ for b in blocks(trainer.model)]
    assert wrapped == ["CheckpointWrapper"] * 2
    assert_same_training(run(toy_config(device, steps=3)), eager)


def test_compile_equals_eager(eager) -> None:
    device = DeviceParameters.SINGLE_DEVICE(compile_model=True)
    trainer = ToyTrainer(toy_config(device, steps=3))
    trainer.fit()
    assert all(b._compiled_call_impl is not None for b in blocks(trainer.model))
    got = run(toy_config(device, steps=3))
    torch.testing.assert_close(torch.tensor(got["losses"]), torch.tensor(eager["losses"]),
                               rtol=1e-4, atol=1e-5)
    for name, value in eager["params"].items():
        torch.testing.assert_close(got["params"][name], value, rtol=1e-3, atol=1e-4)


def test_sequence_length_must_divide_over_tp_and_cp() -> None:
    check_sequence_length(16, tp=2, cp=2)
    with pytest.raises(ConfigError, match=r"tensor_parallel x 2\*context_parallel = 8"):
        check_sequence_length(12, tp=2, cp=2)
    with pytest.raises(ConfigError, match="sequence_length=10"):
        check_sequence_length(10, tp=4, cp=1)


def test_layers_must_divide_over_stages() -> None:
    assert split_layers(4, 2) == [range(0, 2), range(2, 4)]
    with pytest.raises(ConfigError, match="n_layers=6.*divisible by 4"):
        split_layers(6, 4)


def test_schedules_and_stage_placement() -> None:
    assert stage_ids("Interleaved1F1B", pp_rank=1, pp_size=2, stages_per_rank=2) == [1, 3]
    assert stage_ids("ZBVZeroBubble", pp_rank=0, pp_size=2, stages_per_rank=2) == [0, 3]
    with pytest.raises(ConfigError, match="pipeline_stages_per_rank=1"):
        check_schedule("Interleaved1F1B", 1)
    with pytest.raises(ConfigError, match="one stage per rank"):
        check_schedule("1F1B", 2)
    with pytest.raises(ConfigError, match="pipeline_schedule='Fast'"):
        check_schedule("Fast", 1)


def test_context_parallel_on_cpu_is_a_clear_error() -> None:
    trainer = ToyTrainer(toy_config())
    trainer.world.dims = DeviceParameters(context_parallel=2).resolve(2)  # as on 2 CPU ranks
    trainer.configure()
    with pytest.raises(ConfigError, match="cannot train context parallelism on CPU"):
        trainer.setup()


def test_ddp_with_tensor_parallel_is_a_clear_error() -> None:
    trainer = ToyTrainer(toy_config())
    trainer.world.dims = DeviceParameters.DDP(tensor_parallel=2).resolve(4)
    trainer.configure()
    with pytest.raises(ConfigError, match="DDP cannot replicate tensor-parallel"):
        trainer.setup()


def test_async_tp_on_cpu_is_a_clear_error() -> None:
    from dream_trainer.parallel.tensor_parallel import enable_async_tp

    trainer = ToyTrainer(toy_config())
    with pytest.raises(ConfigError, match="async TP needs CUDA"):
        enable_async_tp(trainer.world.tp_mesh)


def test_missing_parallel_hooks_are_clear_errors() -> None:
    from dream_trainer.trainer.mixins import ModelSetupMixin

    class NoTP(ToyTrainer):
        apply_tensor_parallel = ModelSetupMixin.apply_tensor_parallel  # the default hook

    trainer = NoTP(toy_config())
    trainer.world.dims = DeviceParameters.FSDP(tensor_parallel=2).resolve(2)
    trainer.configure()
    with pytest.raises(ConfigError, match="does not implement apply_tensor_parallel"):
        trainer.setup()


def test_compiled_autograd_equals_eager(eager) -> None:
    device = DeviceParameters.SINGLE_DEVICE(compile_model=True, enable_compiled_autograd=True)
    got = run(toy_config(device, steps=3))
    torch.testing.assert_close(torch.tensor(got["losses"]), torch.tensor(eager["losses"]),
                               rtol=1e-4, atol=1e-5)
    for name, value in eager["params"].items():
        torch.testing.assert_close(got["params"][name], value, rtol=1e-3, atol=1e-4)
