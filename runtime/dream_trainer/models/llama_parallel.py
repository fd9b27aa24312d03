"""Ready-made parallelism for :class:`~dream_trainer.models.llama.Llama`: its TP plan (data) and
its pipeline stage split."""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.distributed.device_mesh import DeviceMesh
from torch.distributed.tensor import DTensor, Replicate, Shard
from torch.distributed.tensor.parallel import (
    ColwiseParallel,
    ParallelStyle,
    PrepareModuleInput,
    RowwiseParallel,
    SequenceParallel,
)

from dream_trainer.models.llama import Llama
from dream_trainer.parallel.pipeline import Pipeline, build_pipeline, split_layers
from dream_trainer.parallel.tensor_parallel import apply_tp
from dream_trainer.trainer.mixins import ModelSetupMixin


def llama_tp_plan(model: Llama, loss_parallel: bool) -> dict[str, ParallelStyle]:
    """Megatron-style TP with sequence parallelism, as a table of module path -> style.

    Between blocks activations are sharded along the sequence (``Shard(1)``), so norms run on a
    slice of tokens; attention and the MLP all-gather the sequence, split heads / hidden units
    column-wise, and reduce-scatter back to sequence shards. With loss parallelism the output
    projection keeps logits sharded over the vocabulary for ``loss_parallel()``.
    """
    plan: dict[str, ParallelStyle] = {}
    if model.tok_embeddings is not None:
        plan["tok_embeddings"] = RowwiseParallel(input_layouts=Replicate(),
                                                 output_layouts=Shard(1))
    if model.norm is not None:
        plan["norm"] = SequenceParallel()
    if model.output is not None:
        plan["output"] = ColwiseParallel(
            input_layouts=Shard(1),
            output_layouts=Shard(-1) if loss_parallel else Replicate(),
            use_local_output=not loss_parallel)
    for name in model.layers:
        prefix = f"layers.{name}"
        plan |= {
            f"{prefix}.attention_norm": SequenceParallel(),
            f"{prefix}.attention": PrepareModuleInput(
                input_layouts=(Shard(1), None, None),
                desired_input_layouts=(Replicate(), None, None)),
            f"{prefix}.attention.wq": ColwiseParallel(),
            f"{prefix}.attention.wk": ColwiseParallel(),
            f"{prefix}.attention.wv": ColwiseParallel(),
            f"{prefix}.attention.wo": RowwiseParallel(output_layouts=Shard(1)),
            f"{prefix}.ffn_norm": SequenceParallel(),
            f"{prefix}.feed_forward": PrepareModuleInput(
                input_layouts=(Shard(1),), desired_input_layouts=(Replicate(),)),
            f"{prefix}.feed_forward.w1": ColwiseParallel(),
            f"{prefix}.feed_forward.w2": RowwiseParallel(output_layouts=Shard(1)),
            f"{prefix}.feed_forward.w3": ColwiseParallel(),
        }
    return plan


def parallelize_llama_tp(model: Llama, tp_mesh: DeviceMesh, loss_parallel: bool) -> Llama:
    """Apply :func:`llama_tp_plan`. Heads must divide over TP ranks."""
    tp = tp_mesh.size()
    kv_heads = model.args.n_kv_heads or model.args.n_heads
    if model.args.n_heads % tp or kv_heads % tp:
        raise ValueError(f"LlamaArgs.n_heads={model.args.n_heads} and n_kv_heads={kv_heads} must "
                         f"be divisible by tensor_parallel={tp}")
    apply_tp(model, tp_mesh, llama_tp_plan(model, loss_parallel))
    return model


def llama_stage(model: Llama, stage: int, n_stages: int) -> nn.Module:
    """Trim ``model`` (a copy) to pipeline stage ``stage``: its share of the layers, the
    embedding on the first stage, the final norm and output projection on the last. The Llama
    forward skips parts that are None, so a stage maps hidden states to hidden states."""
    keep = split_layers(model.args.n_layers, n_stages)[stage]
    for name in list(model.layers):
        if int(name) not in keep:
            del model.layers[name]
    if stage != 0:
        model.tok_embeddings = None  # type: ignore[assignment]
    if stage != n_stages - 1:
        model.norm = None  # type: ignore[assignment]
        model.output = None  # type: ignore[assignment]
    return model


class LlamaParallelMixin(ModelSetupMixin):
    """Ready-made ``apply_tensor_parallel`` and ``apply_pipeline_parallel`` for a trainer whose
    ``self.model`` is a :class:`Llama`, plus :meth:`lm_step`, the next-token loss step that works
    with and without pipelining and loss parallelism."""

    def apply_tensor_parallel(self, tp_mesh: DeviceMesh) -> None:
        loss_parallel = self.world.device_parameters.loss_parallel
        for part in self.model_parts("model"):
            parallelize_llama_tp(part, tp_mesh, loss_parallel)  # type: ignore[arg-type]

    def apply_pipeline_parallel(self, pp_mesh: DeviceMesh) -> dict[str, Pipeline]:
        params = self.world.device_parameters
        return {"model": build_pipeline(
            self.model, pp_mesh, self.world.device, schedule=params.pipeline_schedule,
            stages_per_rank=params.pipeline_stages_per_rank,
            n_microbatches=self.pipeline_microbatches(), make_stage=llama_stage,
            loss_fn=self.lm_loss)}

    def lm_loss(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Mean next-token cross entropy; on vocabulary-sharded logits under loss parallelism."""
        with self.world.loss_parallel():
            return F.cross_entropy(logits.flatten(0, 1).float(), target.flatten())

    def lm_step(self, tokens: torch.Tensor) -> torch.Tensor:
        """Loss of predicting ``tokens[:, 1:]`` from ``tokens[:, :-1]``; in training also runs
        backward (through the pipeline schedule when pipelined). Returns a plain scalar."""
        inputs, target = tokens[:, :-1].contiguous(), tokens[:, 1:].contiguous()
        if self.pipelines:
            return self.pipeline_step("model", inputs, target)
        with self.context_parallel([inputs, target], [1, 1]):
            loss = self.lm_loss(self.model(inputs), target)
            if self.training:
                self.backward(loss)  # type: ignore[attr-defined]
        return loss.full_tensor() if isinstance(loss, DTensor) else loss

    def context_parallel_buffers(self) -> list[tuple[torch.Tensor, int]]:
        """The rotary tables are indexed by position, so they are sharded with the sequence."""
        return [(part.rope_cos, 0) for part in self.model_parts("model")] + [
            (part.rope_sin, 0) for part in self.model_parts("model")]
