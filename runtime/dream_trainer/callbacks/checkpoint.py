"""CheckpointCallback: sharded DCP checkpoints on any fsspec URL, committed, resumable exactly."""

from __future__ import annotations

import logging
import random
import signal
import time
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
import torch.distributed.checkpoint.state_dict as dcp_sd
from torch.distributed.checkpoint.api import CheckpointException
from torch.distributed.checkpoint.default_planner import DefaultLoadPlanner

from dream_trainer.callbacks.callback import Callback
from dream_trainer.checkpoint.layout import (
    CommitRecord,
    checkpoint_name,
    pick_resume,
    to_delete,
)
from dream_trainer.checkpoint.storage import CheckpointStore
from dream_trainer.checkpoint.writer import checkpoint_reader, checkpoint_writer
from dream_trainer.configs import CheckpointParameters
from dream_trainer.contract import PREEMPTED_EXIT_CODE
from dream_trainer.trainer.mixins.setup.setup import SetupMixin
from dream_trainer.utils.rank_zero import rank_zero_print

logger = logging.getLogger(__name__)


def rng_state() -> dict[str, Any]:
    """Every random generator a training step may draw from, on this rank."""
    state = {"torch": torch.get_rng_state(), "python": random.getstate(),
             "numpy": np.random.get_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])


class CheckpointCallback(Callback[SetupMixin]):
    """Saves and resumes sharded checkpoints (``torch.distributed.checkpoint``).

    A checkpoint holds the trainer's whole state (models, optimizers, schedulers, counters,
    callback state, data position in global samples) plus every rank's RNG state. Saves happen at
    step boundaries (before the batch after step N runs) and epoch boundaries, so a resumed job
    continues bit-for-bit. A checkpoint becomes valid only when rank 0 writes its commit record,
    after every rank finished; resume and cleanup consider committed checkpoints only, fall back to
    the previous one if loading fails, and never delete the newest committed one.

    On SIGTERM the current step finishes, an emergency checkpoint is written (if it fits in
    ``preemption_grace_seconds``) and the process exits with ``PREEMPTED_EXIT_CODE`` (143).
    """

    def __init__(self, params: CheckpointParameters | None = None) -> None:
        self.params = params or CheckpointParameters()
        self.store = CheckpointStore(self.params.root_dir)  # type: ignore[arg-type]
        self.resumed_from: CommitRecord | None = None
        self.last_committed: str | None = None
        """URL of the newest checkpoint this run committed (on rank 0), or resumed from."""
        self.last_saved_step = -1
        self._pending_rng: tuple[str, dict[str, Any]] | None = None
        self._sigterm_at: float | None = None
        self._last_save_seconds = 0.0
        self._previous_handler: Any = None

    # ----------------------------------------------------------------- hooks
    def pre_fit(self) -> None:
        # The SIGTERM flag is agreed on every step over a CPU (gloo) group: on GPUs a flag on
        # the device would force a host sync per step.
        self._flag_group = dist.new_group(backend="gloo")
        self._install_sigterm_handler()
        self._resume()

    def pre_epoch(self) -> None:
        self._restore_rng("epoch")
        trainer, every = self.trainer, self.params.checkpoint_every_n_epochs
        if (every and trainer.current_epoch and trainer.current_epoch % every == 0
                and trainer.epoch_batches == 0):
            self.save("scheduled", boundary="epoch")

    def pre_train_step(self, batch: Any, batch_idx: int) -> None:
        self._restore_rng("step")
        trainer = self.trainer
        accumulation = trainer.config.training_parameters.gradient_accumulation_steps
        if trainer.local_batches % accumulation:
            return  # inside an accumulation window: not a step boundary
        if self._preemption_requested():
            self._preempt()
        every = self.params.checkpoint_every_n_steps
        if every and trainer.global_step and trainer.global_step % every == 0:
            self.save("scheduled", boundary="step")

    def post_fit(self) -> None:
        if self.params.save_last:
            self.save("last", boundary="end")
        self._wait()
        self._restore_sigterm_handler()

    def on_interrupt(self) -> None:
        self._restore_sigterm_handler()

    # ----------------------------------------------------------------- saving
    def _app_state(self) -> dict[str, Any]:
        return self.trainer.state_dict()

    def save(self, reason: str, boundary: str) -> None:
        """Write a checkpoint of the current state (collective: every rank calls it)."""
        trainer = self.trainer
        step = trainer.global_step
        if step <= self.last_saved_step:
            return
        name = checkpoint_name(step)
        self._wait()
        started = time.perf_counter()
        rank = trainer.world.rank
        # Per-rank RNG state first; the barrier inside the DCP save orders it before the commit.
        self.store.save_rank_file(name, rank, {"rng": rng_state(), "boundary": boundary})
        self._write(name, reason)
        self.last_saved_step = step
        self._last_save_seconds = time.perf_counter() - started
        logger.info("checkpoint %s (%s) written in %.2fs", self.store.url_of(name), reason,
                    self._last_save_seconds)

    def _write(self, name: str, reason: str) -> None:
        """Write the shards, then commit. The async variant overrides this."""
        dcp.save(self._app_state(), storage_writer=checkpoint_writer(self.store.url_of(name)))
        dist.barrier()  # every rank's shards (and rank files) are written
        self._commit(name, reason)

    def _commit(self, name: str, reason: str) -> None:
        """Rank 0 writes the commit record, then applies top-k retention."""
        trainer = self.trainer
        if trainer.world.is_global_zero:
            record = CommitRecord(step=int(name.split("_")[1]), epoch=trainer.current_epoch,
                                  world_size=trainer.world.size,
                                  metrics=dict(trainer.last_validation_result),
                                  time=time.time(), reason=reason)
            self.store.commit(name, record)
            self.last_committed = self.store.url_of(name)
            for old in to_delete(self.store.committed(), self.params.keep_top_k,
                                 self.params.monitor, self.params.mode):
                logger.info("keep_top_k=%d: deleting %s", self.params.keep_top_k,
                            self.store.url_of(checkpoint_name(old.step)))
                self.store.delete(checkpoint_name(old.step))

    def _wait(self) -> None:
        """Block until an in-flight save is committed (nothing to wait for when synchronous)."""

    # ----------------------------------------------------------------- resuming
    def _candidates(self) -> list[str]:
        if self.params.resume_path:
            return [self.params.resume_path.rstrip("/")]
        records = self.store.committed()
        ordered = []
        while records:
            choice = pick_resume(records, self.params.resume_mode, self.params.monitor,
                                 self.params.mode)
            assert choice is not None
            ordered.append(self.store.url_of(checkpoint_name(choice.step)))
            records = [r for r in records if r.step != choice.step]
        return ordered

    def _resume(self) -> None:
        for url in self._candidates():
            try:
                self._load(url)
            except (Exception, CheckpointException) as err:  # corrupt: try the previous one
                if self.params.resume_path:
                    raise
                logger.warning("cannot resume from %s (%s: %s); trying the previous committed "
                               "checkpoint", url, type(err).__name__, err)
                continue
            logger.info("resumed from %s at step %d", url, self.trainer.global_step)
            # Printed too: a restarted job's log should say where it picked up.
            rank_zero_print(f"resumed from {url} at step {self.trainer.global_step}")
            self.last_committed = url
            return

    def _load(self, url: str) -> None:
        trainer = self.trainer
        state = self._app_state()
        if self.params.model_weights_only:
            state = {"models": state["models"]}
        planner = DefaultLoadPlanner(allow_partial_load=not self.params.strict_load)
        dcp.load(state, storage_reader=checkpoint_reader(url), planner=planner)
        if self.params.model_weights_only:
            models = trainer.named_models()
            options = dcp_sd.StateDictOptions(strict=self.params.strict_load)
            for name, model_state in state["models"].items():
                dcp_sd.set_model_state_dict(models[name], model_state, options=options)
            return
        trainer.load_state_dict(state, strict=self.params.strict_load)
        step = trainer.global_step
        self.last_saved_step = step
        store = CheckpointStore(url.rsplit("/", 1)[0])
        saved = store.load_rank_file(url.rsplit("/", 1)[1], trainer.world.rank)
        if saved is not None and saved["boundary"] in ("step", "epoch"):
            self._pending_rng = (saved["boundary"], saved["rng"])
        self.resumed_from = CommitRecord(step=step, epoch=trainer.current_epoch,
                                         world_size=trainer.world.size)

    def _restore_rng(self, boundary: str) -> None:
        """RNG streams resume at the same boundary they were saved at: after the epoch's data
        iterator was created for step saves, before it for epoch saves."""
        if self._pending_rng is not None and self._pending_rng[0] == boundary:
            set_rng_state(self._pending_rng[1])
            self._pending_rng = None

    # ----------------------------------------------------------------- preemption
    def _install_sigterm_handler(self) -> None:
        def on_sigterm(signum: int, frame: Any) -> None:
            if self._sigterm_at is None:
                self._sigterm_at = time.monotonic()
                logger.warning("SIGTERM: finishing the current step, then checkpointing")

        try:
            self._previous_handler = signal.signal(signal.SIGTERM, on_sigterm)
        except ValueError:  # not the main thread: leave signals alone
            self._previous_handler = None

    def _restore_sigterm_handler(self) -> None:
        if self._previous_handler is not None:
            signal.signal(signal.SIGTERM, self._previous_handler)
            self._previous_handler = None

    def _preemption_requested(self) -> bool:
        """Whether any rank got SIGTERM (ranks may get it at different moments, so agree)."""
        flag = torch.tensor([1.0 if self._sigterm_at is not None else 0.0])
        if dist.get_world_size() > 1:
            dist.all_reduce(flag, op=dist.ReduceOp.MAX, group=self._flag_group)
        if flag.item() and self._sigterm_at is None:
            self._sigterm_at = time.monotonic()
        return bool(flag.item())

    def _preempt(self) -> None:
        elapsed = time.monotonic() - (self._sigterm_at or time.monotonic())
        if elapsed + self._last_save_seconds <= self.params.preemption_grace_seconds:
            self.save("preemption", boundary="step")
            self._wait()
        else:
            logger.warning("no time for an emergency checkpoint (%.1fs since SIGTERM, saves take "
                           "%.1fs); the last committed one is step %d", elapsed,
                           self._last_save_seconds, self.last_saved_step)
        dist.barrier()
        raise SystemExit(PREEMPTED_EXIT_CODE)

