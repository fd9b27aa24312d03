"""AsyncCheckpointCallback: training continues while shards are written."""

from __future__ import annotations

import logging
import time
from concurrent.futures import Future
from typing import Any

import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint.api import CheckpointException

from dream_trainer.callbacks.checkpoint import CheckpointCallback
from dream_trainer.checkpoint.writer import checkpoint_writer

logger = logging.getLogger(__name__)


class AsyncCheckpointCallback(CheckpointCallback):
    """Like :class:`CheckpointCallback`, but the step that saves only copies the state to host
    memory (pinned on GPU); a background thread writes the shards while training goes on. The
    commit record is written when the write has finished on every rank (rank 0's save completes
    only after all ranks reported their shards). A save that is still running when the next one
    is due is waited for first (and logged), so at most one upload is ever in flight.
    """

    def __init__(self, *args, **kwargs) -> None:  # type: ignore[no-untyped-def]
        super().__init__(*args, **kwargs)
        self._pending: tuple[Future, str, str, float] | None = None
        self._group: dist.ProcessGroup | None = None
        self._stager: Any = None

    def pre_fit(self) -> None:
        # Background collectives get their own gloo group so they never interleave with
        # training collectives on the default group.
        self._group = dist.new_group(backend="gloo")
        if self.trainer.world.device.type == "cuda":
            from torch.distributed.checkpoint.staging import DefaultStager, StagingOptions

            # One stager for the whole run: it keeps its pinned host buffers between saves.
            self._stager = DefaultStager(StagingOptions(
                use_pinned_memory=True, use_shared_memory=False, use_async_staging=False,
                use_non_blocking_copy=True))
        super().pre_fit()

    def _write(self, name: str, reason: str) -> None:
        dist.barrier()  # every rank's RNG file is written before shards start
        response = dcp.async_save(self._app_state(),
                                  storage_writer=checkpoint_writer(self.store.url_of(name)),
                                  process_group=self._group, async_stager=self._stager)
        future = getattr(response, "upload_completion", response)
        self._pending = (future, name, reason, time.perf_counter())

    def _finish(self) -> None:
        assert self._pending is not None
        future, name, reason, started = self._pending
        self._pending = None
        try:
            future.result()
        except (Exception, CheckpointException):  # DCP's error is a BaseException
            logger.exception("checkpoint %s failed; it stays uncommitted", self.store.url_of(name))
            return
        self._commit(name, reason)
        logger.info("checkpoint %s committed after %.2fs in the background",
                    self.store.url_of(name), time.perf_counter() - started)

    def _wait(self) -> None:
        if self._pending is None:
            return
        if not self._pending[0].done():
            logger.warning("checkpoint %s is still being written; waiting for it before the "
                           "next save or exit", self.store.url_of(self._pending[1]))
        self._finish()

    def pre_train_step(self, batch, batch_idx) -> None:  # type: ignore[no-untyped-def]
        if self._pending is not None and self._pending[0].done():
            self._finish()
        super().pre_train_step(batch, batch_idx)
