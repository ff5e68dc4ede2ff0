"""Read datasets from jsonl, json, csv, parquet, txt, saved `datasets` dirs and hub names, with errors that say where.

Two entry points: `read_text_column` (a list of strings, the fast path for tokenizing) and `load_table` (a
`datasets.Dataset`, for the training commands).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from llmkit.errors import ConfigError, DataError
from llmkit.hub import in_hub_cache, looks_like_local_path, require_hub

FILE_KINDS = {".jsonl": "jsonl", ".ndjson": "jsonl", ".json": "json", ".csv": "csv", ".parquet": "parquet",
              ".txt": "txt", ".text": "txt", ".md": "txt"}
SUPPORTED = "jsonl, json, csv, parquet, txt, a saved datasets dir, or a hub dataset name"


def source_kind(source: str) -> str:
    path = Path(source).expanduser()
    if path.is_dir():
        if (path / "dataset_info.json").exists() or (path / "state.json").exists() or (path / "dataset_dict.json").exists():
            return "saved"
        raise DataError(f"{source} is a directory but not a saved `datasets` dataset (no dataset_info.json)",
                        hint=f"pass a file ({SUPPORTED}) or a directory written by `llmkit tokenize dataset`")
    if path.exists():
        kind = FILE_KINDS.get(path.suffix.lower())
        if kind is None:
            raise DataError(f"{source}: unsupported file type '{path.suffix or '(none)'}'", hint=f"supported: {SUPPORTED}")
        return kind
    if looks_like_local_path(source) or Path(source).suffix.lower() in FILE_KINDS:
        raise DataError(f"no such file or directory: {source}", hint="check the path given to --data")
    return "hub"


def read_text_file(path: Path) -> str:
    raw = path.read_bytes()
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
    rows = []
    for number, line in enumerate(read_text_file(path).splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise DataError(f"{path}:{number}: invalid JSON: {exc.msg} (column {exc.colno})",
                            hint="each line of a .jsonl file must be one JSON object") from None
        if not isinstance(row, dict):
            raise DataError(f"{path}:{number}: expected a JSON object, got {type(row).__name__}",
                            hint="each line of a .jsonl file must be one JSON object")
        rows.append(row)
    return rows


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


def read_text_column(source: str, field: str = "text") -> list[str]:
    """Every value of one text field, as Python strings. Non-string values are an error naming the record."""
    kind = source_kind(source)
    path = Path(source).expanduser()
    if kind in ("jsonl", "json", "txt"):
        rows = {"jsonl": read_jsonl, "json": read_json, "txt": read_txt}[kind](path)
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
    table = load_table(source)
    _check_field(list(table.column_names), field, source)
    return [str(v) for v in table[field]]


def load_table(source: str, split: str | None = None):
    """Any supported source as one `datasets.Dataset`."""
    import datasets

    kind = source_kind(source)
    path = Path(source).expanduser()
    if kind in ("jsonl", "json", "txt"):
        rows = {"jsonl": read_jsonl, "json": read_json, "txt": read_txt}[kind](path)
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
            raise DataError(f"cannot read {source} as {kind}: {str(exc).splitlines()[0]}",
                            hint=f"check that it is a valid {kind} file") from None
        if len(table) == 0:
            raise DataError(f"{source} holds no records", hint="give a file with at least one record")
        return table
    if kind == "saved":
        loaded = datasets.load_from_disk(str(path))
        return _pick_split(loaded, split, source)
    if not in_hub_cache(source, "dataset"):
        require_hub(source, "dataset")
    try:
        loaded = datasets.load_dataset(source)
    except Exception as exc:
        raise DataError(f"cannot load hub dataset '{source}': {str(exc).splitlines()[0]}",
                        hint="check the dataset name, or pass a local file") from None
    return _pick_split(loaded, split, source)


def _pick_split(loaded, split: str | None, source: str):
    import datasets

    if isinstance(loaded, datasets.DatasetDict):
        names = list(loaded)
        chosen = split or ("train" if "train" in names else names[0])
        if chosen not in loaded:
            raise ConfigError(f"{source} has no split '{chosen}'; splits: {', '.join(names)}", hint="choose a split")
        return loaded[chosen]
    return loaded
