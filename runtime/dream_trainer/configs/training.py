"""TrainingParameters: how long to train, batch sizes, accumulation, clipping, validation cadence."""

from __future__ import annotations

from dataclasses import dataclass

from dream_trainer.configs.errors import ConfigError, require_int, require_number


@dataclass(kw_only=True)
class TrainingParameters:
    """The training loop's schedule.

    A *step* is one optimizer step; it consumes ``gradient_accumulation_steps`` micro-batches.
    Batch sizes are **global**: each data-parallel rank loads ``batch_size / dp`` samples per
    micro-batch (see ``DataLoaderSetupMixin.local_batch_size``).
    """

    n_epochs: int | None = 1
    """Epochs to train. None: train until ``max_steps``."""
    max_steps: int | None = None
    """Stop after this many optimizer steps in total, whatever the epoch."""
    train_steps_per_epoch: int | None = None
    """Optimizer steps per epoch. None: as many as the train dataloader yields."""
    val_steps_per_epoch: int | None = None
    """Validation batches per validation run. None: the whole validation dataloader."""

    train_batch_size: int = 8
    """Global micro-batch size (summed over data-parallel ranks)."""
    val_batch_size: int | None = None
    """Global validation batch size. None: same as ``train_batch_size``."""
    gradient_accumulation_steps: int = 1
    gradient_clip_val: float | None = None
    """Clip the global gradient norm (over all shards) to this value. None: no clipping."""

    val_frequency: float = 1.0
    """Validate every this fraction of an epoch (0.25: four times per epoch)."""
    val_every_n_steps: int | None = None
    """Validate every N optimizer steps instead of by epoch fraction."""
    num_sanity_val_steps: int = 0
    """Validation batches run before training, to fail fast on a broken validation_step."""

    def __post_init__(self) -> None:
        name = "TrainingParameters"
        require_int(f"{name}.n_epochs", self.n_epochs, minimum=1, allow_none=True)
        require_int(f"{name}.max_steps", self.max_steps, minimum=1, allow_none=True)
        if self.n_epochs is None and self.max_steps is None:
            raise ConfigError(f"{name}.n_epochs", None, "with max_steps=None training never ends",
                              "set n_epochs, max_steps, or both")
        require_int(f"{name}.train_steps_per_epoch", self.train_steps_per_epoch, minimum=1,
                    allow_none=True)
        require_int(f"{name}.val_steps_per_epoch", self.val_steps_per_epoch, minimum=0,
                    allow_none=True)
        require_int(f"{name}.train_batch_size", self.train_batch_size, minimum=1)
        require_int(f"{name}.val_batch_size", self.val_batch_size, minimum=1, allow_none=True)
        require_int(f"{name}.gradient_accumulation_steps", self.gradient_accumulation_steps,
                    minimum=1)
        require_number(f"{name}.gradient_clip_val", self.gradient_clip_val, minimum=0.0,
                       allow_none=True)
        require_number(f"{name}.val_frequency", self.val_frequency, minimum=0.0)
        if not 0.0 < self.val_frequency <= 1.0:
            raise ConfigError(f"{name}.val_frequency", self.val_frequency,
                              "is a fraction of an epoch and must be in (0, 1]",
                              "use e.g. 0.25 to validate four times per epoch, or "
                              "val_every_n_steps for a step cadence")
        require_int(f"{name}.val_every_n_steps", self.val_every_n_steps, minimum=1,
                    allow_none=True)
        require_int(f"{name}.num_sanity_val_steps", self.num_sanity_val_steps, minimum=0)

    @property
    def effective_val_batch_size(self) -> int:
        return self.val_batch_size if self.val_batch_size is not None else self.train_batch_size

    def check_divisible(self, dp_size: int) -> None:
        """Raise ConfigError if a global batch size does not split evenly over ``dp_size`` ranks."""
        for field, size in (("train_batch_size", self.train_batch_size),
                            ("val_batch_size", self.effective_val_batch_size)):
            if size % dp_size:
                lower, upper = (size // dp_size) * dp_size, (size // dp_size + 1) * dp_size
                raise ConfigError(
                    f"TrainingParameters.{field}", size,
                    f"the global batch must split evenly over the {dp_size} data-parallel ranks",
                    f"use a multiple of {dp_size} such as {lower or upper} or {upper}")
