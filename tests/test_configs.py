"""Configs are validated when constructed; errors name the field, the value and the fix."""

from __future__ import annotations

import pytest
import torch

from dream_trainer import DreamTrainerConfig
from dream_trainer.configs import (
    CheckpointParameters,
    ConfigError,
    DeviceParameters,
    ParallelDims,
    TrainingParameters,
)


def error(callable_, *args, **kwargs) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        callable_(*args, **kwargs)
    message = str(info.value)
    assert "Fix:" in message, message
    return info.value


@pytest.mark.parametrize(("kwargs", "field"), [
    ({"tensor_parallel": 0}, "DeviceParameters.tensor_parallel"),
    ({"dp_shard": -2}, "DeviceParameters.dp_shard"),
    ({"dp_shard": "auto", "dp_replicate": "auto"}, "DeviceParameters.dp_shard"),
    ({"pipeline_parallel": 1.5}, "DeviceParameters.pipeline_parallel"),
    ({"compile_model": "yes"}, "DeviceParameters.compile_model"),
    ({"param_dtype": "bf16"}, "DeviceParameters.param_dtype"),
    ({"async_tensor_parallel": True}, "DeviceParameters.async_tensor_parallel"),
    ({"loss_parallel": True}, "DeviceParameters.loss_parallel"),
])
def test_device_parameters_reject_bad_values(kwargs, field) -> None:
    err = error(DeviceParameters, **kwargs)
    assert err.field == field
    assert field.split(".")[-1] in str(err)


def test_mesh_product_must_equal_world_size() -> None:
    params = DeviceParameters(dp_shard=2, tensor_parallel=2)
    err = error(params.resolve, 8)
    assert "multiply to 4" in str(err) and "world size is 8" in str(err)
    assert params.resolve(4) == ParallelDims(pp=1, dp_replicate=1, dp_shard=2, cp=1, tp=2)


def test_auto_takes_what_the_world_leaves() -> None:
    assert DeviceParameters.FSDP(tensor_parallel=2).resolve(8).dp_shard == 4
    assert DeviceParameters.HSDP(dp_shard=4).resolve(8).dp_replicate == 2
    assert DeviceParameters.DDP().resolve(3) == ParallelDims(1, 3, 1, 1, 1)
    assert DeviceParameters.SINGLE_DEVICE().resolve(1).world_size == 1
    err = error(DeviceParameters.FSDP(tensor_parallel=3).resolve, 8)
    assert "not divisible" in str(err)


def test_parallel_dims_decide_the_data_parallel_style() -> None:
    assert DeviceParameters.FSDP().resolve(4).fsdp_enabled
    assert DeviceParameters.DDP().resolve(4).ddp_enabled
    hsdp = DeviceParameters.HSDP(dp_shard=2).resolve(4)
    assert hsdp.fsdp_enabled and not hsdp.ddp_enabled and hsdp.dp == 4
    single = DeviceParameters.SINGLE_DEVICE().resolve(1)
    assert not single.fsdp_enabled and not single.ddp_enabled


def test_presets_take_overrides() -> None:
    params = DeviceParameters.FSDP(tensor_parallel=2, compile_model=True,
                                   param_dtype=torch.bfloat16)
    assert (params.tensor_parallel, params.compile_model, params.dp_shard) == (2, True, "auto")


@pytest.mark.parametrize(("kwargs", "field"), [
    ({"n_epochs": None, "max_steps": None}, "TrainingParameters.n_epochs"),
    ({"n_epochs": 0}, "TrainingParameters.n_epochs"),
    ({"gradient_clip_val": -1.0}, "TrainingParameters.gradient_clip_val"),
    ({"gradient_accumulation_steps": 0}, "TrainingParameters.gradient_accumulation_steps"),
    ({"train_batch_size": 0}, "TrainingParameters.train_batch_size"),
    ({"val_frequency": 1.5}, "TrainingParameters.val_frequency"),
    ({"val_frequency": 0.0}, "TrainingParameters.val_frequency"),
    ({"num_sanity_val_steps": -1}, "TrainingParameters.num_sanity_val_steps"),
    ({"max_steps": True}, "TrainingParameters.max_steps"),
])
def test_training_parameters_reject_bad_values(kwargs, field) -> None:
    assert error(TrainingParameters, **kwargs).field == field


def test_batch_size_must_split_over_data_parallel_ranks() -> None:
    params = TrainingParameters(train_batch_size=7)
    err = error(params.check_divisible, 2)
    assert err.field == "TrainingParameters.train_batch_size" and err.value == 7
    assert "6 or 8" in str(err)
    params.check_divisible(7)
    err = error(TrainingParameters(train_batch_size=8, val_batch_size=6).check_divisible, 4)
    assert err.field == "TrainingParameters.val_batch_size"


@pytest.mark.parametrize(("kwargs", "field"), [
    ({"resume_mode": "newest"}, "CheckpointParameters.resume_mode"),
    ({"mode": "lowest"}, "CheckpointParameters.mode"),
    ({"keep_top_k": 0}, "CheckpointParameters.keep_top_k"),
    ({"root_dir": ""}, "CheckpointParameters.root_dir"),
    ({"checkpoint_every_n_steps": 0}, "CheckpointParameters.checkpoint_every_n_steps"),
])
def test_checkpoint_parameters_reject_bad_values(kwargs, field) -> None:
    err = error(CheckpointParameters, **kwargs)
    assert err.field == field
    if field.endswith("resume_mode"):
        assert "'latest'" in str(err) and "'best'" in str(err)


def test_trainer_config_checks_its_parts() -> None:
    err = error(DreamTrainerConfig, device_parameters={"dp_shard": 2})
    assert err.field == "DreamTrainerConfig.device_parameters"
    err = error(DreamTrainerConfig, scheduler_interval="batch")
    assert err.field == "DreamTrainerConfig.scheduler_interval"
    err = error(DreamTrainerConfig, seed=-1)
    assert err.field == "BaseTrainerConfig.seed"
