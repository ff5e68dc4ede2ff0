"""`--streaming`: training rows made on the fly from a stream of documents, for corpora larger than disk or RAM.

The rows are exactly those the mapped path makes from the same documents in the same order: one row per document
(long ones cut into pieces), `--pack` blocks (documents ending with eos, concatenated, cut into --seq-len blocks, the
tail that fills no block dropped), or `--padding-free` blocks (position ids restart at each document and block).
Each row carries ROW_KEY = (split, epoch, index in the stream), as mapped rows do, so the objectives' random choices
stay a function of the row.

Resuming is exact: the stream is deterministic (file order, or a seeded shuffle buffer whose seed moves with the
epoch), so the Trainer's skipping of the batches already trained on replays the same rows. Under `llmkit launch`
the Trainer's accelerate wraps the stream in an IterableDatasetShard: every rank reads the stream and keeps its own
slice of each global batch, so ranks never train on the same row and N processes see what one process would.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

import numpy as np
import torch

from llmkit.errors import DataError
from llmkit.training.data import ROW_KEY, SPLITS

ENCODE_BATCH = 1024     # documents per encode_batch call: enough to keep the tokenizer's threads busy


def token_documents(texts: Iterable[str], tokenizer, *, add_special_tokens: bool, append_eos: bool,
                    batch_size: int = ENCODE_BATCH) -> Iterator[list[int]]:
    """Token ids of each non-empty document, tokenized in batches; with `append_eos`, each ends with eos."""
    backend = tokenizer.backend_tokenizer
    backend.no_truncation()
    backend.no_padding()
    eos = tokenizer.eos_token_id
    batch: list[str] = []

    def encoded(chunk: list[str]) -> Iterator[list[int]]:
        for encoding in backend.encode_batch(chunk, add_special_tokens=add_special_tokens):
            ids = encoding.ids
            if append_eos and ids and ids[-1] != eos:
                ids.append(eos)
            if ids:
                yield ids

    for text in texts:
        batch.append(text)
        if len(batch) == batch_size:
            yield from encoded(batch)
            batch = []
    if batch:
        yield from encoded(batch)


def chunk_rows(docs: Iterable[list[int]], seq_len: int, min_len: int) -> Iterator[dict]:
    """One row per document; longer documents cut into seq_len pieces; pieces under min_len dropped."""
    for doc in docs:
        for start in range(0, len(doc), seq_len):
            piece = doc[start:start + seq_len]
            if len(piece) >= min_len:
                yield {"input_ids": piece}


def packed_rows(docs: Iterable[list[int]], seq_len: int, padding_free: bool) -> Iterator[dict]:
    """Documents concatenated and cut into seq_len blocks (padding-free: with restarting position ids)."""
    ids = np.empty(0, dtype=np.int64)
    positions = np.empty(0, dtype=np.int64)
    for doc in docs:
        ids = np.concatenate([ids, np.asarray(doc, dtype=np.int64)])
        positions = np.concatenate([positions, np.arange(len(doc), dtype=np.int64)])
        while len(ids) >= seq_len:
            row = {"input_ids": ids[:seq_len].tolist()}
            if padding_free:
                # positions restart at every document in the block, and at the block's first token
                start = positions[:seq_len] == 0
                start[0] = True
                segment_start = np.maximum.accumulate(np.where(start, np.arange(seq_len), 0))
                row["position_ids"] = (np.arange(seq_len) - segment_start).tolist()
            yield row
            ids, positions = ids[seq_len:], positions[seq_len:]


class StreamingRows(torch.utils.data.IterableDataset):
    """Rows from `make_texts()` (a fresh iterator of document texts per epoch), tokenized and laid out on the fly."""

    def __init__(self, make_texts, tokenizer, *, seq_len: int, layout: str, min_len: int, add_special_tokens: bool,
                 append_eos: bool, source: str, split: str = "train"):
        self.make_texts = make_texts
        self.tokenizer = tokenizer
        self.seq_len, self.layout, self.min_len = seq_len, layout, min_len
        self.add_special_tokens, self.append_eos = add_special_tokens, append_eos
        self.source = source
        self.split = SPLITS[split]
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self) -> Iterator[dict]:
        docs = token_documents(self.make_texts(self.epoch), self.tokenizer,
                               add_special_tokens=self.add_special_tokens, append_eos=self.append_eos)
        if self.layout == "rows":
            rows = chunk_rows(docs, self.seq_len, self.min_len)
        else:
            rows = packed_rows(docs, self.seq_len, padding_free=self.layout == "padding-free")
        count = 0
        for count, row in enumerate(rows, start=1):
            yield {**row, ROW_KEY: (self.split, self.epoch, count - 1)}
        if count == 0:
            what = "one packed block" if self.layout != "rows" else f"one row of {self.min_len}+ tokens"
            raise DataError(f"{self.source}: the stream ended before {what} of --seq-len {self.seq_len}",
                            hint="check the source and --text-field, or lower --seq-len")
