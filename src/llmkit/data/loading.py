"""Read datasets from jsonl, json, csv, parquet, txt (jsonl, json, csv and txt also gzip- or zstd-compressed),
directories and globs of shards, saved `datasets` dirs, hub datasets (`name`, `name:config`, `name:config:split`,
`name::split`) and mixes of them (llmkit.data.sources), with errors that say where.

Two entry points: `read_text_column` (a list of strings, the fast path for tokenizing) and `load_table` (a
`datasets.Dataset`, for the training commands). A single file is read here (so a bad line is named by its number);
a shard set goes through `datasets`' own json / parquet / csv builders, and when they fail each shard is checked
alone to name the corrupt one or the columns that differ.
"""

from __future__ import annotations

import contextlib
import glob
import json
import logging
import os
import re
from pathlib import Path
from typing import Any

from llmkit.data import sources as data_sources
from llmkit.data.sources import COMPRESSIONS, GLOB_CHARS, file_kind, has_data_suffix
from llmkit.errors import ConfigError, DataError, LlmkitError
from llmkit.hub import in_hub_cache, looks_like_local_path, require_hub

SHARD_BUILDERS = {"jsonl": "json", "json": "json", "parquet": "parquet", "csv": "csv"}   # `datasets` builders
SUPPORTED = ("jsonl, json, csv, parquet, txt (text files also .gz or .zst), a directory or glob of shards, a saved "
             "datasets dir, or a hub dataset name")


def _is_saved_dataset(path: Path) -> bool:
    return any((path / marker).exists() for marker in ("dataset_info.json", "state.json", "dataset_dict.json"))


def source_kind(source: str) -> str:
    path = Path(source).expanduser()
    if path.is_dir():
        if _is_saved_dataset(path):
            return "saved"
        if any(file_kind(p) for p in _files_under(path)):
            return "shards"
        raise DataError(f"{source} is a directory but not a saved `datasets` dataset (no dataset_info.json) and "
                        "holds no data files", hint=f"pass a file or a directory of shards ({SUPPORTED})")
    if path.exists():
        if file_kind(path) is None:
            suffix = "".join(path.suffixes[-2:]) or "(none)"
            raise DataError(f"{source}: unsupported file type '{suffix}'", hint=f"supported: {SUPPORTED}")
        return file_kind(path)
    if data_sources.is_mix(source):
        return "mix"
    if GLOB_CHARS.search(source):
        return "shards"
    if looks_like_local_path(source) or has_data_suffix(source):
        raise DataError(f"no such file or directory: {source}", hint="check the path given to --data")
    return "hub"


# ---------------------------------------------------------------------------------------------- single files

def _decompressed(path: Path, raw: bytes) -> bytes:
    compression = COMPRESSIONS.get(path.suffix.lower())
    if compression is None:
        return raw
    try:
        if compression == "gzip":
            import gzip

            return gzip.decompress(raw)
        return _zstd_decompressed(raw)
    except Exception as exc:   # gzip.BadGzipFile, EOFError, zlib.error, zstandard.ZstdError
        raise DataError(f"{path} is not a valid {compression} file: {first_line(exc)}",
                        hint="check the file (a truncated download?), or decompress it and pass the plain file") from None


def _zstd_decompressed(raw: bytes) -> bytes:
    """Every frame of a .zst file; a truncated one is an error (zstandard's stream reader returns what it got)."""
    import zstandard

    out, context = [], zstandard.ZstdDecompressor()
    while raw:
        frame = context.decompressobj()
        out.append(frame.decompress(raw))
        if not frame.eof:
            raise EOFError("the file ends inside a zstd frame")
        raw = frame.unused_data
    return b"".join(out)


def read_text_file(path: Path) -> str:
    raw = _decompressed(path, path.read_bytes())
    if not raw.strip():
        raise DataError(f"{path} is empty", hint="give a file with at least one record")
    if b"\x00" in raw[:65536]:
        raise DataError(f"{path} looks binary, not text (it contains NUL bytes)", hint=f"supported: {SUPPORTED}")
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        raise DataError(f"{path}:{line}: not valid UTF-8 text (byte 0x{raw[exc.start]:02x} at offset {exc.start})",
                        hint="convert the file to UTF-8 (for example with iconv)") from None


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    return [jsonl_record(path, number, line)
            for number, line in enumerate(read_text_file(path).splitlines(), start=1) if line.strip()]


def jsonl_record(path: Path, number: int, line: str) -> dict[str, Any]:
    """Line `number` of a jsonl file as its JSON object (llmkit.data.sft_store parses a file's lines in workers)."""
    try:
        row = json.loads(line)
    except json.JSONDecodeError as exc:
        raise DataError(f"{path}:{number}: invalid JSON: {exc.msg} (column {exc.colno})",
                        hint="each line of a .jsonl file must be one JSON object") from None
    if not isinstance(row, dict):
        raise DataError(f"{path}:{number}: expected a JSON object, got {type(row).__name__}",
                        hint="each line of a .jsonl file must be one JSON object")
    return row


def read_json(path: Path) -> list[dict[str, Any]]:
    try:
        data = json.loads(read_text_file(path))
    except json.JSONDecodeError as exc:
        raise DataError(f"{path}:{exc.lineno}: invalid JSON: {exc.msg} (column {exc.colno})",
                        hint="a .json file must hold a list of objects (use .jsonl for one object per line)") from None
    if isinstance(data, dict):
        lists = [v for v in data.values() if isinstance(v, list)]
        if len(lists) == 1:  # {"data": [...]} style
            data = lists[0]
    if not isinstance(data, list) or not all(isinstance(r, dict) for r in data):
        raise DataError(f"{path}: expected a list of JSON objects", hint="write [{...}, {...}] or use .jsonl")
    return data


def read_txt(path: Path) -> list[dict[str, Any]]:
    """One record per non-empty line, in a field called `text`."""
    return [{"text": line} for line in read_text_file(path).splitlines() if line.strip()]


def _check_field(rows_or_columns: list[str], field: str, source: str) -> None:
    if field not in rows_or_columns:
        found = ", ".join(rows_or_columns) or "none"
        raise DataError(f"{source} has no field '{field}'; fields found: {found}",
                          hint="choose one with --text-field")


READERS = {"jsonl": read_jsonl, "json": read_json, "txt": read_txt}


def read_text_column(source: str, field: str = "text", revision: str | None = None) -> list[str]:
    """Every value of one text field, as Python strings. Non-string values are an error naming the record."""
    kind = source_kind(source)
    if kind in READERS:
        rows = READERS[kind](Path(source).expanduser())
        if not rows:
            raise DataError(f"{source} holds no records", hint="give a file with at least one record")
        texts = []
        for number, row in enumerate(rows, start=1):
            if field not in row:
                if number == 1:
                    _check_field(list(row), field, source)
                raise DataError(f"{source}: record {number} has no field '{field}'",
                                hint="every record needs the text field")
            value = row[field]
            if not isinstance(value, str):
                raise DataError(f"{source}: record {number}: field '{field}' is {type(value).__name__}, not text",
                                hint="choose a text field with --text-field")
            texts.append(value)
        return texts
    table = load_table(source, revision=revision)
    _check_field(list(table.column_names), field, source)
    return [str(v) for v in table[field]]


def read_records(source: str, revision: str | None = None) -> list[dict[str, Any]]:
    """Every record of `source` as a dict. JSON files are read as written, not through an Arrow table: Arrow
    refuses a column whose values differ in shape (text in some messages, content parts in others)."""
    kind = source_kind(source)
    records = READERS[kind](Path(source).expanduser()) if kind in READERS else \
        load_table(source, revision=revision).to_list()
    if not records:
        raise DataError(f"{source} holds no records", hint="give a file with at least one record")
    return records


def load_table(source: str, split: str | None = None, revision: str | None = None, seed: int = 0):
    """Any supported source (or a mix spec: llmkit.data.sources) as one `datasets.Dataset`."""
    import datasets

    kind = source_kind(source)
    path = Path(source).expanduser()
    if kind == "mix":
        return load_mixed(source, split=split, revision=revision, seed=seed).table
    if kind in READERS:
        rows = READERS[kind](path)
        if not rows:
            raise DataError(f"{source} holds no records", hint="give a file with at least one record")
        return datasets.Dataset.from_list(rows)
    if kind in ("csv", "parquet"):
        if path.stat().st_size == 0:
            raise DataError(f"{source} is empty", hint="give a file with at least one record")
        if kind == "csv":
            read_text_file(path)  # catches binary and encoding problems with a clear message
        try:
            table = datasets.Dataset.from_csv(str(path)) if kind == "csv" else datasets.Dataset.from_parquet(str(path))
        except Exception as exc:  # pyarrow raises many types for a malformed file
            raise DataError(f"cannot read {source} as {kind}: {first_line(exc)}",
                            hint=f"check that it is a valid {kind} file") from None
        return _non_empty(table, source)
    if kind == "saved":
        loaded = datasets.load_from_disk(str(path))
        return _pick_split(loaded, split, source)
    if kind == "shards":
        return _load_shards(source)
    return _load_hub(source, split, revision)


@contextlib.contextmanager
def quiet_datasets():
    """No progress bars or log lines from `datasets` while it loads: llmkit reports, and names the failures."""
    import datasets

    logger = logging.getLogger("datasets")
    level, bars = logger.level, datasets.is_progress_bar_enabled()
    logger.setLevel(logging.CRITICAL)
    datasets.disable_progress_bars()
    try:
        yield
    finally:
        logger.setLevel(level)
        if bars:
            datasets.enable_progress_bars()


def load_mixed(spec: str, split: str | None = None, revision: str | None = None,
               seed: int = 0) -> data_sources.Mixed:
    """Every source of `spec` loaded and mixed (llmkit.data.sources.mix)."""
    sources = data_sources.parse_spec(spec)
    tables = [load_table(s.name, split=split, revision=revision) for s in sources]
    weights = [s.weight for s in sources] if sources[0].weight is not None else None
    return data_sources.mix(tables, weights, seed, [s.name for s in sources])


def first_line(exc: BaseException) -> str:
    return (str(exc).splitlines() or [type(exc).__name__])[0]


def _non_empty(table, source: str):
    if len(table) == 0:
        raise DataError(f"{source} holds no records", hint="give a file with at least one record")
    return table


def _pick_split(loaded, split: str | None, source: str):
    import datasets

    if isinstance(loaded, datasets.DatasetDict):
        names = list(loaded)
        chosen = split or ("train" if "train" in names else names[0])
        if chosen not in loaded:
            raise ConfigError(f"{source} has no split '{chosen}'; splits: {', '.join(names)}", hint="choose a split")
        return loaded[chosen]
    return loaded


# ---------------------------------------------------------------------------------------------------- shards

def _files_under(directory: Path) -> list[Path]:
    return sorted(p for p in directory.rglob("*") if p.is_file()
                  and not any(part.startswith(".") for part in p.relative_to(directory).parts))


def shard_files(source: str) -> list[Path]:
    """The data files of a directory (all of them, recursively) or a glob, sorted; one file kind for them all."""
    path = Path(source).expanduser()
    if path.is_dir():
        files = [p for p in _files_under(path) if file_kind(p)]
    else:
        files = sorted(Path(p) for p in glob.glob(os.path.expanduser(source), recursive=True) if Path(p).is_file())
        if not files:
            raise DataError(f"{source} matches no file", hint="check the pattern (quote it, or the shell expands it)")
        unsupported = [p for p in files if file_kind(p) is None]
        if unsupported:
            raise DataError(f"{source} matches {unsupported[0]}, which is not a data file",
                            hint=f"narrow the pattern to data files ({SUPPORTED})")
    builders = {SHARD_BUILDERS.get(file_kind(p)) for p in files}
    if None in builders:
        txt = next(p for p in files if SHARD_BUILDERS.get(file_kind(p)) is None)
        raise DataError(f"{source}: {txt} is a plain-text shard; shard sets are parquet, jsonl, json or csv files",
                        hint="convert the text shards to jsonl ({\"text\": ...} per line), or pass one file")
    if len(builders) > 1:
        kinds = sorted({file_kind(p) for p in files})
        raise DataError(f"{source} mixes shard types ({', '.join(kinds)})",
                        hint="pass one type per source; mix types with --data a/*.parquet,b/*.jsonl")
    return files


def _load_shards(source: str):
    import datasets

    files = shard_files(source)
    builder = SHARD_BUILDERS[file_kind(files[0])]
    try:
        with quiet_datasets():
            table = datasets.load_dataset(builder, data_files=[str(p) for p in files], split="train")
    except Exception as exc:   # DatasetGenerationError around pyarrow's and the decompressors' errors
        raise _shard_problem(source, files, builder, exc) from None
    return _non_empty(table, source)


def _shard_problem(source: str, files: list[Path], builder: str, exc: BaseException) -> LlmkitError:
    """The error that names the shard at fault: one that fails on its own (a bad line, a corrupt or empty file), or
    the shards whose columns differ from the first one's."""
    import datasets

    schemas = {}
    for path in files:
        kind = file_kind(path)
        if kind in READERS and path.stat().st_size:
            READERS[kind](path)   # raises with the line of a bad record, or a decompression error
        try:
            with quiet_datasets():
                schemas[path] = datasets.load_dataset(builder, data_files=[str(path)], split="train").features
        except Exception as alone:
            return DataError(f"{source}: the shard {path} cannot be read as {kind}: "
                             f"{first_line(alone.__cause__ or alone)}",
                             hint="fix or remove that shard")
    first = files[0]
    differing = [f"{path.name} {_schema_difference(schemas[first], schemas[path])}"
                 for path in files[1:] if schemas[path] != schemas[first]]
    if differing:
        columns = ", ".join(f"{name}: {_dtype(feature)}" for name, feature in schemas[first].items())
        return DataError(f"{source}: the shards do not share one schema: {first.name} has ({columns}); "
                         f"{'; '.join(differing)}",
                         hint="give every shard the same columns and types, or pass the sets as separate sources "
                              "of a mix")
    return DataError(f"cannot read {source}: {first_line(exc.__cause__ or exc)}",
                     hint="check the shards")


def _dtype(feature) -> str:
    return str(getattr(feature, "dtype", feature))


def _schema_difference(first, other) -> str:
    parts = []
    missing = [c for c in first if c not in other]
    extra = [c for c in other if c not in first]
    retyped = [f"{c} ({_dtype(other[c])}, not {_dtype(first[c])})" for c in first if c in other and other[c] != first[c]]
    if missing:
        parts.append(f"lacks {', '.join(missing)}")
    if extra:
        parts.append(f"adds {', '.join(extra)}")
    if retyped:
        parts.append(f"types {', '.join(retyped)}")
    return ", ".join(parts)


# ------------------------------------------------------------------------------------------------------- hub

def parse_hub(source: str) -> tuple[str, str | None, str | None]:
    """`name`, `name:config`, `name:config:split` or `name::split` as (name, config, split)."""
    name, _, rest = source.partition(":")
    config, _, split = rest.partition(":")
    return name, config or None, split or None


def _snake_case(name: str) -> str:
    """datasets' camelcase_to_snakecase, which names its cache dirs (importing datasets costs seconds)."""
    name = re.sub(r"([A-Z]+)([A-Z][a-z])", r"\1_\2", name)
    return re.sub(r"([a-z\d])([A-Z])", r"\1_\2", name).lower()


def in_datasets_cache(name: str) -> bool:
    """Whether `datasets`' own cache holds a prepared copy of hub dataset `name` (it loads that offline)."""
    from huggingface_hub import constants

    root = Path(os.environ.get("HF_DATASETS_CACHE") or Path(constants.HF_HOME) / "datasets").expanduser()
    *namespace, dataset = name.split("/")
    entry = root / "___".join([*namespace, _snake_case(dataset)])
    return any(p.is_dir() for p in entry.glob("*/*/*"))


def hub_dataset_cached(name: str) -> bool:
    """A hub dataset that loads with no network: in the hub cache or in datasets' cache."""
    return in_hub_cache(name, "dataset") or in_datasets_cache(name)


def _load_hub(source: str, split: str | None, revision: str | None):
    import datasets

    name, config, named_split = parse_hub(source)
    if not hub_dataset_cached(name):
        require_hub(name, "dataset")
    try:
        with quiet_datasets():
            loaded = datasets.load_dataset(name, config, split=named_split, revision=revision)
    except Exception as exc:
        text = "; ".join(line.strip() for line in str(exc).splitlines() if line.strip())
        if isinstance(exc, ValueError) and re.search(r"config|split", text, re.IGNORECASE):
            # an unknown config or split, or several configs and none chosen: the spec is wrong
            raise ConfigError(f"hub dataset '{source}': {text}",
                              hint="name the config and split as --data NAME:CONFIG:SPLIT (or NAME::SPLIT)") from None
        raise DataError(f"cannot load hub dataset '{source}': {first_line(exc)}",
                        hint="check the dataset name, or pass a local file") from None
    return _non_empty(_pick_split(loaded, split, source), source)
