"""`--streaming`: any --data source as a `datasets.IterableDataset` of texts, read as training goes, never whole.

Every source kind loading.py reads (a file, compressed too; a directory or glob of shards; a saved dataset; a hub
dataset with config, split and revision) and mixes of them (weights: `datasets.interleave_datasets`, the same
stopping strategy as the mapped path; none: one source after the other). Errors are llmkit's: a missing field,
a source that cannot be opened, a malformed record met mid-stream, each one line naming the source.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from llmkit.data import sources as data_sources
from llmkit.data.loading import SHARD_BUILDERS, first_line, quiet_datasets, parse_hub, shard_files, source_kind
from llmkit.data.sources import file_kind
from llmkit.errors import ConfigError, DataError
from llmkit.hub import require_hub

BUILDERS = {**SHARD_BUILDERS, "txt": "text"}   # `datasets` builders that stream a single file of each kind


def open_stream(source: str, text_field: str, *, revision: str | None = None, seed: int = 0):
    """An IterableDataset with one column, `text_field`, over `source` (a spec: a mix too)."""
    import datasets

    kind = source_kind(source)
    if kind == "mix":
        parts = data_sources.parse_spec(source)
        streams = [open_stream(s.name, text_field, revision=revision) for s in parts]
        if parts[0].weight is None:
            return datasets.concatenate_datasets(streams)
        total = sum(s.weight for s in parts)
        return datasets.interleave_datasets(streams, probabilities=[s.weight / total for s in parts], seed=seed,
                                            stopping_strategy=data_sources.MIX_STRATEGY)
    with quiet_datasets():
        stream = _open(source, kind, revision, text_field)
    columns = stream.column_names
    if columns is not None:
        _check_field(source, text_field, columns)
    return stream.select_columns([text_field]) if columns is not None else stream


def _check_field(source: str, text_field: str, columns: list[str]) -> None:
    if text_field not in columns:
        hint = ("it is already tokenized, and read memory-mapped: drop --streaming" if "input_ids" in columns
                else "choose the text field with --text-field")
        raise DataError(f"{source} has no field '{text_field}'; fields found: {', '.join(columns) or 'none'}",
                        hint=hint)


def _open(source: str, kind: str, revision: str | None, text_field: str):
    import datasets

    path = Path(source).expanduser()
    try:
        if kind in BUILDERS and path.stat().st_size == 0:
            raise DataError(f"{source} is empty", hint="give a file with at least one record")
        if kind == "parquet" or kind == "shards" and file_kind(shard_files(source)[0]) == "parquet":
            return _parquet_stream(shard_files(source) if kind == "shards" else [path], text_field, source)
        if kind == "saved":
            loaded = datasets.load_from_disk(str(path))
            if isinstance(loaded, datasets.DatasetDict):
                loaded = loaded["train"] if "train" in loaded else loaded[next(iter(loaded))]
            return loaded.to_iterable_dataset()
        if kind == "shards":
            files = shard_files(source)
            return datasets.load_dataset(SHARD_BUILDERS[file_kind(files[0])], data_files=[str(p) for p in files],
                                         split="train", streaming=True)
        if kind in BUILDERS:
            return datasets.load_dataset(BUILDERS[kind], data_files=[str(path)], split="train", streaming=True)
        return _open_hub(source, revision)
    except (DataError, ConfigError):
        raise
    except Exception as exc:
        raise DataError(f"cannot stream {source}: {first_line(exc)}", hint="check the source") from None


def _parquet_stream(files: list[Path], text_field: str, source: str):
    """Local parquet files read one row group at a time (pyarrow's `read_row_group`, the pool's freed memory handed
    back after each), not through `datasets`' parquet builder: its fragment scanner, like `ParquetFile.iter_batches`,
    kept memory for every row group it had read, so streaming a 361 MB file grew the process by over 1 GB
    (benchmarks/RESULTS.md). One shard per file, in order, as the builder has them."""
    import datasets
    import pyarrow as pa
    import pyarrow.parquet as pq

    schemas = [_parquet_schema(f) for f in files]   # footers only: a bad shard set is refused before any row is read
    _check_field(source, text_field, schemas[0].names)
    for name, schema in zip(files[1:], schemas[1:]):
        if text_field not in schema.names:
            raise DataError(f"{name} has no field '{text_field}', which {files[0].name} has: the shards mix schemas "
                            f"(fields found: {', '.join(schema.names) or 'none'})",
                            hint="give shards of one schema, or move that file out of the set")
    schema = schemas[0]
    features = datasets.Features.from_arrow_schema(pa.schema([schema.field(text_field)]))
    return datasets.IterableDataset.from_generator(_parquet_rows, features=features,
                                                   gen_kwargs={"files": [str(f) for f in files],
                                                               "column": text_field})


def _parquet_schema(path: Path):
    import pyarrow.parquet as pq

    try:
        return pq.read_schema(path)
    except Exception as exc:   # pyarrow's ArrowInvalid, OSError
        raise DataError(f"{path} is not a readable parquet file: {first_line(exc)}",
                        hint="fix or remove the bad file") from None


def _parquet_rows(files: list[str], column: str) -> Iterator[dict]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    pool = pa.default_memory_pool()
    for name in files:
        parquet = pq.ParquetFile(name)
        for group in range(parquet.metadata.num_row_groups):
            texts = parquet.read_row_group(group, columns=[column]).column(0).to_pylist()
            pool.release_unused()
            for text in texts:
                yield {column: text}


def _open_hub(source: str, revision: str | None):
    import datasets

    name, config, split = parse_hub(source)
    require_hub(name, "dataset")
    try:
        return datasets.load_dataset(name, config, split=split or "train", revision=revision,
                                     streaming=True)
    except ValueError as exc:
        raise ConfigError(f"hub dataset '{source}': {first_line(exc)}",
                          hint="name the config and split as --data NAME:CONFIG:SPLIT (or NAME::SPLIT)") from None


def stream_texts(stream, text_field: str, source: str) -> Iterator[str]:
    """The texts of the stream in order (None as empty), a failure mid-stream (a malformed line, a corrupt shard)
    one DataError naming the source."""
    iterator = iter(stream)
    while True:
        try:
            row = next(iterator)
        except StopIteration:
            return
        except Exception as exc:   # pyarrow's and the builders' many error types
            cause = exc.__cause__ or exc
            raise DataError(f"{source}: the stream failed: {first_line(cause)}",
                            hint="fix or remove the bad file or record") from None
        value = row.get(text_field)
        yield "" if value is None else value if isinstance(value, str) else str(value)
