"""Documents to training rows.

- unpacked: one row per document (documents longer than --seq-len are cut into --seq-len pieces), padded per batch;
- --pack: documents (each ending with eos) concatenated and cut into --seq-len blocks; attention crosses document
  boundaries inside a block (the GPT-2/LLaMA pretraining recipe); no padding at all;
- --padding-free: the same blocks, but position ids restart at each document, so transformers' attention
  (sdpa/eager/flash) keeps a block-diagonal mask: no document attends to another, and the first token of a
  document is not predicted from the previous one. Only for architectures that keep packed examples apart
  (llmkit.training.packing decides, and refuses the others).

Documents stay memory-mapped (llmkit.data.tokens): each layout is a few index arrays, and a row is cut from the
mapped tokens when the Trainer reads it, so memory does not grow with the corpus.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from llmkit.data.tokens import TokenDocs, cached_tokens
from llmkit.errors import ConfigError, DataError

DATASET_META = "llmkit_dataset.json"
ROW_KEY = "row_key"    # (split, epoch, index) of an IndexedRows row; collators pick their keys: never a model input
SPLITS = {"train": 0, "eval": 1}


@dataclass
class Documents:
    docs: TokenDocs
    source: str
    pretokenized: bool = False
    prepacked: bool = False          # a `tokenize dataset --pack` dir: rows are already blocks
    origin: str = ""                 # where the tokens came from (the cache entry, reused or built), for the log
    warnings: list[str] = field(default_factory=list)
    mix: list[dict] | None = None    # a mix's documents and tokens per source (llmkit.data.sources.Mixed)


def read_documents(source: str, text_field: str, tokenizer, *, add_special_tokens: bool, append_eos: bool,
                   num_proc: int | None = None, cache_dir: str | None = None, revision: str | None = None,
                   seed: int = 0) -> Documents:
    """The non-empty documents of `source`, memory-mapped: a pre-tokenized `input_ids` dir as it is, a text
    dataset (or a mix of them: `seed` draws it) tokenized once into the data cache (--data-cache) and reused from
    there."""
    from llmkit.data.loading import load_mixed, load_table, source_kind
    from llmkit.data.sources import is_mix, parse_spec

    eos = tokenizer.eos_token_id
    if append_eos and eos is None:
        raise ConfigError("the tokenizer has no eos token to end each document",
                          hint="use a tokenizer with an eos token (or add one: tokenizer.add_special_tokens)")
    saved = load_table(source) if source_kind(source) == "saved" else None
    if saved is not None and "input_ids" in saved.column_names and text_field not in saved.column_names:
        if len(saved) != saved.data.num_rows:   # saved after a select or shuffle: rows in their Arrow order
            saved = saved.flatten_indices()
        meta_file = Path(source).expanduser() / DATASET_META
        meta = json.loads(meta_file.read_text(encoding="utf-8")) if meta_file.is_file() else {}
        prepacked = bool(meta.get("packed"))
        docs = TokenDocs.from_column(saved.data.column("input_ids"),
                                     append_eos=eos if append_eos and not prepacked else None)
        result = Documents(docs=docs, source=source, pretokenized=True, prepacked=prepacked,
                           origin=f"{source}: pre-tokenized, memory-mapped")
    else:
        mixed = is_mix(source)

        def load():
            if mixed:
                return load_mixed(source, revision=revision, seed=seed)
            return saved if saved is not None else load_table(source, revision=revision)

        tokens = cached_tokens([s.name for s in parse_spec(source)] if mixed else [source], load,
                               text_field, tokenizer, add_special_tokens=add_special_tokens,
                               append_eos=eos if append_eos else None, num_proc=num_proc, cache_dir=cache_dir,
                               source_settings={"data": source, "revision": revision, "seed": seed if mixed else None})
        how = "reused from the data cache" if tokens.reused else "tokenized into the data cache"
        result = Documents(docs=tokens.docs, source=source, origin=f"{source}: {how} ({tokens.entry})",
                           mix=tokens.mix)
    if len(result.docs) == 0:
        raise DataError(f"{source}: every document is empty after tokenization",
                        hint=f"check --text-field (now '{text_field}')")
    return result


def eval_count(n: int, eval_split: float) -> int:
    """How many of n documents --eval-split holds out (a share below 1, or a count); refuses leaving none."""
    count = max(round(eval_split * n) if eval_split < 1 else int(eval_split), 1)
    if count >= n:
        raise ConfigError(f"--eval-split {eval_split:g} holds out {count:,} of {n:,} documents, leaving none to train "
                          "on", hint="use a smaller share (e.g. --eval-split 0.05) or give --eval-data")
    return count


def split_eval(docs: list, eval_split: float, seed: int) -> tuple[list, list]:
    """Hold out a share (< 1) or a count (>= 1) of a list, chosen at random with `seed`."""
    count = eval_count(len(docs), eval_split)
    order = list(range(len(docs)))
    random.Random(seed).shuffle(order)
    held = set(order[:count])
    return [d for i, d in enumerate(docs) if i not in held], [d for i, d in enumerate(docs) if i in held]


def split_eval_indices(n: int, eval_split: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """`split_eval` for n documents as index arrays (training, held out), each in document order."""
    held = np.zeros(n, dtype=bool)
    held[np.random.default_rng(seed).permutation(n)[:eval_count(n, eval_split)]] = True
    return np.flatnonzero(~held), np.flatnonzero(held)


class DocumentRows:
    """One row per document; documents longer than seq_len are cut into seq_len pieces (None: whole documents);
    pieces under min_len are left out. Rows are cut from the mapped tokens when read.

    The index is two int32 numbers a row (document, first token), built from per-document counts: at 200M tokens of
    short rows it was three int64 arrays plus as many temporaries, the part of peak RSS that grew with the corpus."""

    def __init__(self, docs: TokenDocs, seq_len: int | None, min_len: int = 1):
        self.docs, self.seq_len = docs, seq_len
        length = np.asarray(docs.length, dtype=np.int64)
        if seq_len is None:
            pieces = (length >= max(min_len, 1)).astype(np.int64)
            self.tokens = int(length[pieces > 0].sum())
        elif seq_len < min_len:   # every piece, the full ones too, is shorter than min_len
            pieces = np.zeros(len(length), dtype=np.int64)
            self.tokens = 0
        else:
            full, tail = np.divmod(length, seq_len)
            kept_tail = tail >= max(min_len, 1)
            pieces = full + kept_tail
            self.tokens = int((full * seq_len + tail * kept_tail).sum())
        index = np.int32 if max(len(length), int(length.max(initial=0))) < 2**31 else np.int64
        self.doc = np.repeat(np.arange(len(length), dtype=index), pieces)
        piece = np.arange(len(self.doc), dtype=index)
        piece -= np.repeat((np.cumsum(pieces) - pieces).astype(index), pieces)   # the piece's number in its document
        if seq_len:
            piece *= seq_len
        self.lo = piece   # the piece's first token

    def __len__(self) -> int:
        return len(self.doc)

    def __getitem__(self, index: int) -> dict:
        doc, lo = int(self.doc[index]), int(self.lo[index])
        length = int(self.docs.length[doc])
        hi = length if self.seq_len is None else min(lo + self.seq_len, length)
        return {"input_ids": self.docs.piece(doc, lo, hi).tolist()}


class BlockRows:
    """The documents concatenated and cut into blocks of seq_len (--pack; the tail that fills no block is dropped).
    With positions (--padding-free), position ids restart at every document and every block."""

    def __init__(self, docs: TokenDocs, seq_len: int, source: str, positions: bool = False):
        self.docs, self.seq_len, self.positions = docs, seq_len, positions
        self.ends = np.cumsum(docs.length)
        total = int(self.ends[-1]) if len(docs) else 0
        self.blocks = total // seq_len
        if self.blocks == 0:
            flag = "--padding-free" if positions else "--pack"
            raise DataError(f"{source}: the documents hold {total:,} tokens (eos included), fewer than one packed "
                            f"block of --seq-len {seq_len}", hint=f"lower --seq-len, add data, or drop {flag}")
        self.dropped = total - self.blocks * seq_len

    def __len__(self) -> int:
        return self.blocks

    def __getitem__(self, index: int) -> dict:
        begin, end = index * self.seq_len, (index + 1) * self.seq_len
        first, last = np.searchsorted(self.ends, [begin, end - 1], side="right")
        pieces, positions = [], []
        for doc in range(first, last + 1):
            doc_start = self.ends[doc] - self.docs.length[doc]
            lo, hi = max(begin, doc_start) - doc_start, min(end, self.ends[doc]) - doc_start
            pieces.append(self.docs.piece(doc, lo, hi))
            positions.append(np.arange(hi - lo))
        row = {"input_ids": np.concatenate(pieces).tolist()}
        if self.positions:
            row["position_ids"] = np.concatenate(positions).tolist()
        return row

    @property
    def tokens(self) -> int:
        return self.blocks * self.seq_len


def pack(docs: list[list[int]], seq_len: int, source: str) -> tuple[list[dict], int]:
    """Concatenated documents cut into blocks of seq_len; returns (rows, tokens dropped at the tail)."""
    blocks = BlockRows(TokenDocs.from_lists(docs), seq_len, source)
    return [blocks[i] for i in range(len(blocks))], blocks.dropped


def pack_padding_free(docs: list[list[int]], seq_len: int, source: str) -> tuple[list[dict], int]:
    """Like `pack`, plus position ids that restart at every document (and every block)."""
    blocks = BlockRows(TokenDocs.from_lists(docs), seq_len, source, positions=True)
    return [blocks[i] for i in range(len(blocks))], blocks.dropped


class RowDataset:
    """Rows (a list, or DocumentRows / BlockRows, which cut them from the mapped tokens when read) as a map-style
    torch dataset."""

    def __init__(self, rows):
        self.rows = rows

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, index: int) -> dict:
        return self.rows[index]

    @property
    def tokens(self) -> int:
        return sum(len(r["input_ids"]) for r in self.rows) if isinstance(self.rows, list) else self.rows.tokens


class IndexedRows(RowDataset):
    """Rows that say which they are: each comes with ROW_KEY = (split, epoch, index), what the objectives' random
    choices are a function of (objectives.row_generators). The Trainer's epoch reaches `epoch` through
    trainer.EpochCallback; an eval set stays at epoch 0, so every evaluation masks its rows the same way."""

    def __init__(self, rows, split: str):
        super().__init__(rows)
        self.split = SPLITS[split]
        self.epoch = 0

    def __getitem__(self, index: int) -> dict:
        return {**self.rows[index], ROW_KEY: (self.split, self.epoch, index)}
