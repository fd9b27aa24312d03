"""ModelSetupMixin: build models on the meta device, parallelise them, materialise, initialise."""

from __future__ import annotations

import contextlib
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
from dream_trainer.parallel.activation_checkpoint import apply_ac
from dream_trainer.parallel.compile import apply_compile
from dream_trainer.parallel.context_parallel import context_parallel
from dream_trainer.parallel.pipeline import Pipeline, broadcast_from_last_stage
from dream_trainer.parallel.tensor_parallel import enable_async_tp
from dream_trainer.trainer.abstract import AbstractTrainer

logger = logging.getLogger(__name__)

_NO_EVAL_SCHEDULES = {"ScheduleZBVZeroBubble", "ScheduleDualPipeV"}


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
    ``post_configure_models`` → ``convert_models`` (e.g. FP8) → pipeline split → tensor
    parallel → activation checkpointing → compile → FSDP or DDP → materialise on the device →
    ``init_weights``. Context parallelism is not a setup step: it shards each batch at run time
    (:meth:`context_parallel`).
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

    def convert_models(self) -> None:
        """Swap modules before any parallelism (e.g. FP8 linears, see ``QuantizeMixin``).
        Mixins that override it call ``super().convert_models()``."""

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
        """Split models into pipeline stages. Return ``{model_name: Pipeline}`` (see
        :func:`dream_trainer.parallel.pipeline.build_pipeline`) or, as in the seed documents,
        ``{model_name: (schedule, stages, has_first_stage, has_last_stage)}``. Afterwards the
        model attribute holds this rank's stage modules (``model_parts``). Required when
        ``pipeline_parallel > 1``."""
        raise ConfigError("DeviceParameters.pipeline_parallel", self.world.dims.pp,
                          f"{type(self).__name__} does not implement apply_pipeline_parallel",
                          "override apply_pipeline_parallel(pp_mesh) or set pipeline_parallel=1")

    def apply_tensor_parallel(self, tp_mesh: DeviceMesh) -> None:
        """Shard layers over ``tp_mesh`` (``parallelize_module``). Required when TP > 1; iterate
        ``self.model_parts(name)`` so that pipelined models are covered too."""
        raise ConfigError("DeviceParameters.tensor_parallel", self.world.dims.tp,
                          f"{type(self).__name__} does not implement apply_tensor_parallel",
                          "override apply_tensor_parallel(tp_mesh) or set tensor_parallel=1")

    def apply_activation_checkpointing(self) -> None:
        """Checkpoint activations. Default: every repeated block (children of a ModuleList or
        ModuleDict) of every trainable model, in ``activation_checkpointing_mode``."""
        mode = self.world.device_parameters.activation_checkpointing_mode
        for part in self._trainable_parts():
            apply_ac(part, mode)

    def apply_compile(self) -> None:
        """Compile models. Default: each repeated block of every trainable model."""
        for part in self._trainable_parts():
            apply_compile(part)

    def apply_fully_shard(self, fsdp_config: dict[str, Any]) -> None:
        """Apply FSDP2. ``fsdp_config`` holds the ``fully_shard`` keyword arguments (mesh,
        mp_policy, offload_policy, reshard_after_forward). Default: every trainable model part is
        sharded per repeated block and then at its root (:func:`dream_trainer.parallel.apply_fsdp`)."""
        for part in self._trainable_parts():
            apply_fsdp(part, **fsdp_config)

    def apply_replicate(self, dp_mesh: DeviceMesh) -> None:
        """Apply DDP (``replicate``) over ``dp_mesh``. Default: every trainable model part."""
        for part in self._trainable_parts():
            apply_ddp(part, dp_mesh)

    def mark_forward_methods(self) -> list[str]:
        """Methods other than ``forward`` that run a sharded model, as ``"attr.method"`` (e.g.
        ``"model.generate"``); FSDP gathers parameters around them too."""
        return []

    def context_parallel_buffers(self) -> list[tuple[torch.Tensor, int]]:
        """Model buffers indexed by sequence position (e.g. rotary tables) as ``(buffer,
        seq_dim)``: under context parallelism they are sharded like the inputs."""
        return []

    def context_parallel(self, tensors: list[torch.Tensor],
                         seq_dims: list[int]) -> contextlib.AbstractContextManager:
        """Run forward and backward of a batch inside this when ``context_parallel > 1``: it
        shards ``tensors`` (the batch) and :meth:`context_parallel_buffers` along the sequence.
        A no-op without context parallelism."""
        if self.world.dims.cp == 1:
            return contextlib.nullcontext()
        buffers = self.context_parallel_buffers()
        return context_parallel(
            self.world.cp_mesh, [*tensors, *(b for b, _ in buffers)],
            [*seq_dims, *(d for _, d in buffers)], no_restore=tensors,
            rotate_method=self.world.device_parameters.context_parallel_rotate_method)

    # ------------------------------------------------------------ tracking
    def named_models(self) -> dict[str, nn.Module]:
        """Models assigned as attributes of the trainer, by attribute name."""
        return self._named_attributes(nn.Module)

    def model_parts(self, name: str = "model") -> list[nn.Module]:
        """The modules of model ``name`` on this rank: its pipeline stages, or the model itself."""
        pipeline = getattr(self, "pipelines", {}).get(name)
        if pipeline is not None:
            return [stage.submod for stage in pipeline.stages]
        return [self.get_module(name)]

    def _trainable_parts(self) -> list[nn.Module]:
        return [part for name in self.named_models() for part in self.model_parts(name)
                if any(p.requires_grad for p in part.parameters())]

    def get_module(self, path: str) -> nn.Module:
        """A tracked model or one of its submodules by dotted path, e.g. ``"model.layers.0"``."""
        name, _, rest = path.partition(".")
        models = self.named_models()
        if name not in models:
            raise KeyError(f"no model named {name!r}; models: {sorted(models)}")
        return models[name].get_submodule(rest) if rest else models[name]

    def pipeline_step(self, name: str, inputs: torch.Tensor | None,
                      target: torch.Tensor | None) -> torch.Tensor:
        """Run one batch through model ``name``'s pipeline: forward and backward of every
        micro-batch in training, forward only in validation. Inputs are used on the first stage,
        targets on the last. Returns the batch's mean loss on every rank of the pipeline.

        Use it instead of ``self.backward(loss)``: the schedule runs backward itself, with the
        loss scaled for gradient accumulation.
        """
        pipeline = self.pipelines[name]
        accumulation = self.config.training_parameters.gradient_accumulation_steps
        pipeline.loss_scale = 1.0 / accumulation if self.training else 1.0
        losses: list[torch.Tensor] = []
        args = (inputs,) if pipeline.has_first_stage else ()
        kwargs: dict[str, Any] = {"target": target, "losses": losses} if (
            pipeline.has_last_stage) else {}
        if not self.training and type(pipeline.schedule).__name__ in _NO_EVAL_SCHEDULES:
            raise ConfigError("DeviceParameters.pipeline_schedule",
                              type(pipeline.schedule).__name__.removeprefix("Schedule"),
                              "PyTorch's eval() for V-shaped schedules replays their backward "
                              "actions, so validation cannot run under it",
                              "validate with 'InterleavedZeroBubble' or 'Interleaved1F1B', or "
                              "train without a validation dataloader")
        run = pipeline.schedule.step if self.training else pipeline.schedule.eval
        with self.world.loss_parallel():  # the schedule runs the loss's backward, too
            run(*args, **kwargs)
        if pipeline.has_last_stage:
            loss = torch.stack([x.detach() for x in losses]).mean() / pipeline.loss_scale
        else:
            loss = torch.zeros((), device=self.world.device)
        return broadcast_from_last_stage(loss, self.world.pp_mesh, pipeline.has_last_stage)

    def pipeline_microbatches(self) -> int:
        """Micro-batches per pipeline step; the per-rank batch must split into them evenly."""
        params = self.world.device_parameters
        count = params.pipeline_microbatches or self.world.dims.pp * params.pipeline_stages_per_rank
        local = self.config.training_parameters.train_batch_size // self.world.dp_size
        if local % count:
            raise ConfigError("DeviceParameters.pipeline_microbatches", count,
                              f"the per-rank batch of {local} does not split into {count} "
                              "micro-batches", "choose a divisor of the per-rank batch size")
        return count

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
        self.convert_models()

    def _setup_models(self) -> None:
        dims, params = self.world.dims, self.world.device_parameters
        if dims.cp > 1 and self.world.device.type == "cpu":
            raise ConfigError("DeviceParameters.context_parallel", dims.cp,
                              "PyTorch cannot train context parallelism on CPU (no CPU sharding "
                              "strategy for SDPA; FlexAttention has no CPU backward)",
                              "run on GPUs or set context_parallel=1")
        if dims.tp > 1 and dims.ddp_enabled:
            raise ConfigError("DeviceParameters.dp_replicate", dims.dp_replicate,
                              "DDP cannot replicate tensor-parallel DTensor parameters",
                              "shard instead: dp_shard > 1 (FSDP) or HSDP with dp_shard > 1")
        self.pipelines: dict[str, Pipeline] = {}
        if dims.pp > 1:
            self._setup_pipelines(self.apply_pipeline_parallel(self.world.pp_mesh))
        if dims.tp > 1:
            self.apply_tensor_parallel(self.world.tp_mesh)
            if params.async_tensor_parallel:
                enable_async_tp(self.world.tp_mesh)
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

    def _setup_pipelines(self, pipelines: dict[str, Any]) -> None:
        models = self.named_models()
        for name, value in pipelines.items():
            if name not in models:
                raise KeyError(f"apply_pipeline_parallel returned {name!r}, which is not a "
                               f"model attribute; models: {sorted(models)}")
            pipeline = value if isinstance(value, Pipeline) else Pipeline(*value)
            self.pipelines[name] = pipeline
            # The attribute now holds exactly this rank's stages, so optimizers, state dicts and
            # the later parallelism hooks see the local parameters only.
            setattr(self, name, nn.ModuleList([stage.submod for stage in pipeline.stages]))

    def _fsdp_config(self) -> dict[str, Any]:
        params = self.world.device_parameters
        return {
            "mesh": self.world.fsdp_mesh,
            "mp_policy": MixedPrecisionPolicy(param_dtype=self.world.param_dtype,
                                              reduce_dtype=params.reduce_dtype),
            "offload_policy": CPUOffloadPolicy() if self.world.cpu_offload else OffloadPolicy(),
            # Under PP each micro-batch runs forward then later backward: resharding in between
            # would all-gather every stage once more per micro-batch.
            "reshard_after_forward": params.reshard_after_forward and self.world.dims.pp == 1,
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
