"""Datasets that need nothing from the network."""

# Hugging Face datasets (the `data` extra): importing these does not import datasets/transformers.
from dream_trainer.data.hf import (
    IGNORE_INDEX,
    PLAIN_CHAT_TEMPLATE,
    SFT_SCHEMAS,
    PackedDataset,
    SFTCollator,
    load_local_dataset,
    load_pretraining_dataset,
    load_sft_dataset,
    train_bpe_tokenizer,
)
from dream_trainer.data.sampler import ResumableDistributedSampler
from dream_trainer.data.text import ByteTextDataset, default_corpus, read_corpus

__all__ = ["ByteTextDataset", "ResumableDistributedSampler", "default_corpus", "read_corpus"]
__all__ += ["IGNORE_INDEX", "PLAIN_CHAT_TEMPLATE", "SFT_SCHEMAS", "PackedDataset", "SFTCollator",
            "load_local_dataset", "load_pretraining_dataset", "load_sft_dataset",
            "train_bpe_tokenizer"]
