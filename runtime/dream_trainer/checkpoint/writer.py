"""The storage writer and reader DCP uses for checkpoints (any fsspec URL)."""

from __future__ import annotations

import contextlib
import io
import os
from collections.abc import Generator
from concurrent.futures import Future, ThreadPoolExecutor

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


class _MultipartUpload(io.RawIOBase):
    """A write-only stream that uploads to S3 while it is being written: every ``part_bytes``
    written become one part, sent by a background thread, so serialising a shard overlaps with
    uploading it. ``close`` completes the upload (the object appears only then); ``discard``
    aborts it, so a failed write never publishes a partial object."""

    def __init__(self, fs: fsspec.AbstractFileSystem, path: str,
                 part_bytes: int = 32 * 2**20, workers: int = 4) -> None:
        super().__init__()
        self._fs, self._part_bytes = fs, part_bytes
        self._bucket, self._key, _ = fs.split_path(path)
        self._upload_id = fs.call_s3("create_multipart_upload", Bucket=self._bucket,
                                     Key=self._key)["UploadId"]
        self._workers = workers
        self._pool = ThreadPoolExecutor(max_workers=workers)
        self._parts: list[Future] = []
        self._buffer = bytearray()
        self._written = 0

    def writable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._written

    def write(self, data: bytes) -> int:  # type: ignore[override]
        self._buffer += data
        self._written += len(data)
        while len(self._buffer) >= self._part_bytes:
            self._send(bytes(self._buffer[:self._part_bytes]))
            del self._buffer[:self._part_bytes]
        return len(data)

    def _send(self, body: bytes) -> None:
        # Back-pressure: at most two parts per worker in flight, so memory stays bounded by
        # about 2 x workers x part_bytes however fast serialisation produces bytes.
        pending = [part for part in self._parts if not part.done()]
        if len(pending) >= 2 * self._workers:
            pending[0].result()
        number = len(self._parts) + 1
        self._parts.append(self._pool.submit(
            lambda: {"PartNumber": number, "ETag": self._fs.call_s3(
                "upload_part", Bucket=self._bucket, Key=self._key, UploadId=self._upload_id,
                PartNumber=number, Body=body)["ETag"]}))

    def close(self) -> None:
        if self.closed:
            return
        if self._buffer or not self._parts:
            self._send(bytes(self._buffer))
            self._buffer.clear()
        parts = [part.result() for part in self._parts]
        self._pool.shutdown()
        self._fs.call_s3("complete_multipart_upload", Bucket=self._bucket, Key=self._key,
                         UploadId=self._upload_id, MultipartUpload={"Parts": parts})
        super().close()

    def discard(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)
        self._fs.call_s3("abort_multipart_upload", Bucket=self._bucket, Key=self._key,
                         UploadId=self._upload_id)
        super().close()


class _WholeObjectFileSystem(FileSystem):
    """DCP's fsspec filesystem, moving whole objects with concurrent requests.

    DCP reads a shard tensor by tensor (seek + read), which on an object store is one ranged GET
    per tensor, and writes through a buffered multipart stream that uploads part by part in the
    writing thread. Instead, each object is fetched as ``RANGE_BYTES`` ranges requested
    concurrently (one GET stream is far from what the store can serve), and on S3 uploaded as a
    multipart upload fed while DCP serialises (:class:`_MultipartUpload`); other stores get one
    ``pipe_file`` of the buffered object. Reads hold one rank's shard file in memory.
    """

    RANGE_BYTES = 32 * 2**20

    def _fetch(self, path: str) -> bytes:
        assert self.fs is not None
        size = self.fs.size(path)
        starts = list(range(0, size, self.RANGE_BYTES)) or [0]
        ends = [min(start + self.RANGE_BYTES, size) for start in starts]
        if len(starts) == 1:
            return self.fs.cat_file(path)
        return b"".join(self.fs.cat_ranges([path] * len(starts), starts, ends))

    @contextlib.contextmanager
    def create_stream(self, path: str | os.PathLike,
                      mode: str) -> Generator[io.IOBase, None, None]:
        assert self.fs is not None
        if mode == "rb":
            yield io.BytesIO(self._fetch(str(path)))
        elif mode == "wb":
            is_s3 = "s3" in (self.fs.protocol if isinstance(self.fs.protocol, tuple)
                             else (self.fs.protocol,))
            upload: _UploadOnClose | _MultipartUpload = (
                _MultipartUpload(self.fs, str(path)) if is_s3
                else _UploadOnClose(self.fs, str(path)))
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
