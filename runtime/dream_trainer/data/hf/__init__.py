"""Hugging Face ``datasets`` for pretraining and instruction fine-tuning, from local files.

Needs the ``data`` extra (``pip install 'dream-trainer[data]'``: datasets, transformers,
tokenizers); importing this package does not import them, the functions do, with an error naming
the extra when they are missing. Nothing here contacts the Hugging Face Hub.

- :func:`load_pretraining_dataset`: tokenise documents and pack them into ``max_length`` blocks.
- :func:`load_sft_dataset` + :class:`SFTCollator`: conversations in any common schema, rendered
  with the tokenizer's chat template, loss only on the responses.
- :func:`load_local_dataset`: the underlying loader (JSON/JSONL/Parquet/CSV/text, save_to_disk).
- :func:`train_bpe_tokenizer`: a small tokenizer trained locally, for examples and tests.

Both datasets are map-style, so ``self.get_train_sampler(dataset)`` shards them over the
data-parallel ranks and the trainer resumes them at the next unseen sample.
"""

from dream_trainer.data.hf.loading import load_local_dataset
from dream_trainer.data.hf.pretraining import (
    PackedDataset,
    load_pretraining_dataset,
    tokenize_documents,
)
from dream_trainer.data.hf.sft import (
    IGNORE_INDEX,
    PLAIN_CHAT_TEMPLATE,
    SFT_SCHEMAS,
    SHAREGPT_ROLES,
    SFTCollator,
    detect_sft_schema,
    load_sft_dataset,
    to_messages,
    tokenize_conversations,
)
from dream_trainer.data.hf.tokenizer import CHAT_TEMPLATE, train_bpe_tokenizer

__all__ = [
    "CHAT_TEMPLATE",
    "IGNORE_INDEX",
    "PLAIN_CHAT_TEMPLATE",
    "SFT_SCHEMAS",
    "SHAREGPT_ROLES",
    "PackedDataset",
    "SFTCollator",
    "detect_sft_schema",
    "load_local_dataset",
    "load_pretraining_dataset",
    "load_sft_dataset",
    "to_messages",
    "tokenize_conversations",
    "tokenize_documents",
    "train_bpe_tokenizer",
]
