"""Hugging Face datasets from local files: packing, SFT schemas and masks, errors, dp, resume.

Everything is offline: the tokenizer is trained here (tests/hf_fixtures.py), saved and loaded back
with ``AutoTokenizer.from_pretrained``; data files are written to tmp_path.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import torch
from dream_trainer.callbacks import CheckpointCallback
from dream_trainer.configs import CheckpointParameters
from dream_trainer.configs.errors import ConfigError
from dream_trainer.data import (
    IGNORE_INDEX,
    PLAIN_CHAT_TEMPLATE,
    PackedDataset,
    ResumableDistributedSampler,
    SFTCollator,
    load_local_dataset,
    load_pretraining_dataset,
    load_sft_dataset,
)
from dream_trainer.trainer.mixins.setup.dataloader import DataLoaderSetupMixin
from hf_fixtures import (
    CORPUS,
    GENERATION_TEMPLATE,
    UNSTABLE_TEMPLATE,
    build_tokenizer,
    write_jsonl,
)
from torch.utils.data import DataLoader
from toy import ARGS, ToyTrainer, toy_config

BOS, EOS = "<|bos|>", "<|eos|>"


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("hf")


@pytest.fixture(scope="module")
def tok(hf_dir: Path) -> Any:
    """The tiny tokenizer with a chat template, loaded back from its directory."""
    return build_tokenizer(hf_dir / "tokenizer")


@pytest.fixture(scope="module")
def plain_tok(hf_dir: Path) -> Any:
    """The same tokenizer without a chat template."""
    return build_tokenizer(hf_dir / "tokenizer-plain", chat_template=None)


@pytest.fixture
def cache(tmp_path: Path) -> Path:
    return tmp_path / "cache"


def ids_of(tokenizer: Any, text: str) -> list[int]:
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def unmasked(row: dict[str, Any]) -> list[int]:
    return [label for label in row["labels"] if label != IGNORE_INDEX]


# -------------------------------------------------------------------------------------------------
# Tokenizer fixture


def test_tokenizer_round_trips_offline(tok, plain_tok, hf_dir) -> None:
    from transformers import AutoTokenizer

    again = AutoTokenizer.from_pretrained(hf_dir / "tokenizer")
    assert (again.bos_token, again.eos_token, again.pad_token) == (BOS, EOS, "<|pad|>")
    assert again.chat_template == tok.chat_template and plain_tok.chat_template is None
    text = "Bonjour, trainer! ünïcödé\n\tdone."
    assert tok.decode(ids_of(tok, text)) == text  # byte-level: exact for any text
    assert ids_of(tok, f"{BOS}hi{EOS}")[0] == tok.bos_token_id  # special tokens are matched


# -------------------------------------------------------------------------------------------------
# Pretraining: tokenise, concatenate, pack


def hand_stream(tokenizer: Any, docs: list[str], bos: bool = False) -> list[int]:
    stream: list[int] = []
    for doc in docs:
        if doc:
            stream += [tokenizer.bos_token_id] * bos + ids_of(tokenizer, doc)
            stream += [tokenizer.eos_token_id]
    return stream


@pytest.mark.parametrize("max_length", [7, 16])
def test_packing_matches_a_hand_computation(tok, tmp_path, cache, max_length) -> None:
    docs = [*CORPUS, ""]  # an empty document adds no tokens
    path = write_jsonl(tmp_path / "corpus.jsonl", [{"text": d} for d in docs])
    packed = load_pretraining_dataset(path, tok, max_length, cache_dir=cache)
    stream = hand_stream(tok, docs)
    assert packed.num_tokens == len(stream)
    assert len(packed) == len(stream) // max_length  # the last partial block is dropped
    for i in range(len(packed)):
        block = packed[i]
        want = torch.tensor(stream[i * max_length:(i + 1) * max_length])
        assert torch.equal(block["input_ids"], want), i
        assert torch.equal(block["labels"], want)
        assert torch.equal(block["attention_mask"], torch.ones(max_length, dtype=torch.int64))
    # Documents are separated (and ended) by EOS, in order, across block boundaries.
    kept = torch.cat([packed[i]["input_ids"] for i in range(len(packed))]).tolist()
    assert tok.decode(kept) == (EOS.join(CORPUS) + EOS)[:len(tok.decode(kept))]
    assert kept.count(tok.eos_token_id) == stream[:len(kept)].count(tok.eos_token_id)


def test_packing_options_bos_fields_and_padded_tail(tok, tmp_path, cache) -> None:
    rows = [{"title": "Fox", "body": CORPUS[0]}, {"title": "Paris", "body": None},
            {"title": "", "body": CORPUS[2]}]
    path = write_jsonl(tmp_path / "docs.jsonl", rows)
    packed = load_pretraining_dataset(path, tok, 8, text_field=["title", "body"],
                                      field_separator=" | ", add_bos=True, drop_last=False,
                                      cache_dir=cache)
    docs = [f"Fox | {CORPUS[0]}", "Paris", CORPUS[2]]
    stream = hand_stream(tok, docs, bos=True)
    assert len(packed) == -(-len(stream) // 8)
    tail = packed[len(packed) - 1]
    n = len(stream) % 8 or 8
    assert tail["input_ids"][:n].tolist() == stream[-n:]
    assert tail["input_ids"][n:].tolist() == [tok.pad_token_id] * (8 - n)
    assert tail["labels"][n:].tolist() == [IGNORE_INDEX] * (8 - n)
    assert tail["attention_mask"].tolist() == [1] * n + [0] * (8 - n)
    assert torch.cat([packed[i]["input_ids"] for i in range(len(packed) - 1)]).tolist() + \
        stream[-n:] == stream


def test_every_local_format_gives_the_same_stream(tok, tmp_path, cache) -> None:
    import datasets
    import pyarrow as pa
    import pyarrow.parquet as pq

    docs = [d for d in CORPUS if "\n" not in d]  # text files are read one line per row
    (tmp_path / "corpus.txt").write_text("\n".join(docs) + "\n")
    pq.write_table(pa.table({"text": docs}), tmp_path / "corpus.parquet")
    (tmp_path / "shards").mkdir()
    write_jsonl(tmp_path / "shards" / "a.jsonl", [{"text": d} for d in docs[:2]])
    write_jsonl(tmp_path / "shards" / "b.jsonl", [{"text": d} for d in docs[2:]])
    in_memory = datasets.Dataset.from_dict({"text": docs})
    in_memory.save_to_disk(str(tmp_path / "saved"))
    want = hand_stream(tok, docs)
    for source in (tmp_path / "corpus.txt", tmp_path / "corpus.parquet", tmp_path / "shards",
                   [tmp_path / "shards" / "a.jsonl", tmp_path / "shards" / "b.jsonl"],
                   tmp_path / "saved", in_memory, datasets.DatasetDict(train=in_memory),
                   {"train": str(tmp_path / "corpus.parquet")}):
        packed = load_pretraining_dataset(source, tok, 5, cache_dir=cache)
        got = torch.cat([packed[i]["input_ids"] for i in range(len(packed))]).tolist()
        assert got == want[:len(got)] and len(want) - len(got) < 5, source
    assert len(load_local_dataset(tmp_path / "corpus.parquet", num_samples=2)) == 2


def test_tokenisation_is_cached(tok, tmp_path, cache) -> None:
    path = write_jsonl(tmp_path / "corpus.jsonl", [{"text": d} for d in CORPUS])
    first = load_pretraining_dataset(path, tok, 8, cache_dir=cache)
    again = load_pretraining_dataset(path, tok, 8, cache_dir=cache)
    files = [f["filename"] for f in first.tokenized.cache_files]
    assert files and all(f.startswith(str(cache)) for f in files)
    assert [f["filename"] for f in again.tokenized.cache_files] == files


def test_packed_dataset_pickles_for_dataloader_workers(tok, tmp_path, cache) -> None:
    import pickle

    path = write_jsonl(tmp_path / "corpus.jsonl", [{"text": d} for d in CORPUS])
    packed = load_pretraining_dataset(path, tok, 8, cache_dir=cache)
    clone = pickle.loads(pickle.dumps(packed))
    assert isinstance(clone, PackedDataset) and len(clone) == len(packed)
    assert torch.equal(clone[3]["input_ids"], packed[3]["input_ids"])


# -------------------------------------------------------------------------------------------------
# SFT: schemas, templates, masks

PROMPT, RESPONSE = "What is the capital of France?", "The capital of France is Paris."

SCHEMAS = {
    "messages": ({"messages": [{"role": "user", "content": PROMPT},
                               {"role": "assistant", "content": RESPONSE}]}, {}, PROMPT),
    "conversations": ({"conversations": [{"from": "human", "value": PROMPT},
                                         {"from": "gpt", "value": RESPONSE}]}, {}, PROMPT),
    "prompt_response": ({"prompt": PROMPT, "response": RESPONSE}, {}, PROMPT),
    "prompt_completion": ({"prompt": PROMPT, "completion": RESPONSE}, {}, PROMPT),
    "alpaca": ({"instruction": "Answer briefly.", "input": PROMPT, "output": RESPONSE}, {},
               f"Answer briefly.\n\n{PROMPT}"),
    "alpaca_no_input": ({"instruction": PROMPT, "input": "", "output": RESPONSE}, {}, PROMPT),
    "fields": ({"topic": "geography", "question": PROMPT, "answer": RESPONSE},
               {"text_field": ["topic", "question", "answer"]}, f"geography\n\n{PROMPT}"),
}


@pytest.mark.parametrize("name", list(SCHEMAS))
def test_each_schema_renders_with_the_chat_template(tok, tmp_path, cache, name) -> None:
    row, options, prompt = SCHEMAS[name]
    path = write_jsonl(tmp_path / "sft.jsonl", [row])
    ds = load_sft_dataset(path, tok, 128, cache_dir=cache, **options)
    got = ds[0]
    prefix = ids_of(tok, f"{BOS}<|user|>\n{prompt}{EOS}<|assistant|>\n")
    response = ids_of(tok, RESPONSE + EOS)
    assert got["input_ids"] == prefix + response
    assert got["labels"] == [IGNORE_INDEX] * len(prefix) + response
    assert tok.decode(unmasked(got)) == RESPONSE + EOS
    # The text is exactly the tokenizer's own chat template rendering.
    messages = [{"role": "user", "content": prompt}, {"role": "assistant", "content": RESPONSE}]
    assert tok.decode(got["input_ids"]) == tok.apply_chat_template(messages, tokenize=False)


def test_plain_template_without_a_chat_template(tok, plain_tok, tmp_path, cache) -> None:
    path = write_jsonl(tmp_path / "sft.jsonl", [{"prompt": PROMPT, "response": RESPONSE}])
    want = f"{BOS}User:\n{PROMPT}\n\nAssistant:\n{RESPONSE}{EOS}"
    for tokenizer, option in ((plain_tok, None), (tok, False)):
        row = load_sft_dataset(path, tokenizer, 128, chat_template=option, cache_dir=cache)[0]
        assert tokenizer.decode(row["input_ids"]) == want
        assert tokenizer.decode(unmasked(row)) == RESPONSE + EOS
        prefix = ids_of(tokenizer, f"{BOS}User:\n{PROMPT}\n\nAssistant:\n")
        assert row["labels"][:len(prefix)] == [IGNORE_INDEX] * len(prefix)
    with pytest.raises(ConfigError, match=r"chat_template=True: the tokenizer has no chat "
                                          r"template\. Fix: set tokenizer\.chat_template"):
        load_sft_dataset(path, plain_tok, 128, chat_template=True, cache_dir=cache)
    assert "Assistant:" in PLAIN_CHAT_TEMPLATE


def multi_turn_rows() -> list[dict[str, Any]]:
    return [{"messages": [
        {"role": "system", "content": "Be terse."},
        {"role": "user", "content": "hello"},
        {"role": "assistant", "content": "hello world"},
        {"role": "user", "content": "fox?"},
        {"role": "assistant", "content": "The quick brown fox."},
    ]}, {"messages": [{"role": "user", "content": "Say: bonjour."},
                      {"role": "assistant", "content": "Bonjour."}]}]


@pytest.mark.parametrize("template", ["incremental", "generation"])
def test_multi_turn_masks_cover_every_assistant_turn(tok, tmp_path, cache, template) -> None:
    path = write_jsonl(tmp_path / "chat.jsonl", multi_turn_rows())
    option = GENERATION_TEMPLATE if template == "generation" else None
    ds = load_sft_dataset(path, tok, 256, chat_template=option, cache_dir=cache)
    first = ds[0]
    assert tok.decode(unmasked(first)) == f"hello world{EOS}The quick brown fox.{EOS}"
    assert tok.decode(unmasked(ds[1])) == f"Bonjour.{EOS}"
    # Masked tokens decode to exactly the prompt parts, in order.
    pieces, current, masked = [], [], None
    for token, label in zip(first["input_ids"], first["labels"], strict=True):
        if (label == IGNORE_INDEX) != masked and current:
            pieces.append((masked, tok.decode(current)))
            current = []
        masked = label == IGNORE_INDEX
        current.append(token)
    pieces.append((masked, tok.decode(current)))
    assert pieces == [
        (True, f"{BOS}<|system|>\nBe terse.{EOS}<|user|>\nhello{EOS}<|assistant|>\n"),
        (False, f"hello world{EOS}"),
        (True, f"<|user|>\nfox?{EOS}<|assistant|>\n"),
        (False, f"The quick brown fox.{EOS}"),
    ]


def test_system_prompt_and_role_map(tok, tmp_path, cache) -> None:
    rows = [{"conversations": [{"from": "asker", "value": "hello"},
                               {"from": "bot", "value": "hello world"}]}]
    path = write_jsonl(tmp_path / "chat.jsonl", rows)
    row = load_sft_dataset(path, tok, 128, role_map={"asker": "user", "bot": "assistant"},
                           system_prompt="Be terse.", cache_dir=cache)[0]
    assert tok.decode(row["input_ids"]) == (f"{BOS}<|system|>\nBe terse.{EOS}<|user|>\nhello{EOS}"
                                            f"<|assistant|>\nhello world{EOS}")
    assert tok.decode(unmasked(row)) == f"hello world{EOS}"


def test_truncation_and_dropped_rows(tok, tmp_path, cache, caplog) -> None:
    rows = [{"prompt": "hi", "response": RESPONSE},                 # cut inside the response
            {"prompt": CORPUS[1] * 3, "response": "ok"},            # prompt fills max_length
            {"messages": None, "prompt": "no answer", "response": None}]
    path = write_jsonl(tmp_path / "sft.jsonl", rows[:2])
    prefix = ids_of(tok, f"{BOS}<|user|>\nhi{EOS}<|assistant|>\n")
    max_length = len(prefix) + 3
    with caplog.at_level(logging.WARNING):
        ds = load_sft_dataset(path, tok, max_length, cache_dir=cache)
    assert len(ds) == 1 and "dropped 1 of 2 rows" in caplog.text
    assert ds[0]["input_ids"] == (prefix + ids_of(tok, RESPONSE + EOS))[:max_length]
    assert len(unmasked(ds[0])) == 3
    only_long = write_jsonl(tmp_path / "long.jsonl", rows[1:2])
    with pytest.raises(ConfigError, match=r"max_length=12: every row's prompt fills max_length.*"
                                          r"the shortest prompt has \d+ tokens.*Fix: raise "
                                          r"max_length above \d+"):
        load_sft_dataset(only_long, tok, 12, cache_dir=cache)


def test_collator_pads_and_masks() -> None:
    rows = [{"input_ids": [5, 6, 7], "labels": [-100, 6, 7]},
            {"input_ids": torch.tensor([8, 9, 10, 11, 12]), "labels": [-100, -100, 10, 11, 12]}]
    batch = SFTCollator(pad_token_id=0, max_length=4)(rows)
    assert batch["input_ids"].tolist() == [[5, 6, 7, 0], [8, 9, 10, 11]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1, 0], [1, 1, 1, 1]]
    assert batch["labels"].tolist() == [[-100, 6, 7, -100], [-100, -100, 10, 11]]
    longest = SFTCollator(pad_token_id=0, pad_to_multiple_of=4)(rows)
    assert longest["input_ids"].shape == (2, 8) and longest["input_ids"].dtype == torch.int64


# -------------------------------------------------------------------------------------------------
# Bad input


def test_bad_input_names_the_field_value_and_fix(tok, tmp_path, cache) -> None:
    chat = write_jsonl(tmp_path / "chat.jsonl", [{"prompt": PROMPT, "response": RESPONSE}])
    corpus = write_jsonl(tmp_path / "corpus.jsonl", [{"body": CORPUS[0]}])
    cases: list[tuple[Any, str]] = [
        (lambda: load_sft_dataset(chat, tok, 64, schema="chatml", cache_dir=cache),
         r"schema='chatml': unknown SFT schema\. Fix: pass 'auto' or one of 'messages'"),
        (lambda: load_sft_dataset(corpus, tok, 64, cache_dir=cache),
         (r"schema='auto': cannot tell the SFT schema from the columns \['body'\]\. Fix: pass "
          r"schema=")),
        (lambda: load_sft_dataset(chat, tok, 64, text_field=["prompt", "answer"],
                                  cache_dir=cache),
         (r"text_field=\['prompt', 'answer'\]: column 'answer' is not in the dataset \(columns: "
          r"\['prompt', 'response'\]\)\. Fix")),
        (lambda: load_sft_dataset(chat, tok, 64, schema="alpaca", cache_dir=cache),
         r"column 'instruction' is not in the dataset"),
        (lambda: load_sft_dataset(chat, tok, 1, cache_dir=cache),
         r"max_length=1: must be >= 2\. Fix"),
        (lambda: load_pretraining_dataset(corpus, tok, 64, cache_dir=cache),
         r"text_field='text': column 'text' is not in the dataset \(columns: \['body'\]\)"),
        (lambda: load_pretraining_dataset(corpus, tok, 4096, text_field="body", cache_dir=cache),
         (r"max_length=4096: the 'train' split has only \d+ tokens, fewer than one block\. Fix: "
          r"use more data, a max_length <= \d+, or drop_last=False")),
        (lambda: load_pretraining_dataset(tmp_path / "missing.jsonl", tok, 8, cache_dir=cache),
         r"path_or_files='.*missing\.jsonl': no such local file or directory.*Fix: pass local"),
        (lambda: load_local_dataset(write_jsonl(tmp_path / "data.bin", [])),
         (r"data_format=None: cannot tell the format of '.*data\.bin'.*Fix: pass "
          r"data_format='json'")),
        (lambda: load_local_dataset({"train": chat}, split="validation"),
         r"split='validation': not among the given splits \['train'\]\. Fix: pass one of"),
    ]
    for call, pattern in cases:
        with pytest.raises(ConfigError, match=pattern):
            call()
    bad_roles = write_jsonl(tmp_path / "roles.jsonl", [{"conversations": [
        {"from": "human", "value": "hi"}, {"from": "robot", "value": "hello"}]}])
    with pytest.raises(ConfigError, match=r"row 0: conversations\[1\]\.from='robot': not a known "
                                          r"role.*Fix: pass role_map=\{'robot': 'user'\}"):
        load_sft_dataset(bad_roles, tok, 64, cache_dir=cache)
    no_keys = write_jsonl(tmp_path / "nokeys.jsonl", [{"messages": [{"text": "hi"}]}])
    with pytest.raises(ConfigError, match=r"row 0: messages\[0\]=\{'text': 'hi'\}: a message "
                                          r"needs 'role' and 'content'\. Fix: give each message"):
        load_sft_dataset(no_keys, tok, 64, cache_dir=cache)
    unstable = write_jsonl(tmp_path / "unstable.jsonl", multi_turn_rows())
    with pytest.raises(ConfigError, match=r"chat_template='row 0, message 2': the template does "
                                          r"not render the conversation incrementally.*"
                                          r"\{% generation %\}"):
        load_sft_dataset(unstable, tok, 256, chat_template=UNSTABLE_TEMPLATE, cache_dir=cache)


def test_missing_extra_names_it(monkeypatch) -> None:
    from dream_trainer.data.hf._deps import require

    monkeypatch.setitem(sys.modules, "datasets", None)
    with pytest.raises(ImportError, match=r"needs the Hugging Face 'datasets' package.*"
                                          r"pip install 'dream-trainer\[data\]'"):
        require("datasets")
    with pytest.raises(ImportError, match=r"dream-trainer\[data\]"):
        load_local_dataset("anything.jsonl")


# -------------------------------------------------------------------------------------------------
# Data parallelism and exact resume


def sft_rows(n: int) -> list[dict[str, str]]:
    return [{"prompt": f"{i}+{i}=?", "response": f"{2 * i}."} for i in range(n)]


@pytest.fixture
def both(tok, tmp_path, cache) -> dict[str, Any]:
    corpus = write_jsonl(tmp_path / "corpus.jsonl", [{"text": d} for d in CORPUS * 3])
    sft = write_jsonl(tmp_path / "sft.jsonl", sft_rows(10))
    return {"pretraining": load_pretraining_dataset(corpus, tok, 9, cache_dir=cache),
            "sft": load_sft_dataset(sft, tok, ARGS.max_seq_len + 1, cache_dir=cache)}


def trainer_sampler(dataset: Any, rank: int, size: int) -> ResumableDistributedSampler:
    """The trainer's own get_train_sampler, on a world of ``size`` data-parallel ranks."""
    fake = SimpleNamespace(config=SimpleNamespace(seed=0, shuffle_train=True),
                           world=SimpleNamespace(dp_rank=rank, dp_size=size))
    return DataLoaderSetupMixin.get_train_sampler(fake, dataset)  # type: ignore[arg-type]


@pytest.mark.parametrize("kind", ["pretraining", "sft"])
def test_two_ranks_partition_and_resume_like_one(both, kind) -> None:
    dataset = both[kind]
    one = list(trainer_sampler(dataset, 0, 1))
    ranks = [list(trainer_sampler(dataset, r, 2)) for r in range(2)]
    assert not set(ranks[0]) & set(ranks[1])
    assert sorted(ranks[0] + ranks[1]) == sorted(one[:len(dataset) // 2 * 2])
    # Rank r takes every 2nd sample of the one-rank order, so the k-th global batch is the same
    # samples on one or two ranks, and a resume at global sample s continues at the same place.
    for start in (0, 4):
        resumed = []
        for rank in range(2):
            sampler = trainer_sampler(dataset, rank, 2)
            sampler.set_start(start)
            resumed.append(list(sampler))
        interleaved = [i for pair in zip(*resumed, strict=True) for i in pair]
        assert interleaved == one[start:len(dataset) // 2 * 2]


class HFToyTrainer(ToyTrainer):
    """The toy Llama trained on an HF dataset; records every batch it trains on."""

    dataset: Any = None
    collate: Any = None

    def configure_dataloaders(self) -> tuple[DataLoader, None]:
        self.seen: list[torch.Tensor] = []
        return (DataLoader(self.dataset, batch_size=self.local_batch_size("train"),
                           sampler=self.get_train_sampler(self.dataset),
                           collate_fn=self.collate), None)

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> dict[str, Any]:
        self.seen.append(batch["input_ids"].clone())
        return super().training_step({"input_ids": batch["input_ids"] % ARGS.vocab_size},
                                     batch_idx)


@pytest.mark.parametrize("kind,steps,save_at", [("pretraining", 10, 8), ("sft", 5, 3)])
def test_resumed_run_sees_exactly_the_uninterrupted_samples(both, tok, tmp_path, kind, steps,
                                                             save_at) -> None:
    dataset = both[kind]
    collate = (SFTCollator.for_tokenizer(tok, max_length=ARGS.max_seq_len + 1) if kind == "sft"
               else None)

    def run(max_steps: int, callbacks: list[Any]) -> tuple[HFToyTrainer, Any]:
        trainer = HFToyTrainer(toy_config(steps=max_steps, batch=4, callbacks=callbacks,
                                          n_epochs=None))
        trainer.dataset, trainer.collate = dataset, collate
        trainer.fit()
        return trainer, callbacks

    def every(n: int) -> CheckpointCallback:
        return CheckpointCallback(CheckpointParameters(
            root_dir=str(tmp_path / "ckpt"), checkpoint_every_n_steps=n,
            checkpoint_every_n_epochs=None))

    batches_per_epoch = len(dataset) // 4
    assert batches_per_epoch < save_at < steps  # resume mid-way through the second epoch
    uninterrupted, _ = run(steps, [])
    first, _ = run(save_at, [every(save_at)])
    callback = every(save_at)
    second, _ = run(steps, [callback])
    assert callback.resumed_from is not None and callback.resumed_from.step == save_at
    assert len(first.seen) == save_at and len(second.seen) == steps - save_at
    for got, want in zip(first.seen + second.seen, uninterrupted.seen, strict=True):
        assert torch.equal(got, want)
    # ...and the data really differs between epochs (shuffled), so the check has teeth.
    assert not torch.equal(uninterrupted.seen[0], uninterrupted.seen[batches_per_epoch])
