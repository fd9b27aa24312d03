"""The storage writer and reader DCP uses for checkpoints (any fsspec URL)."""

from __future__ import annotations

import fsspec
from torch.distributed.checkpoint._fsspec_filesystem import FsspecReader, FsspecWriter


def is_local(url: str) -> bool:
    protocol = fsspec.core.url_to_fs(url)[0].protocol
    return bool({"file", "local"} & set(protocol if isinstance(protocol, tuple) else (protocol,)))


def checkpoint_writer(url: str) -> FsspecWriter:
    """A DCP writer for ``url``, one file per rank. Local files are fsynced before the commit
    record is written, so a machine crash can lose a checkpoint but never leave a committed one
    with missing data; object stores have no fsync (an upload is durable once it returns)."""
    return FsspecWriter(url, single_file_per_rank=True, sync_files=is_local(url))


def checkpoint_reader(url: str) -> FsspecReader:
    return FsspecReader(url)
