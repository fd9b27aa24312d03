"""Typed, validated configuration objects (configs as code)."""

from dream_trainer.configs.checkpoint import CheckpointParameters
from dream_trainer.configs.device import MESH_DIMS, DeviceParameters, ParallelDims
from dream_trainer.configs.errors import ConfigError
from dream_trainer.configs.training import TrainingParameters
from dream_trainer.configs.wandb_parameters import WandBParameters

__all__ = [
    "MESH_DIMS",
    "CheckpointParameters",
    "ConfigError",
    "DeviceParameters",
    "ParallelDims",
    "TrainingParameters",
    "WandBParameters",
]
