"""ExportCallback: write consolidated model weights (safetensors) when training ends."""

from __future__ import annotations

import logging

import torch
import torch.distributed as dist
import torch.distributed.checkpoint.state_dict as dcp_sd

from dream_trainer.callbacks.callback import Callback
from dream_trainer.checkpoint.export import write_safetensors
from dream_trainer.trainer.mixins.setup.models import ModelSetupMixin

logger = logging.getLogger(__name__)


class ExportCallback(Callback[ModelSetupMixin]):
    """After ``fit``, gathers model ``model`` unsharded (all pipeline stages, TP and FSDP shards)
    and rank 0 writes it to ``url`` (any fsspec URL) as safetensors, keyed by parameter name."""

    def __init__(self, url: str, model: str = "model") -> None:
        self.url = url
        self.model = model

    def post_fit(self) -> None:
        trainer = self.trainer
        options = dcp_sd.StateDictOptions(full_state_dict=True, cpu_offload=True)
        local: dict[str, torch.Tensor] = {}
        for part in trainer.model_parts(self.model):
            local.update(dcp_sd.get_model_state_dict(part, options=options))
        parts: list[dict[str, torch.Tensor]] = [{} for _ in range(dist.get_world_size())]
        # Pipeline stages live on different ranks; everything else is already whole here.
        if trainer.world.dims.pp > 1:
            dist.all_gather_object(parts, local)
            merged = {name: t for part in parts for name, t in part.items()}
        else:
            merged = local
        if trainer.world.is_global_zero:
            write_safetensors(merged, self.url)
            logger.info("exported %d tensors of %s to %s", len(merged), self.model, self.url)
        dist.barrier()
