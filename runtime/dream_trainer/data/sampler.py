"""A data-parallel sampler that can resume mid-epoch, also on a different number of ranks."""

from __future__ import annotations

from collections.abc import Iterator

from torch.utils.data import Dataset, DistributedSampler


class ResumableDistributedSampler(DistributedSampler):
    """``DistributedSampler`` (rank r takes every n-th index of the epoch's permutation) that can
    skip the first ``start`` samples of the epoch, counted globally.

    Because the permutation depends only on the seed and the epoch, and rank r of n takes
    positions r, r+n, ..., the first k·B positions are exactly the first k global batches of
    size B for *any* n dividing B. Skipping ``start`` global samples therefore resumes at the
    same point of the data whether the job comes back on the same or another number of ranks.
    """

    def __init__(self, dataset: Dataset, num_replicas: int, rank: int, shuffle: bool = True,
                 seed: int = 0, drop_last: bool = True) -> None:
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=shuffle,
                         seed=seed, drop_last=drop_last)
        self.start = 0

    def set_start(self, global_samples: int) -> None:
        """Skip the first ``global_samples`` samples of the current epoch (until ``set_epoch``)."""
        if global_samples % self.num_replicas:
            raise ValueError(f"cannot resume at global sample {global_samples}: not a multiple of "
                             f"the {self.num_replicas} data-parallel ranks")
        self.start = global_samples

    def set_epoch(self, epoch: int) -> None:
        if epoch != self.epoch:
            self.start = 0
        super().set_epoch(epoch)

    def __iter__(self) -> Iterator[int]:
        indices = list(super().__iter__())
        return iter(indices[self.start // self.num_replicas:])

    def __len__(self) -> int:
        return self.num_samples - self.start // self.num_replicas
