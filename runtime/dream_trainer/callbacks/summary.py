"""Summaries printed before training: each model's top-level modules and the trainer's setup.

:func:`summarize_model` counts parameters at their *global* size (a DTensor's ``numel()`` is the
size of the whole tensor, not of this rank's shard; the ``local`` column has the shard) and reads
how each parameter is parallelised from its DTensor placements. :func:`summarize_trainer`
collects world, mesh, device, precision, batch sizes, schedule, callbacks and checkpoint URI.
:class:`ModelSummaryCallback` prints both on global rank 0 in ``pre_fit`` (after setup, so
models are sharded and dataloaders exist)::

    model 'model' (FSDPLlama): 61,600 parameters (61,600 trainable), 30,800 on this rank
    module          type        params  trainable   local  dtype    parallel
    tok_embeddings  Embedding    2,048      2,048   1,024  float32  FSDP(dp_shard_cp=2)
    layers          ModuleDict  57,472     57,472  28,736  float32  FSDP(...) (2 FSDP units)
    norm            RMSNorm         32         32      16  float32  FSDP(dp_shard_cp=2)
    output          Linear       2,048      2,048   1,024  float32  FSDP(dp_shard_cp=2)
"""

from __future__ import annotations

import sys
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TextIO

import torch
from torch import nn
from torch.distributed.tensor import DTensor

from dream_trainer.callbacks.callback import RankZeroCallback
from dream_trainer.configs.errors import require_bool

if TYPE_CHECKING:
    from dream_trainer.trainer.base import BaseTrainer

ROOT_ROW = "(root)"
"""The row name of parameters registered on the model itself rather than on a child module."""


@dataclass
class ModuleRow:
    """One top-level module of a model: its parameter counts, dtypes and parallelism."""

    name: str
    type: str
    params: int
    """Parameters at their global size (a sharded DTensor counts as the whole tensor)."""
    trainable: int
    """Of :attr:`params`, those with ``requires_grad``."""
    local: int
    """Parameter elements held by this rank (the local shards)."""
    dtype: str
    """The parameters' storage dtypes, e.g. ``float32`` (comma-separated when mixed)."""
    parallel: str
    """How the parameters are spread over ranks, e.g. ``FSDP(dp_shard=2)``,
    ``HSDP(dp_replicate=2, dp_shard=2)``, ``FSDP(dp_shard=2) + TP(tp=2)``, ``DDP``, ``none``."""


@dataclass
class ModelSummary:
    """The summary of one model: a row per top-level module plus totals over unique parameters
    (a parameter shared by two modules appears in both rows but is counted once in the totals)."""

    name: str
    type: str
    rows: list[ModuleRow] = field(default_factory=list)
    params: int = 0
    trainable: int = 0
    local: int = 0

    def row(self, name: str) -> ModuleRow:
        """The row of top-level module ``name``."""
        for row in self.rows:
            if row.name == name:
                return row
        raise KeyError(f"model {self.name!r} has no top-level module {name!r}; "
                       f"rows: {[r.name for r in self.rows]}")

    def format(self) -> str:
        """A header line and an aligned table."""
        head = (f"model {self.name!r} ({self.type}): {self.params:,} parameters "
                f"({self.trainable:,} trainable), {self.local:,} on this rank")
        table = format_table(
            ["module", "type", "params", "trainable", "local", "dtype", "parallel"],
            [[r.name, r.type, f"{r.params:,}", f"{r.trainable:,}", f"{r.local:,}", r.dtype,
              r.parallel] for r in self.rows],
            right_aligned={2, 3, 4})
        return f"{head}\n{table}"


def format_table(header: list[str], rows: list[list[str]],
                 right_aligned: Iterable[int] = ()) -> str:
    """Columns padded to their widest cell, separated by two spaces."""
    right = set(right_aligned)
    widths = [max(len(str(cell)) for cell in column) for column in zip(header, *rows)]
    lines = []
    for cells in (header, *rows):
        padded = [str(c).rjust(w) if i in right else str(c).ljust(w)
                  for i, (c, w) in enumerate(zip(cells, widths, strict=True))]
        lines.append("  ".join(padded).rstrip())
    return "\n".join(lines)


def global_numel(tensor: torch.Tensor) -> int:
    """Elements of the whole tensor: a DTensor's global size, a plain tensor's own."""
    return tensor.numel()  # DTensor.numel() is the global size; to_local() has the shard


def local_numel(tensor: torch.Tensor) -> int:
    """Elements held by this rank: a DTensor's local shard, a plain tensor's own."""
    return tensor.to_local().numel() if isinstance(tensor, DTensor) else tensor.numel()


def placement_label(tensor: torch.Tensor, replicated_by_ddp: bool = False) -> str:
    """How ``tensor`` is parallelised, from its DTensor mesh and placements.

    Sharding over a data-parallel mesh dimension is FSDP (HSDP when another data-parallel
    dimension replicates it), sharding over a ``tp`` dimension is TP; a plain tensor is ``DDP``
    when its model is replicated with DDP, else ``none``.
    """
    if not isinstance(tensor, DTensor):
        return "DDP" if replicated_by_ddp else "none"
    mesh = tensor.device_mesh
    names = mesh.mesh_dim_names or tuple(f"dim{i}" for i in range(mesh.ndim))
    sharded, replicated, tp_sharded, tp_replicated, partial = [], [], [], [], []
    for i, (name, placement) in enumerate(zip(names, tensor.placements, strict=True)):
        part = f"{name}={mesh.size(i)}"
        is_tp = name == "tp" or name.endswith("_tp") or name.startswith("tp")
        if placement.is_shard():
            (tp_sharded if is_tp else sharded).append(part)
        elif placement.is_replicate():
            (tp_replicated if is_tp else replicated).append(part)
        else:
            partial.append(part)
    labels = []
    if sharded and replicated:
        labels.append(f"HSDP({', '.join(replicated + sharded)})")
    elif sharded:
        labels.append(f"FSDP({', '.join(sharded)})")
    elif replicated:
        labels.append(f"replicated({', '.join(replicated)})")
    if tp_sharded:
        labels.append(f"TP({', '.join(tp_sharded)})")
    if tp_replicated:
        labels.append(f"TP-replicated({', '.join(tp_replicated)})")
    if partial:
        labels.append(f"partial({', '.join(partial)})")
    return " + ".join(labels)


def _is_ddp(module: nn.Module) -> bool:
    from torch.distributed._composable.replicate import DDP as ReplicatedModule

    return isinstance(module, ReplicatedModule)


def _row(name: str, module_type: str, params: list[nn.Parameter], ddp: bool,
         fsdp_units: int) -> ModuleRow:
    dtypes = sorted({str(p.dtype).removeprefix("torch.") for p in params})
    sizes: dict[str, int] = {}
    for p in params:  # labels of the most elements first
        label = placement_label(p, ddp)
        sizes[label] = sizes.get(label, 0) + global_numel(p)
    labels = sorted(sizes, key=lambda label: -sizes[label])
    parallel = "; ".join(labels) if labels else "-"
    if fsdp_units > 1:
        parallel += f" ({fsdp_units} FSDP units)"
    return ModuleRow(
        name=name, type=module_type,
        params=sum(global_numel(p) for p in params),
        trainable=sum(global_numel(p) for p in params if p.requires_grad),
        local=sum(local_numel(p) for p in params),
        dtype=", ".join(dtypes) if dtypes else "-",
        parallel=parallel)


def summarize_model(model: nn.Module, name: str = "model") -> ModelSummary:
    """A row per top-level module of ``model`` (its direct children, plus a ``(root)`` row for
    parameters registered on ``model`` itself), with counts at global size. Needs no
    communication: a DTensor knows its global shape."""
    from torch.distributed.fsdp import FSDPModule

    ddp = _is_ddp(model)
    summary = ModelSummary(name=name, type=type(model).__name__)
    for child_name, child in model.named_children():
        params = list(child.parameters())
        units = sum(isinstance(m, FSDPModule) for m in child.modules())
        summary.rows.append(_row(child_name, type(child).__name__, params, ddp, units))
    own = list(model.parameters(recurse=False))
    if own:
        summary.rows.append(_row(ROOT_ROW, type(model).__name__, own, ddp, 0))
    unique = list(model.parameters())  # deduplicated: shared (tied) parameters count once
    summary.params = sum(global_numel(p) for p in unique)
    summary.trainable = sum(global_numel(p) for p in unique if p.requires_grad)
    summary.local = sum(local_numel(p) for p in unique)
    return summary


def _precision(trainer: BaseTrainer) -> str:
    world = trainer.world
    compute = str(world.param_dtype).removeprefix("torch.")
    reduce = str(world.device_parameters.reduce_dtype).removeprefix("torch.")
    if world.param_dtype == torch.float32:
        text = "float32"
    elif world.dims.fsdp_enabled:
        text = f"{compute} compute (FSDP mixed precision), {reduce} gradient reduction"
    else:
        text = f"{compute} autocast"
    if getattr(trainer.config, "fp8", False):
        text += f", FP8 linears ({getattr(trainer.config, 'fp8_recipe', 'tensorwise')})"
    return text


def _names(objects: dict[str, Any]) -> str:
    return ", ".join(f"{n} ({type(o).__name__})" for n, o in objects.items()) or "none"


def summarize_trainer(trainer: BaseTrainer) -> dict[str, str]:
    """The trainer's setup as ``{label: value}``, in display order: world size, mesh, device,
    precision, batch sizes, gradient accumulation, steps and epochs, validation, models,
    optimizers, schedulers, callbacks and checkpoint URI."""
    from dream_trainer.callbacks.progress import total_steps
    from dream_trainer.configs.device import MESH_DIMS

    world = trainer.world
    params = trainer.config.training_parameters
    dp = world.dp_size
    accumulation = params.gradient_accumulation_steps
    try:
        per_epoch = trainer._steps_in_epoch(trainer._train_loader())
        total = total_steps(trainer)
    except (TypeError, AttributeError):  # no train dataloader yet
        per_epoch = total = None
    out = {
        "world size": str(world.size),
        "mesh": " ".join(f"{d}={n}" for d, n in zip(MESH_DIMS, world.dims.shape, strict=True)),
        "device": f"{world.device} ({world.backend})",
        "precision": _precision(trainer),
        "batch size": (f"{params.train_batch_size} global, {params.train_batch_size // dp} "
                       f"per data-parallel rank ({dp} rank{'s' if dp > 1 else ''})"),
        "gradient accumulation": (f"{accumulation} micro-batch{'es' if accumulation > 1 else ''}"
                                  f": {params.train_batch_size * accumulation} samples per "
                                  "optimizer step"),
        "steps": (f"{total if total is not None else 'unknown'} "
                  f"(n_epochs={params.n_epochs}, max_steps={params.max_steps}, "
                  f"steps per epoch={per_epoch if per_epoch is not None else 'unknown'})"),
        "gradient clipping": str(params.gradient_clip_val),
        "validation": (f"every {params.val_every_n_steps} steps" if params.val_every_n_steps
                       else f"every {params.val_frequency:g} epoch"),
    }
    named = {"models": "named_models", "optimizers": "named_optimizers",
             "schedulers": "named_schedulers"}
    for label, method in named.items():
        if hasattr(trainer, method):
            out[label] = _names(getattr(trainer, method)())
    out["callbacks"] = ", ".join(trainer.callbacks) or "none"
    uris = [u for u in (getattr(getattr(c, "store", None), "url", None)
                        for c in trainer.callbacks.values()) if u]
    out["checkpoint"] = ", ".join(uris) if uris else "none"
    return out


def format_trainer_summary(summary: dict[str, str], title: str = "trainer") -> str:
    """``title`` then one ``label: value`` line per entry, labels aligned."""
    width = max(map(len, summary), default=0)
    return "\n".join([title, *(f"  {k.ljust(width)}  {v}" for k, v in summary.items())])


class ModelSummaryCallback(RankZeroCallback):
    """Before training (``pre_fit``), global rank 0 prints a table per model (see
    :func:`summarize_model`) and the trainer summary (see :func:`summarize_trainer`).

    Args:
        stream: where to print (default ``sys.stdout``).
        models: print the per-model tables.
        trainer: print the trainer summary.

    The results stay in :attr:`model_summaries`, :attr:`trainer_summary` and :attr:`text`.
    Under pipeline parallelism each rank holds only its stages, so rank 0's counts cover the
    first stages only.
    """

    def __init__(self, stream: TextIO | None = None, models: bool = True,
                 trainer: bool = True) -> None:
        require_bool("ModelSummaryCallback.models", models)
        require_bool("ModelSummaryCallback.trainer", trainer)
        self.stream = stream
        self.show_models = models
        self.show_trainer = trainer
        self.model_summaries: dict[str, ModelSummary] = {}
        self.trainer_summary: dict[str, str] = {}
        self.text = ""

    def pre_fit(self) -> None:
        parts = []
        named_models = getattr(self.trainer, "named_models", dict)()
        self.model_summaries = {name: summarize_model(model, name)
                                for name, model in named_models.items()}
        if self.show_models:
            parts += [s.format() for s in self.model_summaries.values()]
        self.trainer_summary = summarize_trainer(self.trainer)
        if self.show_trainer:
            parts.append(format_trainer_summary(self.trainer_summary))
        self.text = "\n\n".join(parts)
        if self.text:
            print(self.text, file=self.stream or sys.stdout, flush=True)
