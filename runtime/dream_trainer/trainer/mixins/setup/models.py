"""ModelSetupMixin: build models on the meta device, parallelise them, materialise, initialise."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn as nn
from torch.distributed.device_mesh import DeviceMesh
from torch.distributed.fsdp import CPUOffloadPolicy, MixedPrecisionPolicy, OffloadPolicy
from torch.distributed.fsdp import register_fsdp_forward_method

from dream_trainer.configs.errors import ConfigError, require_bool
from dream_trainer.parallel import apply_ddp, apply_fsdp
from dream_trainer.trainer.abstract import AbstractTrainer

logger = logging.getLogger(__name__)


@dataclass(kw_only=True)
class ModelSetupConfigMixin:
    """Model setup options."""

    init_on_meta_device: bool = True
    """Build models in ``configure_models`` on the meta device (no memory until after
    parallelism). Set False for a model that must load real tensors while being built."""

    def __post_init__(self) -> None:
        require_bool(f"{type(self).__name__}.init_on_meta_device", self.init_on_meta_device)
        if hasattr(super(), "__post_init__"):
            super().__post_init__()  # type: ignore[misc]


class ModelSetupMixin(AbstractTrainer):
    """Models are tracked by assigning them to attributes in :meth:`configure_models`.

    Setup order (each step documented at its hook): ``configure_models`` (meta device) →
    ``post_configure_models`` → pipeline split → tensor parallel → activation checkpointing →
    compile → FSDP or DDP → materialise on the device → ``init_weights``.
    Sharding must come last because FSDP shards whatever parameters exist when it is applied:
    TP first turns weights into TP-sharded DTensors, which FSDP then shards further; compiling
    before FSDP lets each block compile once without FSDP's hooks inside the graph.
    """

    config: Any

    # ------------------------------------------------------------ hooks for users
    def configure_models(self) -> None:
        """Create models and assign them to attributes (``self.model = ...``)."""
        raise TypeError(f"{type(self).__name__} must implement configure_models()")

    def post_configure_models(self) -> None:
        """Runs after ``configure_models``, before any parallelism (e.g. to tie weights)."""

    def init_weights(self) -> None:
        """Initialise parameters and buffers in place. Runs after parallelism, on the real
        device, under ``torch.no_grad()``; parameters may be DTensors (use in-place init).

        Random init of DTensor shards is sharding-invariant only where PyTorch has a DTensor RNG
        (CUDA); on CPU meshes each shard draws on its own (torch warns). For init that is
        identical under every sharding, load full weights with
        ``set_model_state_dict(model, full, options=StateDictOptions(full_state_dict=True))``."""
        raise TypeError(f"{type(self).__name__} must implement init_weights(): models are built "
                        "on the meta device and hold no values until it runs")

    def apply_pipeline_parallel(self, pp_mesh: DeviceMesh) -> dict[str, Any]:
        """Split models into pipeline stages; return ``{model_name: (schedule, stages,
        has_first_stage, has_last_stage)}``. Required when ``pipeline_parallel > 1``."""
        raise ConfigError("DeviceParameters.pipeline_parallel", self.world.dims.pp,
                          f"{type(self).__name__} does not implement apply_pipeline_parallel",
                          "override apply_pipeline_parallel(pp_mesh) or set pipeline_parallel=1")

    def apply_tensor_parallel(self, tp_mesh: DeviceMesh) -> None:
        """Shard layers over ``tp_mesh`` (``parallelize_module``). Required when TP > 1."""
        raise ConfigError("DeviceParameters.tensor_parallel", self.world.dims.tp,
                          f"{type(self).__name__} does not implement apply_tensor_parallel",
                          "override apply_tensor_parallel(tp_mesh) or set tensor_parallel=1")

    def apply_activation_checkpointing(self) -> None:
        """Wrap blocks for activation checkpointing. Called when ``checkpoint_activations``."""
        raise ConfigError("DeviceParameters.checkpoint_activations", True,
                          f"{type(self).__name__} does not implement "
                          "apply_activation_checkpointing",
                          "override apply_activation_checkpointing() or set it to False")

    def apply_compile(self) -> None:
        """Compile models (ideally per block). Called when ``compile_model``."""
        for model in self.named_models().values():
            model.compile()

    def apply_fully_shard(self, fsdp_config: dict[str, Any]) -> None:
        """Apply FSDP2. ``fsdp_config`` holds the ``fully_shard`` keyword arguments (mesh,
        mp_policy, offload_policy, reshard_after_forward). Default: every model is sharded
        per repeated block and then at the root (:func:`dream_trainer.parallel.apply_fsdp`)."""
        for model in self.named_models().values():
            if any(p.requires_grad for p in model.parameters()):
                apply_fsdp(model, **fsdp_config)

    def apply_replicate(self, dp_mesh: DeviceMesh) -> None:
        """Apply DDP (``replicate``) over ``dp_mesh``. Default: every trainable model."""
        for model in self.named_models().values():
            if any(p.requires_grad for p in model.parameters()):
                apply_ddp(model, dp_mesh)

    def mark_forward_methods(self) -> list[str]:
        """Methods other than ``forward`` that run a sharded model, as ``"attr.method"`` (e.g.
        ``"model.generate"``); FSDP gathers parameters around them too."""
        return []

    def context_parallel_buffers(self) -> list[torch.Tensor]:
        """Buffers sharded along the sequence dimension under context parallelism."""
        return []

    # ------------------------------------------------------------ tracking
    def named_models(self) -> dict[str, nn.Module]:
        """Models assigned as attributes of the trainer, by attribute name."""
        return self._named_attributes(nn.Module)

    def get_module(self, path: str) -> nn.Module:
        """A tracked model or one of its submodules by dotted path, e.g. ``"model.layers.0"``."""
        name, _, rest = path.partition(".")
        models = self.named_models()
        if name not in models:
            raise KeyError(f"no model named {name!r}; models: {sorted(models)}")
        return models[name].get_submodule(rest) if rest else models[name]

    # ------------------------------------------------------------ lifecycle
    def _configure_models(self) -> None:
        if getattr(self.config, "init_on_meta_device", True):
            with torch.device("meta"):
                self.configure_models()
        else:
            self.configure_models()
        if not self.named_models():
            raise TypeError(f"{type(self).__name__}.configure_models() assigned no nn.Module "
                            "attribute; write e.g. self.model = MyModel(...)")
        self.post_configure_models()

    def _setup_models(self) -> None:
        dims, params = self.world.dims, self.world.device_parameters
        if dims.pp > 1:
            self.pipeline_schedules = self.apply_pipeline_parallel(self.world.pp_mesh)
        if dims.tp > 1:
            self.apply_tensor_parallel(self.world.tp_mesh)
        if params.checkpoint_activations:
            self.apply_activation_checkpointing()
        if params.compile_model:
            self.apply_compile()
        if dims.fsdp_enabled:
            self.apply_fully_shard(self._fsdp_config())
            for method in self.mark_forward_methods():
                name, _, attr = method.partition(".")
                register_fsdp_forward_method(self.get_module(name), attr)
        elif dims.ddp_enabled:
            self.apply_replicate(self.world.dp_mesh)
        self._materialize()

    def _fsdp_config(self) -> dict[str, Any]:
        params = self.world.device_parameters
        return {
            "mesh": self.world.fsdp_mesh,
            "mp_policy": MixedPrecisionPolicy(param_dtype=self.world.param_dtype,
                                              reduce_dtype=params.reduce_dtype),
            "offload_policy": CPUOffloadPolicy() if self.world.cpu_offload else OffloadPolicy(),
            "reshard_after_forward": params.reshard_after_forward,
        }

    def _materialize(self) -> None:
        """Allocate meta tensors on the device (uninitialised), then run ``init_weights``."""
        offload = self.world.cpu_offload and self.world.dims.fsdp_enabled
        device = torch.device("cpu") if offload else self.world.device
        for model in self.named_models().values():
            if any(t.is_meta for t in (*model.parameters(), *model.buffers())):
                model.to_empty(device=device)
        with torch.no_grad():
            self.init_weights()
        for name, model in self.named_models().items():
            for tensor_name, t in (*model.named_parameters(), *model.named_buffers()):
                if t.is_meta:
                    raise RuntimeError(f"{name}.{tensor_name} is still on the meta device after "
                                       "init_weights(); create it on the real device there")
