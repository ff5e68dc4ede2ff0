"""Input checks that need no heavy library, run before any is imported: a local path a config names (a model,
tokenizer, adapter or data file) must exist, and a hub id must be in the HF cache or the hub must answer. A typo
in -m used to cost the seconds torch and transformers take to import before it was reported; now it is reported
at once, with the same message the loaders give."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from llmkit.errors import DataError, ModelLoadError
from llmkit.hub import in_hub_cache, looks_like_local_path, require_hub

def _flag(field: dataclasses.Field) -> str:
    return field.metadata.get("flag") or "--" + field.name.replace("_", "-")


def _looks_local(kind: str, value: str) -> bool:
    if looks_like_local_path(value):
        return True
    if kind == "data":   # a bare file name with a data suffix is a file, not a hub dataset
        from llmkit.data.loading import has_data_suffix

        return has_data_suffix(value)
    return False


def _check_hub_id(kind: str, name: str) -> None:
    """A hub id loads from the HF cache, or from the hub when it answers; llmkit's model presets are neither."""
    from llmkit import presets

    if kind == "model" and name in presets.list_presets("models"):
        return
    if kind == "data":
        from llmkit.data.loading import hub_dataset_cached, parse_hub

        name = parse_hub(name)[0]
        if not hub_dataset_cached(name):
            require_hub(name, "dataset")
    elif not in_hub_cache(name, "model"):
        require_hub(name, kind)


def _items(kind: str, value) -> list[str]:
    """The sources a field names: a data field's value is a spec (llmkit.data.sources), weights stripped."""
    values = value if isinstance(value, (tuple, list)) else (value,)
    if kind != "data":
        return list(values)
    from llmkit.data.sources import parse_spec

    return [source.name for text in values for source in parse_spec(text)]


def _is_glob(item: str) -> bool:
    from llmkit.data.loading import GLOB_CHARS

    return not Path(item).expanduser().exists() and bool(GLOB_CHARS.search(item))


def check_sources(cfg) -> None:
    """Raise the loader's own error for the first source of `cfg` (fields declared with `source=`) that cannot
    load: a local path that does not exist, a glob that matches no data file, or a hub id neither cached nor
    reachable. A data field is a spec: each source of a mix is checked."""
    for field in dataclasses.fields(cfg):
        kind = field.metadata.get("source")
        value = getattr(cfg, field.name)
        if not kind or not value:
            continue
        for item in _items(kind, value):
            if kind == "data" and _is_glob(item):
                from llmkit.data.loading import shard_files

                shard_files(item)   # the glob must match data files
                continue
            if not _looks_local(kind, item):
                _check_hub_id(kind, item)
                continue
            if Path(item).expanduser().exists():
                continue
            if kind == "data":
                raise DataError(f"no such file or directory: {item}", hint=f"check the path given to {_flag(field)}")
            what = "config file" if kind == "model" and Path(item).suffix in (".json", ".yaml", ".yml") else "directory"
            raise ModelLoadError(f"no such {kind} {what}: {item}", hint=f"check the path given to {_flag(field)}")
