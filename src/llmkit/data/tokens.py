"""Token ids that stay in Arrow: a text column tokenized once into a cache entry, and token dirs read memory-mapped.

A `TokenDocs` is a corpus as numpy views of memory-mapped Arrow buffers (one flat int array per Arrow chunk, plus
three small per-document arrays), so a training run's memory does not grow with the corpus: rows are cut from it
when they are read. Tokenizing goes through the Rust tokenizer's `encode_batch` (its own threads, `--num-proc` of
them) in batches written as they come by a pyarrow stream writer; encoding the next batch overlaps converting the
last one (the Rust call releases the GIL). Any `datasets.Dataset` with a text column can be tokenized this way.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np
import pyarrow as pa

from llmkit.data.cache import cached_entry, entry_key, read_marker
from llmkit.data.sources import Mixed
from llmkit.errors import DataError

TOKENS_FILE = "tokens.arrow"
COLUMN = "input_ids"
BATCH_ROWS = 1024   # documents per encode_batch call: enough for every thread; two batches in flight (ids as
                    # Python lists, Rust encodings) stay a bounded ~100 MB


def set_tokenizer_threads(num_proc: int | None) -> None:
    """--num-proc for the Rust tokenizer: rayon sizes its pool from RAYON_NUM_THREADS (default: all cores) when the
    pool first starts, so this counts only before the process's first batch encode."""
    if num_proc:
        os.environ["RAYON_NUM_THREADS"] = str(num_proc)


# ------------------------------------------------------------------------------------------------ the corpus

@dataclass
class TokenDocs:
    """Non-empty documents as views into flat token arrays: document i is chunks[chunk[i]][start[i]:][:length[i]],
    followed by `eos` where eos_added[i] (a pre-tokenized dir read for causal-lm ends each document with eos)."""

    chunks: list[np.ndarray]
    chunk: np.ndarray                    # int32, per document
    start: np.ndarray                    # int64, per document
    length: np.ndarray                   # int64, per document, eos included
    eos: int | None = None
    eos_added: np.ndarray | None = None  # bool, per document

    def __len__(self) -> int:
        return len(self.length)

    @property
    def tokens(self) -> int:
        return int(self.length.sum())

    def subset(self, indices: np.ndarray) -> TokenDocs:
        """These documents (an eval split), in this order; the token arrays are shared, not copied."""
        return TokenDocs(self.chunks, self.chunk[indices], self.start[indices], self.length[indices], self.eos,
                         None if self.eos_added is None else self.eos_added[indices])

    def piece(self, doc: int, lo: int, hi: int) -> np.ndarray:
        """Tokens lo..hi (exclusive) of document `doc`."""
        stored = self.length[doc] - (1 if self.eos_added is not None and self.eos_added[doc] else 0)
        start = self.start[doc]
        part = self.chunks[self.chunk[doc]][start + lo:start + min(hi, stored)]
        return np.append(part, self.eos) if hi > stored else part

    @classmethod
    def from_column(cls, column: pa.ChunkedArray | pa.Array, append_eos: int | None = None) -> TokenDocs:
        """Zero-copy views of a list<int> column (each chunk's values and offsets); empty documents are left out.
        `append_eos`: documents that do not end with this id get it after their last token."""
        arrays = column.chunks if isinstance(column, pa.ChunkedArray) else [column]
        chunks, chunk_ids, starts, lengths, ends_eos = [], [], [], [], []
        for arrow_chunk in arrays:
            if len(arrow_chunk) == 0:
                continue
            if arrow_chunk.null_count:
                raise DataError("a pre-tokenized dataset has rows without input_ids",
                                hint="drop the empty rows, or tokenize the text again with `llmkit tokenize dataset`")
            offsets = arrow_chunk.offsets.to_numpy()
            values = arrow_chunk.values.to_numpy(zero_copy_only=True)
            length = np.diff(offsets).astype(np.int64)
            keep = length > 0
            chunk_ids.append(np.full(int(keep.sum()), len(chunks), dtype=np.int32))
            starts.append(offsets[:-1][keep].astype(np.int64))
            lengths.append(length[keep])
            if append_eos is not None:
                ends_eos.append(values[offsets[1:][keep] - 1] == append_eos)
            chunks.append(values)
        if not chunks:
            return cls([], np.zeros(0, np.int32), np.zeros(0, np.int64), np.zeros(0, np.int64))
        length = np.concatenate(lengths)
        eos_added = None
        if append_eos is not None:
            eos_added = ~np.concatenate(ends_eos)
            length = length + eos_added
        return cls(chunks, np.concatenate(chunk_ids), np.concatenate(starts), length, append_eos, eos_added)

    @classmethod
    def from_lists(cls, docs: list[list[int]]) -> TokenDocs:
        """Documents given as lists (small data, tests)."""
        return cls.from_column(pa.array(docs, type=pa.list_(pa.int64())))


def open_tokens(entry: Path) -> TokenDocs:
    """A cache entry's documents, memory-mapped."""
    return TokenDocs.from_column(read_stream(entry / TOKENS_FILE).column(COLUMN))


def read_stream(path: Path) -> pa.Table:
    """An Arrow stream file as a table whose buffers are the mapped file's pages (nothing is read until used)."""
    return pa.ipc.open_stream(pa.memory_map(str(path))).read_all()


# ------------------------------------------------------------------------------------------------ tokenizing

@dataclass
class Tokenized:
    """What a tokenizing pass wrote: per document, the tokenizer's length and the stored one (after truncation,
    eos included)."""

    raw_lengths: np.ndarray
    stored_lengths: np.ndarray

    @property
    def info(self) -> dict:
        return {"documents": int(len(self.stored_lengths)), "tokens": int(self.stored_lengths.sum())}


def text_batches(dataset, text_field: str, source: str) -> Iterator[list[str]]:
    """The text column of a `datasets.Dataset`, BATCH_ROWS at a time (None is an empty text)."""
    if text_field not in dataset.column_names:
        raise DataError(f"{source} has no field '{text_field}'; fields found: "
                        f"{', '.join(dataset.column_names) or 'none'}", hint="choose the text field with --text-field")
    files = _files_as_stored(dataset)
    if files is not None:
        # read the Arrow files batch by batch into memory freed as it goes (through the memory map, every page of
        # text read would stay in the process's resident set, which would grow with the corpus)
        texts: list[str] = []
        for file in files:
            for record_batch in pa.ipc.open_stream(pa.OSFile(file)):
                texts.extend(_texts(record_batch.column(text_field).to_pylist()))
                while len(texts) >= BATCH_ROWS:
                    yield texts[:BATCH_ROWS]
                    del texts[:BATCH_ROWS]
        if texts:
            yield texts
        return
    column = dataset.select_columns([text_field])
    for batch in column.iter(batch_size=BATCH_ROWS):
        yield _texts(batch[text_field])


def _files_as_stored(dataset) -> list[str] | None:
    """The Arrow files whose rows, one after the other, are the dataset's (a loaded or converted dataset: one file,
    or shards); None when its rows are anything else (an indices mapping, renamed columns, an in-memory table)."""
    from datasets.table import ConcatenationTable, MemoryMappedTable

    table = dataset.data
    parts = [table] if isinstance(table, MemoryMappedTable) else \
        [row[0] if len(row) == 1 else None for row in table.blocks] if isinstance(table, ConcatenationTable) else [None]
    as_stored = all(isinstance(p, MemoryMappedTable) and
                    all(replay[0] == "replace_schema_metadata" for replay in p.replays) for p in parts)
    return [p.path for p in parts] if as_stored and len(dataset) == table.num_rows else None


def _texts(values: list) -> list[str]:
    return ["" if v is None else v if isinstance(v, str) else str(v) for v in values]


def write_tokens(batches: Iterator[list[str]], tokenizer, path: Path | None, *, add_special_tokens: bool,
                 append_eos: int | None = None, truncate: int | None = None) -> Tokenized:
    """Encode every batch of texts and write their ids (a list<int32> column) to the Arrow stream file `path`
    (None: lengths only). `append_eos` ends each non-empty document with that id; `truncate` cuts longer documents
    as transformers does (special tokens kept): they are encoded again by a truncating copy of the tokenizer."""
    backend = tokenizer.backend_tokenizer
    backend.no_truncation()
    backend.no_padding()
    encode = getattr(backend, "encode_batch_fast", backend.encode_batch)
    truncating = None
    if truncate is not None:
        truncating = type(backend).from_str(backend.to_str())
        truncating.enable_truncation(truncate)
    raw, stored = [], []
    schema = pa.schema([(COLUMN, pa.list_(pa.int32()))])
    writer = pa.ipc.new_stream(str(path), schema) if path is not None else None
    try:
        with ThreadPoolExecutor(1) as pool:
            texts = next(batches, None)
            pending = pool.submit(encode, texts, add_special_tokens=add_special_tokens) if texts is not None else None
            while pending is not None:
                current_texts, encodings = texts, pending.result()
                texts = next(batches, None)   # the next batch encodes while this one is converted
                pending = pool.submit(encode, texts, add_special_tokens=add_special_tokens) \
                    if texts is not None else None
                ids = [e.ids for e in encodings]
                raw.append(np.fromiter(map(len, ids), dtype=np.int64, count=len(ids)))
                if truncating is not None:
                    too_long = np.flatnonzero(raw[-1] > truncate)
                    if len(too_long):
                        again = truncating.encode_batch([current_texts[i] for i in too_long],
                                                        add_special_tokens=add_special_tokens)
                        for i, encoding in zip(too_long, again):
                            ids[i] = encoding.ids
                if append_eos is not None:
                    ids = [d if not d or d[-1] == append_eos else d + [append_eos] for d in ids]
                stored.append(np.fromiter(map(len, ids), dtype=np.int64, count=len(ids)))
                if writer is not None:
                    writer.write_batch(pa.record_batch([pa.array(ids, type=pa.list_(pa.int32()))], schema=schema))
    finally:
        if writer is not None:
            writer.close()
    empty = np.zeros(0, np.int64)
    return Tokenized(np.concatenate(raw) if raw else empty, np.concatenate(stored) if stored else empty)


def write_blocks(column: pa.ChunkedArray, block: int, path: Path) -> int:
    """The documents of a list<int32> column concatenated and cut into rows of `block` tokens, written as such a
    column; returns the number of rows (the tail that fills no block is left out). One Arrow chunk at a time."""
    schema = pa.schema([(COLUMN, pa.list_(pa.int32()))])
    rows = 0
    carry = np.zeros(0, np.int32)
    with pa.ipc.new_stream(str(path), schema) as writer:
        for arrow_chunk in column.chunks:
            offsets = arrow_chunk.offsets.to_numpy()
            values = arrow_chunk.values.to_numpy(zero_copy_only=True)[offsets[0]:offsets[-1]]
            flat = np.concatenate([carry, values])
            count = len(flat) // block
            if count:
                starts = pa.array(np.arange(0, count * block + 1, block, dtype=np.int32))
                writer.write_batch(pa.record_batch([pa.ListArray.from_arrays(starts, pa.array(flat[:count * block]))],
                                                   schema=schema))
            rows += count
            carry = flat[count * block:]
    return rows


# ------------------------------------------------------------------------------------------------- the cache

@dataclass
class CachedTokens:
    docs: TokenDocs
    entry: Path
    reused: bool
    mix: list[dict] | None = None   # a mix's documents and tokens per source (llmkit.data.sources.Mixed)


def cached_tokens(sources: list[str], load_dataset, text_field: str, tokenizer, *, add_special_tokens: bool,
                  append_eos: int | None, num_proc: int | None = None, cache_dir: str | None = None,
                  source_settings: dict | None = None) -> CachedTokens:
    """The text column of the dataset that `load_dataset()` makes of `sources` tokenized: from the cache when an
    entry for the same data, tokenizer and settings (`source_settings`: how the sources become one dataset) is
    intact, else tokenized now into a new entry. `load_dataset()` may return a llmkit.data.sources.Mixed: the entry
    then also records the documents and tokens each source gave."""
    settings = {"text_field": text_field, "add_special_tokens": add_special_tokens, "append_eos": append_eos,
                **(source_settings or {})}
    key = entry_key("tokens", sources=sources, tokenizer=tokenizer, settings=settings)
    source = ",".join(sources)

    def build(scratch: Path) -> dict:
        set_tokenizer_threads(num_proc)
        loaded = load_dataset()
        mixed = loaded if isinstance(loaded, Mixed) else None
        batches = text_batches(loaded if mixed is None else mixed.table, text_field, source)
        written = write_tokens(batches, tokenizer, scratch / TOKENS_FILE, add_special_tokens=add_special_tokens,
                               append_eos=append_eos)
        kept = np.flatnonzero(written.stored_lengths)   # TokenDocs leaves empty documents out
        mix = None if mixed is None else mixed.training_shares(kept, written.stored_lengths[kept])
        return {**written.info, "mix": mix}

    def intact(entry: Path, info: dict) -> bool:
        column = read_stream(entry / TOKENS_FILE).column(COLUMN)
        tokens = sum(int(c.offsets[-1].as_py()) - int(c.offsets[0].as_py()) for c in column.chunks)
        return len(column) == info["documents"] and tokens == info["tokens"] and "mix" in info

    entry, reused = cached_entry("tokens", key, build, check=intact, cache_dir=cache_dir)
    return CachedTokens(open_tokens(entry), entry, reused, read_marker(entry, key)["mix"])
