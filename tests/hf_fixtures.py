"""Offline Hugging Face fixtures: a tiny tokenizer trained here, saved, and loaded back with
``AutoTokenizer.from_pretrained(local_dir)``, plus small data files. Nothing touches the Hub."""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

# Never try the network, even for a typo'd path (set before datasets/transformers are imported).
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from dream_trainer.data.hf import CHAT_TEMPLATE, train_bpe_tokenizer

CORPUS = [
    "The quick brown fox jumps over the lazy dog.",
    "A tiny corpus for a tiny tokenizer: hello world, hello trainer.",
    "What is the capital of France? The capital of France is Paris.",
    "Translate to French: good morning. Bonjour.",
    "def add(a, b):\n    return a + b\n",
    "Data-parallel ranks each read their own share of the samples.",
]

#: The same template as CHAT_TEMPLATE, with the responses marked for
#: ``return_assistant_tokens_mask``.
GENERATION_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}"
    "{{ '<|' + message['role'] + '|>\\n' }}"
    "{% if message['role'] == 'assistant' %}{% generation %}"
    "{{ message['content'] + eos_token }}{% endgeneration %}"
    "{% else %}{{ message['content'] + eos_token }}{% endif %}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|assistant|>\\n' }}{% endif %}"
)

#: Not prefix-stable: the last message is rendered differently from earlier ones.
UNSTABLE_TEMPLATE = (
    "{% for message in messages %}{{ message['role'] + ': ' + message['content'] }}"
    "{% if loop.last %}{{ ' [last]' }}{% endif %}{{ eos_token }}{% endfor %}"
    "{% if add_generation_prompt %}{{ 'assistant: ' }}{% endif %}"
)


def build_tokenizer(directory: Path, chat_template: str | None = CHAT_TEMPLATE) -> Any:
    """Train the tiny BPE tokenizer, save it to ``directory`` and load it back from there."""
    return train_bpe_tokenizer(CORPUS * 4, vocab_size=400, chat_template=chat_template,
                               save_dir=directory)


def write_jsonl(path: Path, rows: Iterable[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path
