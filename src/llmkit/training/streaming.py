"""`pretrain --streaming`: training rows made on the fly from a stream of documents, for corpora larger than disk
or RAM.

The rows are those the mapped path (llmkit.training.data) makes of the same documents in the same order: one row
per document (long ones cut into --seq-len pieces), `--pack` blocks (documents ending with eos, concatenated, cut
into --seq-len blocks, a pass's tail that fills no block dropped), or `--padding-free` blocks (position ids restart
at every document and block). Each row carries ROW_KEY = (split, pass, index in the pass), so the objectives'
random choices stay a function of the row.

The rows never end: when the stream is exhausted the next pass begins (a shuffled stream reshuffled with the pass
as `datasets`' set_epoch), so --max-steps, which streaming requires, decides the length. Because the Trainer sees
one endless epoch, its resume (skipping the batches already trained on) replays exactly the rows of the first run,
across passes too. Under `llmkit launch` the Trainer's accelerate reads the stream once and gives every rank its
own slice of each global batch (dispatch_batches), so ranks never see the same row.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Iterator

import numpy as np
import torch

from llmkit.data.streaming import stream_texts
from llmkit.errors import DataError
from llmkit.training.data import ROW_KEY, SPLITS

ENCODE_CHARS = 1 << 20   # text per encode_batch call: enough to keep the tokenizer's threads busy, a few MB of ids


def token_documents(texts: Iterable[str], tokenizer, *, add_special_tokens: bool, append_eos: bool,
                    batch_chars: int = ENCODE_CHARS) -> Iterator[list[int]]:
    """Token ids of each non-empty document, tokenized in batches; with `append_eos`, each ends with eos (as
    llmkit.data.tokens.write_tokens)."""
    backend = tokenizer.backend_tokenizer
    backend.no_truncation()
    backend.no_padding()
    encode = getattr(backend, "encode_batch_fast", backend.encode_batch)   # without offsets: less memory
    eos = tokenizer.eos_token_id
    for batch in _batched(texts, batch_chars):
        for encoding in encode(batch, add_special_tokens=add_special_tokens):
            ids = encoding.ids
            if append_eos and ids and ids[-1] != eos:
                ids.append(eos)
            if ids:
                yield ids


def _batched(texts: Iterable[str], chars: int) -> Iterator[list[str]]:
    """Consecutive texts, about `chars` characters a batch (a longer text alone)."""
    batch, size = [], 0
    for text in texts:
        batch.append(text)
        size += len(text)
        if size >= chars:
            yield batch
            batch, size = [], 0
    if batch:
        yield batch


def chunk_rows(docs: Iterable[list[int]], seq_len: int, min_len: int) -> Iterator[dict]:
    """One row per document; longer documents cut into seq_len pieces; pieces under min_len dropped."""
    for doc in docs:
        for start in range(0, len(doc), seq_len):
            piece = doc[start:start + seq_len]
            if len(piece) >= min_len:
                yield {"input_ids": piece}


def packed_rows(docs: Iterable[list[int]], seq_len: int, padding_free: bool) -> Iterator[dict]:
    """Documents concatenated and cut into seq_len blocks (padding-free: with restarting position ids)."""
    ids: list[int] = []
    positions: list[int] = []
    for doc in docs:
        ids.extend(doc)
        if padding_free:
            positions.extend(range(len(doc)))
        while len(ids) >= seq_len:
            row = {"input_ids": ids[:seq_len]}
            if padding_free:
                # a block that starts inside a document restarts its positions too
                block = np.asarray(positions[:seq_len])
                start = block == 0
                start[0] = True
                segment_start = np.maximum.accumulate(np.where(start, np.arange(seq_len), 0))
                row["position_ids"] = (np.arange(seq_len) - segment_start).tolist()
                del positions[:seq_len]
            yield row
            del ids[:seq_len]


class StreamingRows(torch.utils.data.IterableDataset):
    """Endless training rows from `stream` (an IterableDataset of texts), tokenized and laid out on the fly."""

    def __init__(self, stream, text_field: str, tokenizer, *, seq_len: int, layout: str, min_len: int,
                 add_special_tokens: bool, append_eos: bool, source: str, shuffle_buffer: int, seed: int):
        self.unshuffled = stream
        self.stream = stream.shuffle(seed=seed, buffer_size=shuffle_buffer) if shuffle_buffer > 1 else stream
        self.text_field, self.tokenizer, self.source = text_field, tokenizer, source
        self.seq_len, self.layout, self.min_len = seq_len, layout, min_len
        self.add_special_tokens, self.append_eos = add_special_tokens, append_eos
        self.split = SPLITS["train"]

    def rows_of_pass(self, number: int, shuffled: bool = True) -> Iterator[dict]:
        """The rows of one pass over the stream (without their ROW_KEY)."""
        stream = self.stream if shuffled else self.unshuffled
        stream.set_epoch(number)
        docs = token_documents(stream_texts(stream, self.text_field, self.source), self.tokenizer,
                               add_special_tokens=self.add_special_tokens, append_eos=self.append_eos)
        if self.layout == "rows":
            return chunk_rows(docs, self.seq_len, self.min_len)
        return packed_rows(docs, self.seq_len, padding_free=self.layout == "padding-free")

    def check(self) -> None:
        """Raise, before anything is written, when the stream cannot make a single row."""
        if next(self.rows_of_pass(0, shuffled=False), None) is None:   # without filling the shuffle buffer
            what = (f"one --seq-len {self.seq_len} block" if self.layout != "rows"
                    else f"one row of {self.min_len} or more tokens")
            raise DataError(f"{self.source}: the stream ended before {what}",
                            hint="check the source and --text-field, or lower --seq-len")

    def __iter__(self) -> Iterator[dict]:
        for number in itertools.count():
            count = 0
            for count, row in enumerate(self.rows_of_pass(number), start=1):
                yield {**row, ROW_KEY: (self.split, number, count - 1)}
            if count == 0:   # check() saw a row: the source changed under the run
                raise DataError(f"{self.source}: pass {number + 1} over the stream gave no row",
                                hint="the source changed during training; check it and --resume")
