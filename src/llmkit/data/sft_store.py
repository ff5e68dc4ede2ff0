"""SFT examples at any corpus size: rendered and tokenized once into a cache entry, then read memory-mapped.

`stored_examples` encodes a source in chunks of records (llmkit.data.sft.encode_records, so the rows are exactly
the in-memory ones) on --num-proc worker processes, and writes them as Arrow record batches: input_ids
(uint16 when the vocabulary fits, else int32), the trained runs ([start, end) token index pairs whose labels
equal the ids; every other label is -100), the source row and the trained-token count. The entry is keyed by the source's bytes, the tokenizer, the template
and every setting that changes a row (llmkit.data.cache), so a rerun maps it without rendering, and its marker
holds a digest of the file: an entry that does not match it is rebuilt, never trusted.

Training rows are built on access (`SFTRows`, `PackedSFTRows`) from the mapped arrays: the process holds a few
numbers per example (length, row, trained count), never a Python list of the corpus's tokens. A jsonl source is
read line by line, so neither are its records held; a json file, and the sources read through a `datasets` table,
are read the way llmkit.data.loading reads them.
"""

from __future__ import annotations

import itertools
import os
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from llmkit.data import sft as sftdata
from llmkit.data.cache import cached_entry, entry_key, file_digest, read_marker
from llmkit.data.sources import Mixed, is_mix, parse_spec
from llmkit.errors import DataError, LlmkitError

EXAMPLES_FILE = "examples.arrow"
CHUNK_RECORDS = 256          # records one worker encodes at a time (bounds the Python lists alive in any process)
BATCH_TOKENS = 1 << 22       # chunks are written in record batches of at least this many tokens (fewer to map)
_SETTINGS = ("format", "messages_field", "system_field", "instruction_field", "input_field", "output_field",
             "prompt_field", "completion_field", "seq_len", "multi_turn", "train_on_prompt")


# --------------------------------------------------------------------------------------------------- reading

def _jsonl_lines(path: Path) -> Iterator[tuple[int, str]]:
    """(line number, text) of each non-blank line of an uncompressed file, with llmkit.data.loading's checks
    (empty, binary, UTF-8)."""
    from llmkit.data.loading import SUPPORTED

    with path.open("rb") as f:
        head = f.read(65536)
        if not head.strip():
            raise DataError(f"{path} is empty", hint="give a file with at least one record")
        if b"\x00" in head:
            raise DataError(f"{path} looks binary, not text (it contains NUL bytes)", hint=f"supported: {SUPPORTED}")
        f.seek(0)
        offset = 0
        for number, raw in enumerate(f, start=1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise DataError(f"{path}:{number}: not valid UTF-8 text (byte 0x{raw[exc.start]:02x} at offset "
                                f"{offset + exc.start})", hint="convert the file to UTF-8 (for example with iconv)") \
                    from None
            offset += len(raw)
            if line.strip():
                yield number, line


def _parse_jsonl(path: Path, lines: list[tuple[int, str]]) -> list[dict]:
    from llmkit.data.loading import jsonl_record

    return [jsonl_record(path, number, line) for number, line in lines]


def _batched(items, size: int) -> Iterator[list]:
    batch = []
    for item in items:
        batch.append(item)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


def _record_chunks(cfg, source: str) -> tuple[str, Iterator[tuple[int, list]], Path | None, Mixed | None]:
    """(format, chunks of (first row, payload), the jsonl file whose lines the payloads are, or None when they are
    records; the mix when `source` is one). An uncompressed jsonl file is read as it goes, and its format detected
    from the columns of its first chunk; any other source's from all of them."""
    from llmkit.data.loading import COMPRESSIONS, load_mixed, load_table, read_json, read_jsonl, source_kind

    kind = source_kind(source)
    mixed = None
    path = Path(source).expanduser()
    if kind == "jsonl" and path.suffix.lower() not in COMPRESSIONS:
        line_chunks = _batched(_jsonl_lines(path), CHUNK_RECORDS)
        first = next(line_chunks, [])
        records, columns_of, lines_of = _parse_jsonl(path, first), None, path

        def chunks():
            row = 0
            for chunk in itertools.chain([first], line_chunks):
                yield row, chunk
                row += len(chunk)
    elif kind in ("jsonl", "json"):   # read as JSON, not through Arrow (see llmkit.data.sft.load_records)
        records, columns_of, lines_of = (read_jsonl if kind == "jsonl" else read_json)(path), None, None

        def chunks():
            for start in range(0, len(records), CHUNK_RECORDS):
                yield start, records[start:start + CHUNK_RECORDS]
    else:
        if kind == "mix":
            mixed = load_mixed(source, revision=cfg.data_revision, seed=cfg.seed)
            table = mixed.table
        else:
            table = load_table(source, revision=cfg.data_revision)
        records = table.select(range(min(len(table), CHUNK_RECORDS))).to_list()
        columns_of, lines_of = list(table.column_names), None

        def chunks():
            for start in range(0, len(table), CHUNK_RECORDS):
                yield start, table.select(range(start, min(len(table), start + CHUNK_RECORDS))).to_list()
    if not records:
        raise DataError(f"{source} holds no records", hint="give a file with at least one record")
    columns = columns_of or list(dict.fromkeys(column for record in records for column in record))
    return sftdata.detect_format(cfg, columns, records, source), chunks(), lines_of, mixed


# -------------------------------------------------------------------------------------------------- encoding

def _encode_chunk(job, first_row: int, payload: list) -> dict:
    """One chunk of records as flat arrays and the counts of its encoding; a user error comes back as a value
    (LlmkitError's hint does not survive pickling)."""
    cfg, tokenizer, template_name, template, fmt, source, lines_of = job
    try:
        records = _parse_jsonl(lines_of, payload) if lines_of is not None else payload
        encoded = sftdata.encode_records(records, fmt, tokenizer, template_name, template, cfg, source,
                                         first_row=first_row)
    except LlmkitError as exc:
        return {"error": (type(exc), exc.message, exc.hint)}
    lengths = np.fromiter((len(e.input_ids) for e in encoded.examples), dtype=np.int64, count=len(encoded.examples))
    runs = [_trained_runs(np.asarray(e.labels) != sftdata.IGNORE) for e in encoded.examples]
    return {"ids": np.fromiter((t for e in encoded.examples for t in e.input_ids), dtype=np.int32,
                               count=int(lengths.sum())),
            "lengths": lengths, "runs": runs,
            "rows": np.fromiter((e.row for e in encoded.examples), dtype=np.int64, count=len(encoded.examples)),
            "trained": np.fromiter((e.trained for e in encoded.examples), dtype=np.int32,
                                   count=len(encoded.examples)),
            "counts": {"records": len(records), "dropped": encoded.dropped, "truncated": encoded.truncated,
                       "trailing": encoded.trailing, "rewritten": encoded.rewritten,
                       "end_token_id": encoded.end_token_id, "end_token_known": encoded.end_token_known}}


def _trained_runs(trained: np.ndarray) -> np.ndarray:
    """[start, end, start, end, ...] of the runs of True."""
    edges = np.diff(np.concatenate([[False], trained, [False]]).astype(np.int8))
    return np.stack([np.flatnonzero(edges == 1), np.flatnonzero(edges == -1)], axis=1).ravel().astype(np.int32)


_JOB = None   # what a worker encodes with, set by its initializer


def _start_worker(job) -> None:
    global _JOB
    _JOB = job


def _encode_in_worker(first_row: int, payload: list) -> dict:
    return _encode_chunk(_JOB, first_row, payload)


def _encoded_chunks(job, chunks: Iterator[tuple[int, list]], num_proc: int) -> Iterator[dict]:
    """Each chunk's result in order: in this process when there is one chunk or one worker, else on a pool with
    at most two chunks per worker in flight (the source is never read ahead further)."""
    first = next(chunks, None)
    second = next(chunks, None)
    if second is None or num_proc <= 1:
        for chunk in itertools.chain((c for c in (first, second) if c is not None), chunks):
            yield _encode_chunk(job, *chunk)
        return
    import multiprocessing

    # fork: the workers share the loaded libraries and the tokenizer instead of importing and unpickling them
    context = multiprocessing.get_context("fork" if "fork" in multiprocessing.get_all_start_methods() else None)
    with context.Pool(num_proc, initializer=_start_worker, initargs=(job,)) as pool:
        pending: deque = deque()
        for chunk in itertools.chain([first, second], chunks):
            pending.append(pool.apply_async(_encode_in_worker, chunk))
            if len(pending) >= 2 * num_proc:
                yield pending.popleft().get()
        while pending:
            yield pending.popleft().get()


def default_num_proc() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def _offsets(lengths, dtype=np.int32) -> np.ndarray:
    return np.concatenate([[0], np.cumsum(lengths, dtype=np.int64)]).astype(dtype)


def _batch(results: list[dict], id_type: np.dtype):
    import pyarrow as pa

    runs = [r for result in results for r in result["runs"]]
    lengths = np.concatenate([result["lengths"] for result in results])
    ids = np.concatenate([r["ids"] for r in results]).astype(id_type)
    return pa.record_batch({
        "input_ids": pa.ListArray.from_arrays(_offsets(lengths), ids),
        "trained_runs": pa.ListArray.from_arrays(_offsets([len(r) for r in runs]), np.concatenate(runs)),
        "row": np.concatenate([r["rows"] for r in results]),
        "trained": np.concatenate([r["trained"] for r in results])})


_SCHEMA_FIELDS = ("input_ids", "trained_runs", "row", "trained")




def _build(cfg, tokenizer, template_name: str, template: str, source: str, num_proc: int, reporter):
    def build(scratch: Path) -> dict:
        import pyarrow as pa

        fmt, chunks, lines_of, mixed = _record_chunks(cfg, source)
        job = (cfg, tokenizer, template_name, template, fmt, source, lines_of)
        counts = {"records": 0, "dropped": {}, "truncated": 0, "trailing": 0, "rewritten": 0,
                  "end_token_id": None, "end_token_known": False}
        examples = tokens = trained = 0
        example_rows, example_lengths = [], []   # for the mix's share of each source
        unwritten: list[dict] = []
        # two bytes a token when the vocabulary allows (most do not exceed 65,536 ids), else four
        id_type = np.dtype(np.uint16 if len(tokenizer) <= 1 << 16 else np.int32)
        schema = pa.schema([("input_ids", pa.list_(pa.from_numpy_dtype(id_type))),
                            ("trained_runs", pa.list_(pa.int32())),
                            ("row", pa.int64()), ("trained", pa.int32())])
        with reporter.progress(f"rendering and tokenizing {source}") as advance, \
                pa.OSFile(str(scratch / EXAMPLES_FILE), "wb") as sink, pa.ipc.new_file(sink, schema) as writer:
            for result in _encoded_chunks(job, chunks, num_proc):
                if "error" in result:
                    kind, message, hint = result["error"]
                    raise kind(message, hint=hint)
                chunk = result["counts"]
                for name in ("records", "truncated", "trailing", "rewritten"):
                    counts[name] += chunk[name]
                for why, n in chunk["dropped"].items():
                    counts["dropped"][why] = counts["dropped"].get(why, 0) + n
                if not counts["end_token_known"] and chunk["end_token_known"]:
                    counts["end_token_id"], counts["end_token_known"] = chunk["end_token_id"], True
                if len(result["lengths"]):
                    unwritten.append(result)
                if unwritten and sum(len(r["ids"]) for r in unwritten) >= BATCH_TOKENS:
                    writer.write_batch(_batch(unwritten, id_type))
                    unwritten = []
                examples += len(result["lengths"])
                if mixed is not None:
                    example_rows.append(result["rows"])
                    example_lengths.append(result["lengths"])
                tokens += int(result["lengths"].sum())
                trained += int(result["trained"].sum())
                advance(chunk["records"])
            if unwritten:
                writer.write_batch(_batch(unwritten, id_type))
        mix = None if mixed is None else mixed.training_shares(np.concatenate([[], *example_rows]),
                                                               np.concatenate([[], *example_lengths]))
        return {**counts, "format": fmt, "examples": examples, "tokens": tokens, "trained_tokens": trained,
                "digest": file_digest(scratch / EXAMPLES_FILE), "mix": mix}

    return build


def _intact(entry: Path, info: dict) -> bool:
    return file_digest(entry / EXAMPLES_FILE) == info.get("digest") and "mix" in info and \
        StoredExamples.open(entry, info).tokens == info["tokens"]


def settings(cfg, template_name: str, template: str) -> dict:
    """Every setting an encoded row depends on besides the source and the tokenizer (the cache key's)."""
    return {"template_name": template_name, "template": template, **{name: getattr(cfg, name) for name in _SETTINGS}}


def stored_examples(cfg, tokenizer, template_name: str, template: str, source: str,
                    reporter=None) -> StoredExamples:
    """The examples of `source`, from the cache entry of these inputs (built first when missing or not intact);
    the summary's warnings and errors are encode_source's."""
    from llmkit.ui import SilentReporter

    mixed = is_mix(source)
    key = entry_key("sft", sources=[s.name for s in parse_spec(source)] if mixed else [source], tokenizer=tokenizer,
                    settings={**settings(cfg, template_name, template), "data": source,
                              "revision": cfg.data_revision, "seed": cfg.seed if mixed else None})
    num_proc = cfg.num_proc or default_num_proc()
    entry, reused = cached_entry("sft", key, _build(cfg, tokenizer, template_name, template, source, num_proc,
                                                    reporter or SilentReporter()),
                                 check=_intact, cache_dir=cfg.data_cache)
    info = read_marker(entry, key)
    stored = StoredExamples.open(entry, info, reused=reused, template_name=template_name, template=template)
    stored.mix = info["mix"]
    stored.summary.warnings.extend(sftdata.conversation_warnings(stored.summary, source))
    sftdata.finish_source(stored.summary, cfg, source, len(stored))
    return stored


# --------------------------------------------------------------------------------------------------- the store

@dataclass
class StoredExamples:
    """The examples of a cache entry, mapped. `summary` holds the encoding's counts, format and end token (its
    `examples` list stays empty: rows come from `example(i)`)."""
    directory: Path
    summary: sftdata.Encoded
    lengths: np.ndarray                  # tokens of each example
    rows: np.ndarray                     # the source row of each example
    trained: np.ndarray                  # trained tokens of each example
    reused: bool = False
    _batches: list = field(default_factory=list, repr=False)   # (ids, id offsets, runs, run offsets) per batch
    _batch_starts: np.ndarray = field(default=None, repr=False)
    mix: list[dict] | None = None        # a mix's examples and tokens per source (llmkit.data.sources.Mixed)

    @classmethod
    def open(cls, entry: Path, info: dict, reused: bool = False, template_name: str = "",
             template: str = "") -> StoredExamples:
        import pyarrow as pa

        reader = pa.ipc.open_file(pa.memory_map(str(entry / EXAMPLES_FILE)))
        if tuple(reader.schema.names) != _SCHEMA_FIELDS:
            raise ValueError(f"unexpected columns {reader.schema.names}")
        batches, lengths, rows, trained = [], [], [], []
        for i in range(reader.num_record_batches):
            batch = reader.get_batch(i)
            ids, runs = batch.column("input_ids"), batch.column("trained_runs")
            id_offsets = ids.offsets.to_numpy()
            batches.append((ids.values.to_numpy(), id_offsets, runs.values.to_numpy(), runs.offsets.to_numpy()))
            lengths.append(np.diff(id_offsets).astype(np.int64))
            rows.append(batch.column("row").to_numpy())
            trained.append(batch.column("trained").to_numpy().astype(np.int64))
        lengths = np.concatenate(lengths) if lengths else np.zeros(0, np.int64)
        if len(lengths) != info["examples"]:
            raise ValueError(f"{len(lengths)} examples, the marker says {info['examples']}")
        summary = sftdata.Encoded(examples=[], format=info["format"], template_name=template_name, template=template,
                                  records=info["records"], dropped=dict(info["dropped"]), truncated=info["truncated"],
                                  end_token_id=info["end_token_id"], end_token_known=info["end_token_known"],
                                  trailing=info["trailing"], rewritten=info["rewritten"])
        starts = np.cumsum([0] + [len(b[1]) - 1 for b in batches])
        return cls(entry, summary, lengths, np.concatenate(rows) if rows else np.zeros(0, np.int64),
                   np.concatenate(trained) if trained else np.zeros(0, np.int64), reused, batches, starts)

    def __len__(self) -> int:
        return len(self.lengths)

    @property
    def tokens(self) -> int:
        return int(self.lengths.sum())

    def example(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """(input_ids, labels) of example `index`, as int64 arrays."""
        batch = int(np.searchsorted(self._batch_starts, index, side="right")) - 1
        ids, id_offsets, runs, run_offsets = self._batches[batch]
        at = index - self._batch_starts[batch]
        input_ids = ids[id_offsets[at]:id_offsets[at + 1]].astype(np.int64)
        labels = np.full(len(input_ids), sftdata.IGNORE, dtype=np.int64)
        for start, end in runs[run_offsets[at]:run_offsets[at + 1]].reshape(-1, 2):
            labels[start:end] = input_ids[start:end]
        return input_ids, labels


# ------------------------------------------------------------------------------------------------------ rows

class SFTRows:
    """The examples `indices` (in that order) as a map-style dataset of {input_ids, labels} rows."""

    def __init__(self, store: StoredExamples, indices: np.ndarray):
        self.store, self.indices = store, np.asarray(indices, dtype=np.int64)

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, index: int) -> dict:
        input_ids, labels = self.store.example(int(self.indices[index]))
        return {"input_ids": input_ids.tolist(), "labels": labels.tolist()}


class PackedSFTRows:
    """The examples `indices` packed into blocks of at most seq_len tokens (llmkit.data.sft.pack_blocks), as a map-style dataset
    of {input_ids, labels, position_ids} rows; position ids restart per example."""

    def __init__(self, store: StoredExamples, indices: np.ndarray, seq_len: int):
        indices = np.asarray(indices, dtype=np.int64)
        members, self.block_starts = sftdata.pack_blocks(store.lengths[indices], seq_len)
        self.store, self.members = store, indices[members]

    def __len__(self) -> int:
        return len(self.block_starts) - 1

    def __getitem__(self, index: int) -> dict:
        parts = [self.store.example(int(i))
                 for i in self.members[self.block_starts[index]:self.block_starts[index + 1]]]
        return {"input_ids": np.concatenate([ids for ids, _ in parts]).tolist(),
                "labels": np.concatenate([labels for _, labels in parts]).tolist(),
                "position_ids": np.concatenate([np.arange(len(ids)) for ids, _ in parts]).tolist()}
