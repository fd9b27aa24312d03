"""A small byte-level BPE tokenizer trained on local text, for examples and tests without the Hub.

Real runs load their model's tokenizer from a local directory
(``AutoTokenizer.from_pretrained("/models/llama/")``); this builds one when there is none.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING

from dream_trainer.configs.errors import require_int
from dream_trainer.data.hf._deps import require

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

BOS, EOS, PAD = "<|bos|>", "<|eos|>", "<|pad|>"
ROLE_TOKENS = ("<|system|>", "<|user|>", "<|assistant|>", "<|tool|>")

CHAT_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}"
    "{{ '<|' + message['role'] + '|>\\n' + message['content'] + eos_token }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|assistant|>\\n' }}{% endif %}"
)
"""The chat template of :func:`train_bpe_tokenizer`::

    <|bos|><|system|>\\nBe terse.<|eos|><|user|>\\nHi<|eos|><|assistant|>\\nHello<|eos|>

Each message is its role token, a newline, the content and EOS; an SFT loss covers
``Hello<|eos|>``."""


def train_bpe_tokenizer(texts: Iterable[str], *, vocab_size: int = 512,
                        chat_template: str | None = CHAT_TEMPLATE,
                        save_dir: str | Path | None = None,
                        model_max_length: int = 1 << 20) -> PreTrainedTokenizerBase:
    """Train a byte-level BPE tokenizer on ``texts`` in-process (the ``tokenizers`` library) and
    wrap it as a ``transformers`` fast tokenizer.

    It has ``<|bos|>``, ``<|eos|>``, ``<|pad|>`` and the role tokens ``<|system|>``, ``<|user|>``,
    ``<|assistant|>``, ``<|tool|>`` as special tokens, adds none of them on its own (templates
    and the data loaders add BOS/EOS), decodes byte-exactly, and has ``chat_template`` (pass None
    for a tokenizer without one). Any text is encodable: the 256 byte symbols are always in the
    vocabulary. With ``save_dir`` it is saved there and loaded back with
    ``AutoTokenizer.from_pretrained(save_dir)``, which is how a run would load it.
    """
    require_int("vocab_size", vocab_size, minimum=256 + 3 + len(ROLE_TOKENS))
    tokenizers = require("tokenizers")
    transformers = require("transformers")
    specials = [PAD, BOS, EOS, *ROLE_TOKENS]
    model = tokenizers.Tokenizer(tokenizers.models.BPE())
    model.pre_tokenizer = tokenizers.pre_tokenizers.ByteLevel(add_prefix_space=False)
    model.decoder = tokenizers.decoders.ByteLevel()
    trainer = tokenizers.trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=specials, show_progress=False,
        initial_alphabet=tokenizers.pre_tokenizers.ByteLevel.alphabet())
    model.train_from_iterator(texts, trainer)
    tokenizer = transformers.PreTrainedTokenizerFast(
        tokenizer_object=model, bos_token=BOS, eos_token=EOS, pad_token=PAD,
        additional_special_tokens=list(ROLE_TOKENS), clean_up_tokenization_spaces=False,
        model_max_length=model_max_length)
    tokenizer.chat_template = chat_template
    if save_dir is not None:
        tokenizer.save_pretrained(str(save_dir))
        tokenizer = transformers.AutoTokenizer.from_pretrained(str(save_dir))
    return tokenizer
