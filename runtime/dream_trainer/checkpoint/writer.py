"""The storage writer and reader DCP uses for checkpoints (any fsspec URL)."""

from __future__ import annotations

import contextlib
import io
import os
from collections.abc import Generator

import fsspec
from torch.distributed.checkpoint._fsspec_filesystem import FileSystem, FsspecReader, FsspecWriter


def is_local(url: str) -> bool:
    protocol = fsspec.core.url_to_fs(url)[0].protocol
    return bool({"file", "local"} & set(protocol if isinstance(protocol, tuple) else (protocol,)))


class _UploadOnClose(io.BytesIO):
    """An in-memory file that is uploaded as one object when closed (DCP closes it itself)."""

    def __init__(self, fs: fsspec.AbstractFileSystem, path: str) -> None:
        super().__init__()
        self._fs, self._path = fs, path

    def close(self) -> None:
        if not self.closed:
            self._fs.pipe_file(self._path, self.getvalue())
        super().close()

    def discard(self) -> None:
        """Drop the data without uploading (the write failed part-way)."""
        super().close()


class _WholeObjectFileSystem(FileSystem):
    """DCP's fsspec filesystem, moving each object in one request.

    DCP reads a shard tensor by tensor (seek + read), which on an object store is one ranged GET
    per tensor, and writes through a buffered multipart stream. Fetching the whole object with one
    GET and uploading it with one ``pipe_file`` (which s3fs splits into concurrent parts) brings
    both to raw-PUT/GET speed, at the cost of holding one rank's shard file in memory.
    """

    @contextlib.contextmanager
    def create_stream(self, path: str | os.PathLike,
                      mode: str) -> Generator[io.IOBase, None, None]:
        assert self.fs is not None
        if mode == "rb":
            yield io.BytesIO(self.fs.cat_file(str(path)))
        elif mode == "wb":
            upload = _UploadOnClose(self.fs, str(path))
            try:
                yield upload
            except BaseException:
                upload.discard()  # never publish a partial object
                raise
            upload.close()
        else:
            with super().create_stream(path, mode) as stream:
                yield stream


def checkpoint_writer(url: str) -> FsspecWriter:
    """A DCP writer for ``url``, one file per rank. Local files are streamed and fsynced before
    the commit record is written, so a machine crash can lose a checkpoint but never leave a
    committed one with missing data; object stores get whole-object uploads (durable once the
    upload returns; they have no fsync)."""
    local = is_local(url)
    writer = FsspecWriter(url, single_file_per_rank=True, sync_files=local)
    if not local:
        writer.fs = _WholeObjectFileSystem()
        writer.path = writer.fs.init_path(url)
    return writer


def checkpoint_reader(url: str) -> FsspecReader:
    reader = FsspecReader(url)
    if not is_local(url):
        reader.fs = _WholeObjectFileSystem()
        reader.path = reader.fs.init_path(url)
    return reader
