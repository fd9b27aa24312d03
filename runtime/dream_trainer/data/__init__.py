"""Datasets that need nothing from the network."""

from dream_trainer.data.sampler import ResumableDistributedSampler
from dream_trainer.data.text import ByteTextDataset, default_corpus, read_corpus

__all__ = ["ByteTextDataset", "ResumableDistributedSampler", "default_corpus", "read_corpus"]
