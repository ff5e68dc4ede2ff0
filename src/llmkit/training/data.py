"""Documents to training rows.

- unpacked: one row per document (documents longer than --seq-len are cut into --seq-len pieces), padded per batch;
- --pack: documents (each ending with eos) concatenated and cut into --seq-len blocks; attention crosses document
  boundaries inside a block (the GPT-2/LLaMA pretraining recipe); no padding at all;
- --padding-free: the same blocks, but position ids restart at each document, so transformers' attention
  (sdpa/eager/flash) keeps a block-diagonal mask: no document attends to another, and the first token of a
  document is not predicted from the previous one. Only for architectures that keep packed examples apart
  (llmkit.training.packing decides, and refuses the others).
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from llmkit.errors import ConfigError, DataError

DATASET_META = "llmkit_dataset.json"
ROW_KEY = "row_key"    # (split, epoch, index) of an IndexedRows row; collators pick their keys: never a model input
SPLITS = {"train": 0, "eval": 1}


@dataclass
class Documents:
    docs: list[list[int]]
    source: str
    pretokenized: bool = False
    prepacked: bool = False          # a `tokenize dataset --pack` dir: rows are already blocks
    warnings: list[str] = field(default_factory=list)


def read_documents(source: str, text_field: str, tokenizer, *, add_special_tokens: bool,
                   append_eos: bool) -> Documents:
    """Token ids of every document in `source` (a text dataset, or a pre-tokenized `input_ids` dir)."""
    from llmkit.data.loading import load_table

    table = load_table(source)
    if len(table) == 0:
        raise DataError(f"{source} holds no records", hint="give a dataset with at least one document")
    columns = list(table.column_names)
    if "input_ids" in columns and text_field not in columns:
        docs = [list(map(int, row)) for row in table["input_ids"]]
        meta_file = Path(source).expanduser() / DATASET_META
        meta = json.loads(meta_file.read_text(encoding="utf-8")) if meta_file.is_file() else {}
        result = Documents(docs=docs, source=source, pretokenized=True, prepacked=bool(meta.get("packed")))
    else:
        if text_field not in columns:
            raise DataError(f"{source} has no field '{text_field}'; fields found: {', '.join(columns) or 'none'}",
                              hint="choose the text field with --text-field")
        texts = ["" if v is None else str(v) for v in table[text_field]]
        backend = tokenizer.backend_tokenizer
        backend.no_truncation()
        backend.no_padding()
        docs = [e.ids for e in backend.encode_batch(texts, add_special_tokens=add_special_tokens)]
        result = Documents(docs=docs, source=source)
    eos = tokenizer.eos_token_id
    if append_eos and not result.prepacked:
        if eos is None:
            raise ConfigError("the tokenizer has no eos token to end each document",
                              hint="use a tokenizer with an eos token (or add one: tokenizer.add_special_tokens)")
        result.docs = [d if d and d[-1] == eos else d + [eos] for d in result.docs if d]
    result.docs = [d for d in result.docs if d]
    if not result.docs or sum(map(len, result.docs)) == 0:
        raise DataError(f"{source}: every document is empty after tokenization",
                        hint=f"check --text-field (now '{text_field}')")
    return result


def split_eval(docs: list[list[int]], eval_split: float, seed: int) -> tuple[list[list[int]], list[list[int]]]:
    """Hold out a share (< 1) or a count (>= 1) of the documents, chosen at random with `seed`."""
    n = len(docs)
    count = round(eval_split * n) if eval_split < 1 else int(eval_split)
    count = max(count, 1)
    if count >= n:
        raise ConfigError(f"--eval-split {eval_split:g} holds out {count:,} of {n:,} documents, leaving none to train "
                          "on", hint="use a smaller share (e.g. --eval-split 0.05) or give --eval-data")
    order = list(range(n))
    random.Random(seed).shuffle(order)
    held = set(order[:count])
    return [d for i, d in enumerate(docs) if i not in held], [d for i, d in enumerate(docs) if i in held]


def chunk(docs: list[list[int]], seq_len: int, min_len: int = 1) -> list[dict]:
    """One row per document; longer documents are cut into --seq-len pieces; pieces under min_len are dropped."""
    rows = []
    for doc in docs:
        for start in range(0, len(doc), seq_len):
            piece = doc[start:start + seq_len]
            if len(piece) >= min_len:
                rows.append({"input_ids": piece})
    return rows


def _flat(docs: list[list[int]]) -> tuple[np.ndarray, np.ndarray]:
    lengths = np.fromiter((len(d) for d in docs), dtype=np.int64, count=len(docs))
    flat = np.fromiter((t for d in docs for t in d), dtype=np.int64, count=int(lengths.sum()))
    starts = np.zeros(len(flat), dtype=bool)
    starts[np.concatenate([[0], np.cumsum(lengths)[:-1]])] = True
    return flat, starts


def pack(docs: list[list[int]], seq_len: int, source: str) -> tuple[list[dict], int]:
    """Concatenated documents cut into blocks of seq_len; returns (rows, tokens dropped at the tail)."""
    flat, _ = _flat(docs)
    blocks = len(flat) // seq_len
    if blocks == 0:
        raise DataError(f"{source}: the documents hold {len(flat):,} tokens (eos included), fewer than one packed "
                        f"block of --seq-len {seq_len}", hint="lower --seq-len, add data, or drop --pack")
    rows = [{"input_ids": flat[i * seq_len:(i + 1) * seq_len].tolist()} for i in range(blocks)]
    return rows, len(flat) - blocks * seq_len


def pack_padding_free(docs: list[list[int]], seq_len: int, source: str) -> tuple[list[dict], int]:
    """Like `pack`, plus position ids that restart at every document (and every block)."""
    flat, starts = _flat(docs)
    blocks = len(flat) // seq_len
    if blocks == 0:
        raise DataError(f"{source}: the documents hold {len(flat):,} tokens (eos included), fewer than one packed "
                        f"block of --seq-len {seq_len}", hint="lower --seq-len, add data, or drop --padding-free")
    rows = []
    for i in range(blocks):
        ids = flat[i * seq_len:(i + 1) * seq_len]
        start = starts[i * seq_len:(i + 1) * seq_len].copy()
        start[0] = True
        segment_start = np.maximum.accumulate(np.where(start, np.arange(seq_len), 0))
        rows.append({"input_ids": ids.tolist(), "position_ids": (np.arange(seq_len) - segment_start).tolist()})
    return rows, len(flat) - blocks * seq_len


class RowDataset:
    """A list of rows as a map-style torch dataset (no Arrow round trip: rows are already token ids)."""

    def __init__(self, rows: list[dict]):
        self.rows = rows

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, index: int) -> dict:
        return self.rows[index]

    @property
    def tokens(self) -> int:
        return sum(len(r["input_ids"]) for r in self.rows)


class IndexedRows(RowDataset):
    """Rows that say which they are: each comes with ROW_KEY = (split, epoch, index), what the objectives' random
    choices are a function of (objectives.row_generators). The Trainer's epoch reaches `epoch` through
    trainer.EpochCallback; an eval set stays at epoch 0, so every evaluation masks its rows the same way."""

    def __init__(self, rows: list[dict], split: str):
        super().__init__(rows)
        self.split = SPLITS[split]
        self.epoch = 0

    def __getitem__(self, index: int) -> dict:
        return {**self.rows[index], ROW_KEY: (self.split, self.epoch, index)}
