"""DataLoaderSetupMixin: train/val dataloaders and data-parallel-aware samplers."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Literal

from torch.utils.data import Dataset

from dream_trainer.data.sampler import ResumableDistributedSampler

from dream_trainer.configs.errors import ConfigError, require_bool
from dream_trainer.trainer.abstract import AbstractTrainer


@dataclass(kw_only=True)
class DataLoaderSetupConfigMixin:
    """Data options."""

    shuffle_train: bool = True
    """Shuffle the training set each epoch (seeded by ``seed`` and the epoch number)."""

    def __post_init__(self) -> None:
        require_bool(f"{type(self).__name__}.shuffle_train", self.shuffle_train)
        if hasattr(super(), "__post_init__"):
            super().__post_init__()  # type: ignore[misc]


class DataLoaderSetupMixin(AbstractTrainer):
    """``configure_dataloaders`` returns ``(train_loader, val_loader)``; val may be None.

    Batch sizes in ``TrainingParameters`` are global: build loaders with
    ``batch_size=self.local_batch_size("train")`` and ``sampler=self.get_train_sampler(ds)``.
    """

    train_dataloader: Iterable[Any]
    val_dataloader: Iterable[Any] | None

    def configure_dataloaders(self) -> tuple[Iterable[Any], Iterable[Any] | None]:
        raise TypeError(f"{type(self).__name__} must implement configure_dataloaders() "
                        "returning (train_loader, val_loader)")

    def local_batch_size(self, split: Literal["train", "val"] = "train") -> int:
        """The per-rank batch size: the global batch size divided by the data-parallel degree."""
        params = self.config.training_parameters
        size = params.train_batch_size if split == "train" else params.effective_val_batch_size
        return size // self.world.dp_size

    def get_train_sampler(self, dataset: Dataset,
                          shuffle: bool | None = None) -> ResumableDistributedSampler:
        """A sampler giving each data-parallel rank a disjoint share of ``dataset``.

        Ranks that differ only in tp/cp/pp get the same samples (they cooperate on one batch).
        The tail that does not divide evenly is dropped so every rank runs the same step count.
        The trainer positions it when resuming mid-epoch, in global samples, so a job resumed on
        another number of ranks neither skips nor repeats a sample.
        """
        if shuffle is None:
            shuffle = getattr(self.config, "shuffle_train", True)
        return ResumableDistributedSampler(dataset, num_replicas=self.world.dp_size,
                                           rank=self.world.dp_rank, shuffle=shuffle,
                                           seed=self.config.seed, drop_last=True)

    def get_val_sampler(self, dataset: Dataset) -> ResumableDistributedSampler:
        """Like :meth:`get_train_sampler`, without shuffling."""
        return ResumableDistributedSampler(dataset, num_replicas=self.world.dp_size,
                                           rank=self.world.dp_rank, shuffle=False,
                                           drop_last=True)

    def _setup_dataloaders(self) -> None:
        loaders = self.configure_dataloaders()
        if not isinstance(loaders, tuple) or len(loaders) != 2:
            raise TypeError(f"{type(self).__name__}.configure_dataloaders() must return "
                            f"(train_loader, val_loader), got {type(loaders).__name__}")
        self.train_dataloader, self.val_dataloader = loaders
        for split, loader in (("train", self.train_dataloader), ("val", self.val_dataloader)):
            batch_size = getattr(loader, "batch_size", None)
            expected = self.local_batch_size(split)  # type: ignore[arg-type]
            if batch_size is not None and batch_size != expected:
                field = "train_batch_size" if split == "train" else "val_batch_size"
                raise ConfigError(
                    f"{split}_dataloader.batch_size", batch_size,
                    f"TrainingParameters.{field} is the global batch; with {self.world.dp_size} "
                    f"data-parallel ranks each rank must load {expected}",
                    f'build the loader with batch_size=self.local_batch_size("{split}")')
