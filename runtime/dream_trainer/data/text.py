"""Byte-level language-modelling data from a directory of text files.

Bytes are the tokens (vocabulary 256), so no tokenizer has to be downloaded. The default corpus is
the Python standard library's own source, which every Python installation ships.
"""

from __future__ import annotations

import sysconfig
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from torch.utils.data import Dataset

VOCAB_SIZE = 256


def default_corpus() -> list[Path]:
    """The ``*.py`` files at the top of the standard library (a few MB of real text)."""
    files = sorted(Path(sysconfig.get_paths()["stdlib"]).glob("*.py"))
    if not files:
        raise FileNotFoundError("the Python standard library sources were not found; pass "
                                "a directory of text files instead")
    return files


def read_corpus(source: str | Path | None = None, pattern: str = "*") -> bytes:
    """All bytes of ``source`` (a file, or a directory read recursively with ``pattern``, files
    sorted by path so every rank reads the same stream); the default corpus when None."""
    if source is None:
        files = default_corpus()
    else:
        path = Path(source)
        if not path.exists():
            raise FileNotFoundError(f"data path {str(path)!r} does not exist")
        files = [path] if path.is_file() else sorted(p for p in path.rglob(pattern) if p.is_file())
        if not files:
            raise FileNotFoundError(f"no files match {pattern!r} under {str(path)!r}")
    return b"\n".join(f.read_bytes() for f in files)


class ByteTextDataset(Dataset[dict[str, torch.Tensor]]):
    """Non-overlapping windows of ``sequence_length + 1`` bytes (inputs plus the next-token
    target). The last ``val_fraction`` of the corpus is the validation split."""

    def __init__(self, data: bytes, sequence_length: int,
                 split: Literal["train", "val"] = "train", val_fraction: float = 0.05) -> None:
        if sequence_length < 1:
            raise ValueError(f"sequence_length={sequence_length}: must be >= 1")
        if not 0.0 < val_fraction < 1.0:
            raise ValueError(f"val_fraction={val_fraction}: must be in (0, 1)")
        cut = int(len(data) * (1.0 - val_fraction))
        part = data[:cut] if split == "train" else data[cut:]
        self.tokens = torch.from_numpy(np.frombuffer(part, dtype=np.uint8).copy())
        self.window = sequence_length + 1
        if len(self.tokens) < self.window:
            raise ValueError(f"the {split} split has {len(self.tokens)} bytes, fewer than one "
                             f"window of {self.window}; use more data or a shorter sequence")

    def __len__(self) -> int:
        return len(self.tokens) // self.window

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        start = index * self.window
        return {"input_ids": self.tokens[start:start + self.window].long()}
