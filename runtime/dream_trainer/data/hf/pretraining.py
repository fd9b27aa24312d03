"""Pretraining data: tokenise documents, concatenate them and pack into fixed-length blocks."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from functools import cached_property
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch.utils.data import Dataset

from dream_trainer.configs.errors import ConfigError, require_int
from dream_trainer.data.hf._deps import require
from dream_trainer.data.hf.loading import DataSource, PathLike, check_columns, load_local_dataset

if TYPE_CHECKING:
    import datasets
    import pyarrow as pa
    from transformers import PreTrainedTokenizerBase

logger = logging.getLogger(__name__)


def _text_fields(text_field: str | Sequence[str]) -> list[str]:
    fields = [text_field] if isinstance(text_field, str) else list(text_field)
    if not fields or not all(isinstance(f, str) and f for f in fields):
        raise ConfigError("text_field", text_field, "expected a column name or a list of them",
                          'pass e.g. text_field="text" or text_field=["title", "body"]')
    return fields


class PackedDataset(Dataset[dict[str, torch.Tensor]]):
    """Blocks of exactly ``max_length`` tokens cut from the concatenation of every document.

    Item ``i`` is tokens ``[i * max_length, (i + 1) * max_length)`` of the stream, as
    ``{"input_ids", "labels", "attention_mask"}`` (int64, shape ``[max_length]``). ``labels`` is
    ``input_ids`` (the Hugging Face convention: the model or loss shifts by one, e.g.
    ``LlamaParallelMixin.lm_step(batch["input_ids"])``); ``attention_mask`` is all ones: a block
    attends causally over all its tokens, across document boundaries. Only a padded last block
    (``drop_last=False``) has ``attention_mask`` 0 and ``labels`` -100 on its padding.

    The token stream is read from the tokenised ``datasets.Dataset`` (memory-mapped Arrow), so the
    blocks are computed on access and nothing is copied. Pickling (DataLoader workers with spawn)
    sends the tokenised dataset, which ``datasets`` pickles by file path.
    """

    def __init__(self, tokenized: datasets.Dataset, max_length: int, *, drop_last: bool = True,
                 pad_token_id: int | None = None) -> None:
        require_int("max_length", max_length, minimum=2)
        self.tokenized = tokenized
        self.max_length = max_length
        self.drop_last = drop_last
        self.pad_token_id = pad_token_id
        if not drop_last and pad_token_id is None:
            raise ConfigError("drop_last", drop_last, "padding the last block needs a pad token, "
                              "and the tokenizer has neither pad_token nor eos_token",
                              "set tokenizer.pad_token, or keep drop_last=True")

    @cached_property
    def _stream(self) -> pa.ChunkedArray:
        pa = require("pyarrow")
        column = self.tokenized.data.column("input_ids")
        return pa.chunked_array([chunk.flatten() for chunk in column.chunks], type=pa.int32())

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state.pop("_stream", None)
        return state

    @property
    def num_tokens(self) -> int:
        """Tokens in the whole stream (documents plus their BOS/EOS), before blocking."""
        return len(self._stream)

    def __len__(self) -> int:
        full, rest = divmod(self.num_tokens, self.max_length)
        return full + (1 if rest and not self.drop_last else 0)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        if index < 0:
            index += len(self)
        if not 0 <= index < len(self):
            raise IndexError(f"block {index} out of range for {len(self)} blocks")
        start = index * self.max_length
        tokens = self._stream.slice(start, self.max_length).to_numpy()
        ids = torch.from_numpy(np.asarray(tokens, dtype=np.int64))
        n = len(ids)
        mask = torch.ones(self.max_length, dtype=torch.int64)
        labels = ids.clone()
        if n < self.max_length:  # the padded last block (drop_last=False)
            pad = self.max_length - n
            ids = torch.cat([ids, torch.full((pad,), self.pad_token_id, dtype=torch.int64)])
            labels = torch.cat([labels, torch.full((pad,), -100, dtype=torch.int64)])
            mask[n:] = 0
        return {"input_ids": ids, "labels": labels, "attention_mask": mask}


def tokenize_documents(dataset: datasets.Dataset, tokenizer: PreTrainedTokenizerBase, *,
                       text_field: str | Sequence[str] = "text", field_separator: str = "\n\n",
                       add_bos: bool = False, add_eos: bool = True,
                       num_proc: int | None = None) -> datasets.Dataset:
    """One row ``{"input_ids": [...]}`` per document, in order: ``[BOS] tokens [EOS]``.

    Several ``text_field`` columns are joined with ``field_separator`` (empty ones skipped).
    Empty documents yield no tokens (no lone BOS/EOS). A batched ``map``, cached by ``datasets``
    when the source lives in Arrow files (anything read from disk).
    """
    ds_lib = require("datasets")
    fields = _text_fields(text_field)
    check_columns(dataset, fields, "text_field")
    bos = _special_id(tokenizer, "bos") if add_bos else None
    eos = _special_id(tokenizer, "eos") if add_eos else None

    def encode(batch: dict[str, list[Any]], indices: list[int]) -> dict[str, list[list[int]]]:
        texts = []
        for row, index in enumerate(indices):
            parts = []
            for name in fields:
                value = batch[name][row]
                if value is None:
                    continue
                if not isinstance(value, str):
                    raise ConfigError("text_field", name, f"row {index} holds a "
                                      f"{type(value).__name__}, not text",
                                      "name columns holding strings")
                if value:
                    parts.append(value)
            texts.append(field_separator.join(parts))
        encoded = tokenizer(texts, add_special_tokens=False, verbose=False)["input_ids"]
        out = []
        for ids in encoded:
            ids = list(ids)
            if ids:
                ids = ([bos] if bos is not None else []) + ids + ([eos] if eos is not None else [])
            out.append(ids)
        return {"input_ids": out}

    features = ds_lib.Features({"input_ids": ds_lib.Sequence(ds_lib.Value("int32"))})
    return dataset.map(encode, batched=True, with_indices=True, remove_columns=dataset.column_names,
                       features=features, num_proc=num_proc, desc="Tokenising documents")


def _special_id(tokenizer: PreTrainedTokenizerBase, kind: str) -> int:
    token_id = getattr(tokenizer, f"{kind}_token_id", None)
    if token_id is None:
        raise ConfigError(f"add_{kind}", True, f"the tokenizer has no {kind}_token",
                          f"set tokenizer.{kind}_token (e.g. tokenizer.add_special_tokens("
                          f"{{'{kind}_token': '<|{kind}|>'}})) or pass add_{kind}=False")
    return int(token_id)


def load_pretraining_dataset(path_or_files: DataSource, tokenizer: PreTrainedTokenizerBase,
                             max_length: int, *, text_field: str | Sequence[str] = "text",
                             field_separator: str = "\n\n", split: str = "train",
                             data_format: str | None = None, add_bos: bool = False,
                             add_eos: bool = True, drop_last: bool = True,
                             num_samples: int | None = None, num_proc: int | None = None,
                             cache_dir: PathLike | None = None,
                             **load_kwargs: Any) -> PackedDataset:
    """Load local text data, tokenise it and pack it into blocks of exactly ``max_length``.

    - **Loading**: ``path_or_files`` as in :func:`load_local_dataset` (JSON/JSONL/Parquet/CSV/
      text files, a ``save_to_disk`` directory, or a ``datasets.Dataset``).
    - **Tokenising** (:func:`tokenize_documents`): each document is ``text_field`` (or several
      fields joined with ``field_separator``), tokenised without the tokenizer's own special
      tokens, then ``BOS`` is prepended if ``add_bos`` and ``EOS`` appended if ``add_eos``
      (default: documents are separated by EOS). Empty documents are skipped. Cached by
      ``datasets``.
    - **Packing** (:class:`PackedDataset`): all documents are concatenated in dataset order and cut
      into consecutive blocks of ``max_length`` tokens; blocks span document boundaries and attend
      over the whole block. The last partial block is dropped (``drop_last=True``, default) or
      padded with the pad token (``labels`` -100, ``attention_mask`` 0 there).

    Items are ``{"input_ids", "labels", "attention_mask"}`` int64 tensors of shape
    ``[max_length]``, so the default DataLoader collate works. Pass the result to
    ``self.get_train_sampler(dataset)``: each data-parallel rank gets its share of blocks, and a
    resumed run continues at the next unseen block.
    """
    require_int("max_length", max_length, minimum=2)
    raw = load_local_dataset(path_or_files, split=split, data_format=data_format,
                             num_samples=num_samples, cache_dir=cache_dir, **load_kwargs)
    tokenized = tokenize_documents(raw, tokenizer, text_field=text_field,
                                   field_separator=field_separator, add_bos=add_bos,
                                   add_eos=add_eos, num_proc=num_proc)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    packed = PackedDataset(tokenized, max_length, drop_last=drop_last, pad_token_id=pad)
    if len(packed) == 0:
        raise ConfigError("max_length", max_length, f"the {split!r} split has only "
                          f"{packed.num_tokens} tokens, fewer than one block",
                          f"use more data, a max_length <= {max(packed.num_tokens, 2)}, or "
                          "drop_last=False")
    logger.info("packed %d documents (%d tokens) into %d blocks of %d tokens", len(raw),
                packed.num_tokens, len(packed), max_length)
    return packed
