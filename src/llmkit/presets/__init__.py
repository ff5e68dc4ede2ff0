"""Presets shipped with llmkit: llmkit/presets/<kind>/<name>.yaml|json, read through importlib.resources.

The files beside this module are the presets (package data in the wheel); this module is their loader.
"""

from __future__ import annotations

import difflib
import json
from importlib import resources
from typing import Any

from llmkit.errors import ConfigError

_SUFFIXES = (".yaml", ".yml", ".json")


def _kind_dir(kind: str):
    return resources.files(__name__).joinpath(kind)


def list_kinds() -> list[str]:
    root = resources.files(__name__)
    return sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith(("_", ".")))


def list_presets(kind: str) -> list[str]:
    directory = _kind_dir(kind)
    if not directory.is_dir():
        return []
    return sorted(p.name.rsplit(".", 1)[0] for p in directory.iterdir() if p.name.endswith(_SUFFIXES))


def preset_text(kind: str, name: str) -> str:
    directory = _kind_dir(kind)
    for suffix in _SUFFIXES:
        candidate = directory.joinpath(name + suffix)
        if candidate.is_file():
            return candidate.read_text(encoding="utf-8")
    available = list_presets(kind)
    close = difflib.get_close_matches(name, available, n=3, cutoff=0.5)
    hint = f"did you mean {', '.join(close)}?" if close else f"available: {', '.join(available) or 'none'}"
    raise ConfigError(f"unknown {kind} preset '{name}'", hint=hint)


def load_preset(kind: str, name: str) -> dict[str, Any]:
    import yaml

    text = preset_text(kind, name)
    data = json.loads(text) if text.lstrip().startswith("{") else yaml.safe_load(text)
    if not isinstance(data, dict):
        raise ConfigError(f"preset {kind}/{name} is not a mapping", hint="this is a bug in llmkit; please report it")
    return data
