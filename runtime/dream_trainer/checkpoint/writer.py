"""The storage writer and reader DCP uses for checkpoints (any fsspec URL)."""

from __future__ import annotations

from torch.distributed.checkpoint._fsspec_filesystem import FsspecReader, FsspecWriter


def checkpoint_writer(url: str) -> FsspecWriter:
    """A DCP writer for ``url``: one file per rank, no fsync (object stores have none; local
    files are made durable by the commit record, which is written last)."""
    return FsspecWriter(url, single_file_per_rank=True, sync_files=False)


def checkpoint_reader(url: str) -> FsspecReader:
    return FsspecReader(url)
