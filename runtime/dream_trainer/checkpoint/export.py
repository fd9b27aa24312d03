"""Consolidated weights for inference: a committed checkpoint -> one safetensors file."""

from __future__ import annotations

import warnings

import fsspec
import torch
from safetensors.torch import save as safetensors_bytes
from torch.distributed.checkpoint._fsspec_filesystem import FsspecReader
from torch.distributed.checkpoint.state_dict_loader import _load_state_dict_from_keys


def write_safetensors(tensors: dict[str, torch.Tensor], url: str) -> None:
    """Write ``tensors`` (contiguous CPU copies) as safetensors to any fsspec URL."""
    data = {name: t.detach().to("cpu").contiguous() for name, t in tensors.items()}
    with fsspec.open(url, "wb") as f:
        f.write(safetensors_bytes(data))


def export_checkpoint(checkpoint_url: str, output_url: str, model: str = "model") -> list[str]:
    """Read model ``model``'s weights from a (sharded, any world size) checkpoint and write them
    unsharded to ``output_url``. Runs in one process, without a process group."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "loading in a single process" is the intent here
        state = _load_state_dict_from_keys(keys={"models"},
                                           storage_reader=FsspecReader(checkpoint_url))
    models = state.get("models", {})
    if model not in models:
        raise KeyError(f"checkpoint {checkpoint_url} has no model {model!r}; it has "
                       f"{sorted(models)}")
    write_safetensors(models[model], output_url)
    return sorted(models[model])
