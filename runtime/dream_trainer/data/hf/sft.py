"""Instruction fine-tuning (SFT) data: conversations rendered with a chat template, loss only on
the responses.

Every supported schema is first turned into a list of ``{"role", "content"}`` messages:

============================  ==================================================================
schema                        row
============================  ==================================================================
``messages``                  ``{"messages": [{"role": "user", "content": ...}, ...]}`` (OpenAI)
``conversations``             ``{"conversations": [{"from": "human", "value": ...}, ...]}``
                              (ShareGPT; ``human`` -> user, ``gpt`` -> assistant, see
                              :data:`SHAREGPT_ROLES`)
``prompt_response``           ``{"prompt": ..., "response": ...}`` (or ``"completion"``)
``alpaca``                    ``{"instruction": ..., "input": ..., "output": ...}``
                              (``input`` optional; joined to the instruction with a blank line)
``fields``                    any columns: ``text_field=["title", "question", "answer"]``, the
                              last is the response, the others are joined with blank lines into
                              the prompt
============================  ==================================================================

The messages are rendered with the tokenizer's chat template (``apply_chat_template``) or, when
it has none, with :data:`PLAIN_CHAT_TEMPLATE`. ``labels`` equal ``input_ids`` on the assistant
turns (their content and whatever the template puts after it up to the next turn, e.g. EOS or
``<|im_end|>``) and are -100 everywhere else (system, user, role headers, padding).

How the response tokens are found:

- a template with ``{% generation %}...{% endgeneration %}`` markers: transformers'
  ``return_assistant_tokens_mask`` (transformers >= 4.43; older ones render without the markers,
  as below);
- any other template is rendered incrementally: for the assistant message ``k`` the text of
  ``messages[:k]`` with the generation prompt and of ``messages[:k+1]`` bound the response, and
  the conversation is tokenised piece by piece at those boundaries, so a token never straddles a
  prompt/response boundary. Templates that re-render earlier turns differently (not prefix-stable)
  are reported with an error that says what to do.
"""

from __future__ import annotations

import inspect
import logging
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch

from dream_trainer.configs.errors import ConfigError, require_int
from dream_trainer.data.hf._deps import require
from dream_trainer.data.hf.loading import DataSource, PathLike, check_columns, load_local_dataset

if TYPE_CHECKING:
    import datasets
    from transformers import PreTrainedTokenizerBase

logger = logging.getLogger(__name__)

IGNORE_INDEX = -100
"""The label of tokens without loss (PyTorch's ``cross_entropy`` default ``ignore_index``)."""

SFT_SCHEMAS = ("messages", "conversations", "prompt_response", "alpaca", "fields")
ROLES = ("system", "user", "assistant", "tool")

SHAREGPT_ROLES: dict[str, str] = {
    "system": "system", "human": "user", "user": "user", "gpt": "assistant",
    "assistant": "assistant", "chatgpt": "assistant", "bing": "assistant", "bard": "assistant",
    "model": "assistant", "tool": "tool", "function_response": "tool", "observation": "tool",
}
"""ShareGPT ``from`` values and the roles they become (extend with ``role_map=``)."""

PLAIN_CHAT_TEMPLATE = (
    "{% if bos_token is defined and bos_token %}{{ bos_token }}{% endif %}"
    "{% for message in messages %}"
    "{% if not loop.first %}{{ '\\n\\n' }}{% endif %}"
    "{{ message['role'] | capitalize }}{{ ':\\n' }}{{ message['content'] }}"
    "{% if message['role'] == 'assistant' %}{{ eos_token }}{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{% if messages %}{{ '\\n\\n' }}{% endif %}"
    "{{ 'Assistant:\\n' }}{% endif %}"
)
"""The template used when the tokenizer has no chat template (or ``chat_template=False``)::

    [BOS]System:
    You are terse.

    User:
    Hi!

    Assistant:
    Hello.[EOS]

Messages are separated by a blank line, each starts with its capitalised role and a colon on
its own line, and assistant messages end with EOS. The loss covers ``Hello.[EOS]``.
"""

_GENERATION_TAG = re.compile(r"\{%-?\s*generation\s*-?%\}")
_GENERATION_TAGS = re.compile(r"\{%-?\s*(end)?generation\s*-?%\}")


# -------------------------------------------------------------------------------------------------
# Schemas


@dataclass(frozen=True)
class SFTSchema:
    """A resolved schema: its name and the columns it reads."""

    name: str
    columns: tuple[str, ...]


def _first_value(dataset: datasets.Dataset, column: str) -> Any:
    for value in dataset.select(range(min(len(dataset), 16)))[column]:
        if value:
            return value
    return None


def detect_sft_schema(dataset: datasets.Dataset, schema: str = "auto",
                      text_field: str | Sequence[str] | None = None) -> SFTSchema:
    """Resolve ``schema`` (one of :data:`SFT_SCHEMAS` or ``"auto"``) against the dataset's columns.

    ``"auto"``: a list ``text_field`` means ``fields``; a string ``text_field`` names a column of
    message lists (``role``/``content`` keys: ``messages``; ``from``/``value``: ``conversations``);
    otherwise the columns decide, in this order: ``messages``, ``conversations``, ``instruction`` +
    ``output`` (alpaca), ``prompt`` + ``response``/``completion``.
    """
    columns = dataset.column_names
    if schema not in ("auto", *SFT_SCHEMAS):
        raise ConfigError("schema", schema, "unknown SFT schema",
                          f"pass 'auto' or one of {', '.join(map(repr, SFT_SCHEMAS))}")
    fields = None if text_field is None else (
        [text_field] if isinstance(text_field, str) else list(text_field))
    if fields is not None and (not fields or not all(isinstance(f, str) for f in fields)):
        raise ConfigError("text_field", text_field, "expected a column name or a list of them",
                          'pass e.g. text_field="messages" or text_field=["question", "answer"]')

    if schema == "auto":
        if fields is not None and len(fields) > 1:
            schema = "fields"
        elif fields is not None:
            check_columns(dataset, fields, "text_field")
            first = _first_value(dataset, fields[0])
            keys = set(first[0]) if isinstance(first, list) and first and isinstance(
                first[0], Mapping) else set()
            if {"role", "content"} <= keys:
                schema = "messages"
            elif {"from", "value"} <= keys:
                schema = "conversations"
            else:
                raise ConfigError(
                    "text_field", fields[0], "for SFT a single text_field must hold lists of "
                    "messages ({'role', 'content'} or ShareGPT {'from', 'value'}), but it holds "
                    f"{type(first).__name__}",
                    "pass several fields (text_field=[prompt fields..., response field]), a "
                    "schema=, or use load_pretraining_dataset for plain text")
        elif "messages" in columns:
            schema = "messages"
        elif "conversations" in columns:
            schema = "conversations"
        elif {"instruction", "output"} <= set(columns):
            schema = "alpaca"
        elif "prompt" in columns and ({"response", "completion"} & set(columns)):
            schema = "prompt_response"
        else:
            raise ConfigError(
                "schema", "auto", f"cannot tell the SFT schema from the columns {columns}",
                "pass schema= (one of " + ", ".join(map(repr, SFT_SCHEMAS)) + ") and, for other "
                "column names, text_field= (a message-list column, or [prompt fields..., "
                "response field])")

    if schema in ("messages", "conversations"):
        if fields is not None and len(fields) != 1:
            raise ConfigError("text_field", text_field, f"schema {schema!r} reads one column",
                              f'pass text_field="{schema}" (the column of message lists)')
        chosen = tuple(fields or [schema])
    elif schema == "prompt_response":
        if fields is not None:
            if len(fields) != 2:
                raise ConfigError("text_field", text_field, "schema 'prompt_response' reads two "
                                  "columns", 'pass text_field=["prompt", "response"]')
            chosen = tuple(fields)
        else:
            chosen = ("prompt", "completion" if "completion" in columns
                      and "response" not in columns else "response")
    elif schema == "alpaca":
        chosen = tuple(fields) if fields is not None else (
            ("instruction", "input", "output") if "input" in columns
            else ("instruction", "output"))
    else:  # fields
        if fields is None or len(fields) < 2:
            raise ConfigError("text_field", text_field, "schema 'fields' needs at least two "
                              "columns: prompt field(s), then the response field",
                              'pass e.g. text_field=["instruction", "input", "output"]')
        chosen = tuple(fields)
    check_columns(dataset, chosen, "text_field")
    return SFTSchema(schema, chosen)


def _content(value: Any, where: str) -> str:
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    if isinstance(value, list) and all(isinstance(p, Mapping) for p in value):
        # OpenAI content parts: keep the text ones.
        return "".join(str(p.get("text") or "") for p in value if p.get("type", "text") == "text")
    raise ConfigError(where, type(value).__name__, "message content must be text",
                      "store strings (or lists of {'type': 'text', 'text': ...} parts)")


def _field_text(value: Any, where: str) -> str:
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    if isinstance(value, int | float) and not isinstance(value, bool):
        return str(value)
    raise ConfigError(where, type(value).__name__, "expected text",
                      "name columns that hold strings in text_field=")


def to_messages(row: Mapping[str, Any], schema: SFTSchema, *, index: int = 0,
                role_map: Mapping[str, str] | None = None,
                system_prompt: str | None = None) -> list[dict[str, str]]:
    """One row of ``schema`` as ``[{"role", "content"}, ...]``; errors name the row and field."""
    roles = dict(SHAREGPT_ROLES) if schema.name == "conversations" else {}
    roles.update(role_map or {})
    messages: list[dict[str, str]] = []
    if schema.name in ("messages", "conversations"):
        column = schema.columns[0]
        turns = row[column]
        role_key, content_key = (("role", "content") if schema.name == "messages"
                                 else ("from", "value"))
        if not isinstance(turns, list) or not turns:
            raise ConfigError(f"row {index}: {column}", turns, "expected a non-empty list of "
                              "messages", "drop or fix the row")
        for j, turn in enumerate(turns):
            where = f"row {index}: {column}[{j}]"
            if not isinstance(turn, Mapping) or role_key not in turn:
                raise ConfigError(where, turn, f"a message needs {role_key!r} and {content_key!r}",
                                  f"give each message {role_key!r} and {content_key!r} keys, or "
                                  "pick the schema that matches the data")
            raw_role = turn[role_key]
            role = roles.get(raw_role, raw_role)
            if role not in ROLES:
                raise ConfigError(f"{where}.{role_key}", raw_role,
                                  f"not a known role (roles: {', '.join(ROLES)})",
                                  f"pass role_map={{{raw_role!r}: 'user'}} (or 'assistant', "
                                  "'system')")
            messages.append({"role": role,
                             "content": _content(turn.get(content_key), f"{where}.{content_key}")})
    else:
        *prompt_fields, response_field = schema.columns
        parts = [_field_text(row[f], f"row {index}: {f}") for f in prompt_fields]
        response = row[response_field]
        if response is None:
            raise ConfigError(f"row {index}: {response_field}", None, "the response is missing",
                              "drop or fix the row")
        messages = [{"role": "user", "content": "\n\n".join(p for p in parts if p)},
                    {"role": "assistant",
                     "content": _field_text(response, f"row {index}: {response_field}")}]
    if system_prompt is not None and messages[0]["role"] != "system":
        messages.insert(0, {"role": "system", "content": system_prompt})
    return messages


# -------------------------------------------------------------------------------------------------
# Rendering


def resolve_chat_template(tokenizer: PreTrainedTokenizerBase,
                          chat_template: str | bool | None = None) -> str:
    """The Jinja template to render with: ``None`` the tokenizer's if it has one, else
    :data:`PLAIN_CHAT_TEMPLATE`; ``True`` the tokenizer's (an error if it has none); ``False``
    the plain one; a string is used as the template."""
    own = getattr(tokenizer, "chat_template", None)
    if isinstance(own, Mapping):  # named templates (transformers 4.4x): take the default
        own = own.get("default")
    if chat_template is None:
        template = own or PLAIN_CHAT_TEMPLATE
    elif chat_template is True:
        if not own:
            raise ConfigError("chat_template", True, "the tokenizer has no chat template",
                              "set tokenizer.chat_template, pass a Jinja template string, or "
                              "chat_template=None/False for the plain template")
        template = own
    elif chat_template is False:
        template = PLAIN_CHAT_TEMPLATE
    elif isinstance(chat_template, str) and chat_template:
        template = chat_template
    else:
        raise ConfigError("chat_template", chat_template, "expected None, a bool or a template",
                          "pass None (the tokenizer's, else plain), True, False or a Jinja string")
    if template == PLAIN_CHAT_TEMPLATE and getattr(tokenizer, "eos_token", None) is None:
        raise ConfigError("chat_template", "plain", "the plain template ends each response with "
                          "EOS, and the tokenizer has no eos_token",
                          "set tokenizer.eos_token (add_special_tokens({'eos_token': ...}))")
    return template


def _render(tokenizer: PreTrainedTokenizerBase, messages: list[dict[str, str]], template: str,
            add_generation_prompt: bool = False) -> str:
    return tokenizer.apply_chat_template(messages, chat_template=template, tokenize=False,
                                         add_generation_prompt=add_generation_prompt)


def conversation_segments(tokenizer: PreTrainedTokenizerBase, messages: list[dict[str, str]],
                          template: str, index: int = 0) -> list[tuple[str, bool]]:
    """The rendered conversation as consecutive ``(text, is_response)`` pieces (incremental
    rendering; see the module docstring)."""
    full = _render(tokenizer, messages, template)
    pieces: list[tuple[str, bool]] = []
    cursor = 0
    for k, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        before = _render(tokenizer, messages[:k], template, add_generation_prompt=True)
        upto = _render(tokenizer, messages[:k + 1], template)
        if not (upto.startswith(before) and full.startswith(upto) and len(before) >= cursor):
            raise ConfigError(
                "chat_template", f"row {index}, message {k}",
                "the template does not render the conversation incrementally (the text of "
                "messages[:k] plus the generation prompt is not a prefix of the text of "
                "messages[:k+1], or that not a prefix of the whole), so the response tokens "
                "cannot be located",
                "mark responses with {% generation %}...{% endgeneration %} in the template "
                "(transformers >= 4.43), or pass chat_template=False for the plain template")
        pieces += [(full[cursor:len(before)], False), (full[len(before):len(upto)], True)]
        cursor = len(upto)
    pieces.append((full[cursor:], False))
    return [(text, is_response) for text, is_response in pieces if text]


def _supports_assistant_mask(tokenizer: PreTrainedTokenizerBase) -> bool:
    try:
        parameters = inspect.signature(tokenizer.apply_chat_template).parameters
    except (TypeError, ValueError):
        return False
    return "return_assistant_tokens_mask" in parameters


def tokenize_conversations(tokenizer: PreTrainedTokenizerBase,
                           conversations: list[list[dict[str, str]]], template: str,
                           indices: Sequence[int] | None = None) -> list[tuple[list[int],
                                                                               list[int]]]:
    """``(input_ids, labels)`` for each conversation (not truncated); labels are
    :data:`IGNORE_INDEX` outside the assistant turns."""
    indices = list(indices) if indices is not None else list(range(len(conversations)))
    if _GENERATION_TAG.search(template) and not _supports_assistant_mask(tokenizer):
        # transformers < 4.43 does not know the tag: render without it, incrementally.
        template = _GENERATION_TAGS.sub("", template)
    if _GENERATION_TAG.search(template):
        out = []
        for messages, index in zip(conversations, indices, strict=True):
            try:
                encoded = tokenizer.apply_chat_template(
                    messages, chat_template=template, tokenize=True, return_dict=True,
                    return_assistant_tokens_mask=True)
            except Exception as error:  # jinja2 errors (raise_exception in templates), ...
                raise ValueError(f"row {index}: the chat template failed: {error}") from error
            ids = list(encoded["input_ids"])
            mask = encoded["assistant_masks"]
            out.append((ids, [t if m else IGNORE_INDEX for t, m in zip(ids, mask, strict=True)]))
        return out
    segmented = []
    for messages, index in zip(conversations, indices, strict=True):
        try:
            segmented.append(conversation_segments(tokenizer, messages, template, index))
        except ConfigError:
            raise
        except Exception as error:
            raise ValueError(f"row {index}: the chat template failed: {error}") from error
    texts = [text for pieces in segmented for text, _ in pieces]
    encoded = tokenizer(texts, add_special_tokens=False, verbose=False)["input_ids"] if texts else []
    out, position = [], 0
    for pieces in segmented:
        ids: list[int] = []
        labels: list[int] = []
        for _, is_response in pieces:
            piece = list(encoded[position])
            position += 1
            ids += piece
            labels += piece if is_response else [IGNORE_INDEX] * len(piece)
        out.append((ids, labels))
    return out


# -------------------------------------------------------------------------------------------------
# Dataset and collator


def load_sft_dataset(path_or_files: DataSource, tokenizer: PreTrainedTokenizerBase,
                     max_length: int, *, schema: str = "auto",
                     text_field: str | Sequence[str] | None = None,
                     chat_template: str | bool | None = None,
                     role_map: Mapping[str, str] | None = None, system_prompt: str | None = None,
                     split: str = "train", data_format: str | None = None,
                     num_samples: int | None = None, num_proc: int | None = None,
                     cache_dir: PathLike | None = None, **load_kwargs: Any) -> datasets.Dataset:
    """Load local instruction data as ``{"input_ids", "labels"}`` rows of at most ``max_length``.

    - ``schema``: ``"auto"`` (see :func:`detect_sft_schema`) or one of :data:`SFT_SCHEMAS`;
      ``text_field`` names the message column, or ``[prompt fields..., response field]``.
    - ``chat_template``: ``None`` uses the tokenizer's chat template when it has one, else
      :data:`PLAIN_CHAT_TEMPLATE`; ``True`` requires the tokenizer's; ``False`` forces the plain
      one; a string is used as the Jinja template.
    - ``role_map`` renames roles (``{"bot": "assistant"}``), on top of :data:`SHAREGPT_ROLES` for
      ShareGPT data. ``system_prompt`` is prepended as a system message where there is none.
    - Labels are ``input_ids`` on assistant turns and -100 elsewhere, aligned with ``input_ids``
      (shift by one in the loss). Rows longer than ``max_length`` are cut on the right; rows left
      with no response token (no assistant turn, or a prompt of ``max_length`` tokens or more) are
      dropped with a warning, and an error names the fix when none is left.

    Rows have different lengths: batch them with :class:`SFTCollator` (pads to ``max_length``,
    makes ``attention_mask``). Pass the dataset to ``self.get_train_sampler(dataset)`` for
    data-parallel sharding and exact resume.
    """
    ds_lib = require("datasets")
    require_int("max_length", max_length, minimum=2)
    raw = load_local_dataset(path_or_files, split=split, data_format=data_format,
                             num_samples=num_samples, cache_dir=cache_dir, **load_kwargs)
    if len(raw) == 0:
        raise ConfigError("path_or_files", str(path_or_files), f"the {split!r} split is empty",
                          "point at data with at least one row")
    resolved = detect_sft_schema(raw, schema, text_field)
    template = resolve_chat_template(tokenizer, chat_template)
    roles = dict(role_map or {})

    def encode(batch: dict[str, list[Any]], indices: list[int]) -> dict[str, list[Any]]:
        rows = [{c: batch[c][i] for c in resolved.columns} for i in range(len(indices))]
        conversations = [to_messages(row, resolved, index=index, role_map=roles,
                                     system_prompt=system_prompt)
                         for row, index in zip(rows, indices, strict=True)]
        out: dict[str, list[Any]] = {"input_ids": [], "labels": [], "response_start": []}
        for ids, labels in tokenize_conversations(tokenizer, conversations, template, indices):
            start = next((i for i, label in enumerate(labels) if label != IGNORE_INDEX), -1)
            out["input_ids"].append(ids[:max_length])
            out["labels"].append(labels[:max_length])
            out["response_start"].append(start)
        return out

    features = ds_lib.Features({"input_ids": ds_lib.Sequence(ds_lib.Value("int32")),
                                "labels": ds_lib.Sequence(ds_lib.Value("int32")),
                                "response_start": ds_lib.Value("int64")})
    encoded = raw.map(encode, batched=True, with_indices=True, remove_columns=raw.column_names,
                      features=features, num_proc=num_proc,
                      desc=f"Rendering {resolved.name} with the chat template")
    starts = encoded["response_start"]
    no_response = sum(1 for s in starts if s < 0)
    cut_off = sum(1 for s in starts if s >= max_length)
    if no_response + cut_off == len(encoded):
        shortest = min((s for s in starts if s >= 0), default=None)
        if shortest is None:
            raise ConfigError("path_or_files", str(path_or_files), "no row has an assistant "
                              "response (role 'assistant')",
                              "check schema=/text_field=/role_map= against the data")
        raise ConfigError("max_length", max_length, "every row's prompt fills max_length, so no "
                          f"response token is left (the shortest prompt has {shortest} tokens)",
                          f"raise max_length above {shortest} (to fit whole rows, more)")
    if no_response or cut_off:
        logger.warning("load_sft_dataset: dropped %d of %d rows (%d without an assistant turn, %d "
                       "whose prompt fills max_length=%d)", no_response + cut_off, len(encoded),
                       no_response, cut_off, max_length)
        encoded = encoded.filter(lambda s: [0 <= x < max_length for x in s], batched=True,
                                 input_columns="response_start", desc="Dropping rows without "
                                 "response tokens")
    return encoded.remove_columns("response_start")


@dataclass
class SFTCollator:
    """Batches ``{"input_ids", "labels"}`` rows of different lengths (lists or 1-D tensors).

    Rows are cut to ``max_length`` and padded on the right with ``pad_token_id`` (labels with
    -100) to ``max_length`` when it is set (fixed shapes), else to the longest row of the batch,
    rounded up to ``pad_to_multiple_of``. Returns int64 ``input_ids``, ``attention_mask`` (1 on
    real tokens) and ``labels``, each ``[batch, length]``.
    """

    pad_token_id: int
    max_length: int | None = None
    pad_to_multiple_of: int | None = None

    def __post_init__(self) -> None:
        require_int("SFTCollator.pad_token_id", self.pad_token_id, minimum=0)
        require_int("SFTCollator.max_length", self.max_length, minimum=1, allow_none=True)
        require_int("SFTCollator.pad_to_multiple_of", self.pad_to_multiple_of, minimum=1,
                    allow_none=True)

    @classmethod
    def for_tokenizer(cls, tokenizer: PreTrainedTokenizerBase, max_length: int | None = None,
                      pad_to_multiple_of: int | None = None) -> SFTCollator:
        """Pad with the tokenizer's pad token, or its EOS when it has none (padding is masked
        out of attention and loss either way)."""
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else (
            tokenizer.eos_token_id)
        if pad is None:
            raise ConfigError("tokenizer.pad_token", None, "the tokenizer has neither a pad "
                              "nor an EOS token", "set tokenizer.pad_token")
        return cls(int(pad), max_length, pad_to_multiple_of)

    def __call__(self, rows: Sequence[Mapping[str, Any]]) -> dict[str, torch.Tensor]:
        ids = [torch.as_tensor(r["input_ids"], dtype=torch.int64)[:self.max_length] for r in rows]
        labels = [torch.as_tensor(r["labels"], dtype=torch.int64)[:self.max_length] for r in rows]
        if self.max_length is not None:
            length = self.max_length
        else:
            length = max(len(t) for t in ids)
            if self.pad_to_multiple_of:
                length = -(-length // self.pad_to_multiple_of) * self.pad_to_multiple_of
        batch = {"input_ids": torch.full((len(rows), length), self.pad_token_id),
                 "attention_mask": torch.zeros((len(rows), length), dtype=torch.int64),
                 "labels": torch.full((len(rows), length), IGNORE_INDEX)}
        for i, (row_ids, row_labels) in enumerate(zip(ids, labels, strict=True)):
            n = len(row_ids)
            batch["input_ids"][i, :n] = row_ids
            batch["attention_mask"][i, :n] = 1
            batch["labels"][i, :n] = row_labels
        return batch
