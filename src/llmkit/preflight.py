"""Input checks that need no heavy library, run before any is imported: a local path a config names (a model,
tokenizer, adapter or data file) must exist. A typo in -m used to cost the seconds torch and transformers take to
import before it was reported; now it is reported at once, with the same message the loaders give."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from llmkit.errors import DataError, ModelLoadError
from llmkit.hub import looks_like_local_path

def _flag(field: dataclasses.Field) -> str:
    return field.metadata.get("flag") or "--" + field.name.replace("_", "-")


def _looks_local(kind: str, value: str) -> bool:
    if looks_like_local_path(value):
        return True
    if kind == "data":   # a bare file name with a data suffix is a file, not a hub dataset
        from llmkit.data.loading import FILE_KINDS

        return Path(value).suffix.lower() in FILE_KINDS
    return False


def check_sources(cfg) -> None:
    """Raise the loader's own error for the first local source of `cfg` (fields declared with `source=`) that does
    not exist; hub ids are left to the loaders (cache first, then the hub)."""
    for field in dataclasses.fields(cfg):
        kind = field.metadata.get("source")
        value = getattr(cfg, field.name)
        if not kind or not value:
            continue
        for item in value if isinstance(value, (tuple, list)) else (value,):
            if not _looks_local(kind, item) or Path(item).expanduser().exists():
                continue
            if kind == "data":
                raise DataError(f"no such file or directory: {item}", hint=f"check the path given to {_flag(field)}")
            what = "config file" if kind == "model" and Path(item).suffix in (".json", ".yaml", ".yml") else "directory"
            raise ModelLoadError(f"no such {kind} {what}: {item}", hint=f"check the path given to {_flag(field)}")
