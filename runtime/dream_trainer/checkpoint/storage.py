"""Checkpoint storage on any fsspec URL: commit records, listing, per-rank files, deletion."""

from __future__ import annotations

import dataclasses
import io
import json
import logging
from typing import Any

import fsspec
import torch

from dream_trainer.checkpoint.layout import COMMIT_FILE, CommitRecord, parse_step

logger = logging.getLogger(__name__)


class CheckpointStore:
    """The checkpoints under ``url`` (a local path, ``file://`` or ``s3://bucket/prefix``).

    S3 credentials and endpoint come from the standard ``AWS_*`` variables (``AWS_ENDPOINT_URL``
    for S3-compatible servers) or ``storage_options``.
    """

    def __init__(self, url: str, storage_options: dict[str, Any] | None = None) -> None:
        self.url = url.rstrip("/")
        self.fs, self.root = fsspec.core.url_to_fs(self.url, **(storage_options or {}))

    def url_of(self, name: str) -> str:
        return f"{self.url}/{name}"

    def _path(self, *parts: str) -> str:
        return "/".join((self.root.rstrip("/"), *parts))

    def committed(self) -> list[CommitRecord]:
        """Every committed checkpoint. Directories without a commit record (a save that did not
        finish) are ignored; an unreadable record is skipped with a warning."""
        if not self.fs.exists(self.root):
            return []
        self.fs.invalidate_cache(self.root)
        records = []
        for entry in self.fs.ls(self.root, detail=False):
            name = entry.rstrip("/").rsplit("/", 1)[-1]
            if parse_step(name) is None:
                continue
            record_path = self._path(name, COMMIT_FILE)
            if not self.fs.exists(record_path):
                logger.info("ignoring uncommitted checkpoint %s", self.url_of(name))
                continue
            try:
                records.append(CommitRecord(**json.loads(self.fs.cat_file(record_path))))
            except (ValueError, TypeError) as err:
                logger.warning("skipping checkpoint %s: unreadable commit record (%s)",
                               self.url_of(name), err)
        return sorted(records, key=lambda r: r.step)

    def commit(self, name: str, record: CommitRecord) -> None:
        """Write the commit record: from now on the checkpoint exists."""
        self.fs.pipe_file(self._path(name, COMMIT_FILE),
                          json.dumps(dataclasses.asdict(record), sort_keys=True).encode())

    def delete(self, name: str) -> None:
        """Remove a checkpoint, commit record first: a delete cut short leaves an uncommitted
        directory (ignored), never a committed checkpoint with missing shards."""
        record = self._path(name, COMMIT_FILE)
        if self.fs.exists(record):
            self.fs.rm_file(record)
        if self.fs.exists(self._path(name)):
            self.fs.rm(self._path(name), recursive=True)

    def save_rank_file(self, name: str, rank: int, obj: Any) -> None:
        buffer = io.BytesIO()
        torch.save(obj, buffer)
        self.fs.makedirs(self._path(name, "ranks"), exist_ok=True)  # local filesystems need it
        self.fs.pipe_file(self._path(name, "ranks", f"rank_{rank:05d}.pt"), buffer.getvalue())

    def load_rank_file(self, name: str, rank: int) -> Any | None:
        """The object rank ``rank`` saved, or None (e.g. a rank that did not exist then)."""
        path = self._path(name, "ranks", f"rank_{rank:05d}.pt")
        if not self.fs.exists(path):
            return None
        return torch.load(io.BytesIO(self.fs.cat_file(path)), weights_only=False)
