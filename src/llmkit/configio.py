"""Resolve a command's config: defaults < preset < YAML file < CLI flags.

Unknown keys are rejected with a "did you mean" hint, and every problem is reported at once rather than one per run.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import math
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

from llmkit.errors import ConfigError

C = TypeVar("C")


def flag_name(field_name: str) -> str:
    return "--" + field_name.replace("_", "-")


def resolve(cls: type[C], preset: str | None = None, file: str | Path | None = None,
            overrides: dict[str, Any] | None = None) -> C:
    """Build `cls` from its defaults, then a shipped preset, then a YAML/JSON file, then CLI flags (None = not given)."""
    from llmkit import presets

    fields = {f.name: f for f in dataclasses.fields(cls)}
    hints = typing.get_type_hints(cls)
    problems: list[str] = []
    values: dict[str, Any] = {}

    layers: list[tuple[str, dict[str, Any]]] = []
    if preset:
        kind = getattr(cls, "preset_kind", None)
        if kind is None:
            raise ConfigError("this command has no presets", hint="drop --preset")
        layers.append((f"preset '{preset}'", presets.load_preset(kind, preset)))
    if file:
        layers.append((f"config file {file}", load_config_file(file)))
    if overrides:
        layers.append(("flags", {k: _from_flag(fields.get(k), v) for k, v in overrides.items() if v is not None}))

    for source, layer in layers:
        for key, value in layer.items():
            name = key.replace("-", "_")
            if name not in fields or not fields[name].init:
                close = difflib.get_close_matches(name, list(fields), n=3, cutoff=0.6)
                suggestion = f" (did you mean {', '.join(repr(c) for c in close)}?)" if close else ""
                problems.append(f"{source}: unknown key '{key}'{suggestion}")
                continue
            try:
                values[name] = _coerce(value, hints[name])
            except (TypeError, ValueError) as exc:
                where = flag_name(name) if source == "flags" else f"{source}: '{key}'"
                problems.append(f"{where}: {exc}")

    try:
        config = cls(**values)
    except ConfigError as exc:
        problems.extend(exc.problems)
        config = None
    except TypeError as exc:  # a required field that nobody gave
        problems.append(str(exc))
        config = None
    if problems:
        raise _combined(problems)
    return config


def _from_flag(field: dataclasses.Field | None, value: Any) -> Any:
    """A flag's value as its field reads flag text (`opt(parse=...)`): each text of a repeatable flag."""
    parse = field.metadata.get("parse") if field is not None else None
    if parse is None:
        return value
    if field.metadata.get("repeatable"):
        return [parse(v) for v in value]
    return parse(value) if isinstance(value, str) else value


def comma_list(text: str | None, flag: str, kind=str) -> list | None:
    """`--flag a,b,c` as a list (None when not given). Text items keep their spaces: " " can be a token."""
    if text is None:
        return None
    parts = [p for p in text.split(",") if (p if kind is str else p.strip())]
    try:
        return [kind(p) for p in parts]
    except ValueError:
        what = "integers" if kind is int else "numbers"
        raise ConfigError(f"{flag} must be comma-separated {what} (got {text!r})", hint=f"e.g. {flag} 1,2,3") from None


def _combined(problems: list[str]) -> ConfigError:
    if len(problems) == 1:
        message = problems[0]
    else:
        message = f"{len(problems)} problems in the configuration:\n  - " + "\n  - ".join(problems)
    return ConfigError(message, hint="see `--help` for the flags and `--print-config` for the resolved values",
                       problems=problems)


def validate(problems: list[str]) -> None:
    """Raise one ConfigError for every problem a config's __post_init__ collected."""
    if problems:
        raise _combined(problems)


def load_config_file(path: str | Path) -> dict[str, Any]:
    import yaml

    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}", hint="check the path given to --config")
    try:
        text = path.read_text(encoding="utf-8")
        data = json.loads(text) if path.suffix.lower() == ".json" else yaml.safe_load(text)
    except json.JSONDecodeError as exc:
        raise ConfigError(f"cannot parse config file {path}: {exc.msg} (line {exc.lineno}, column {exc.colno})",
                          hint="a .json config must be JSON (or name it .yaml)") from None
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ConfigError(f"cannot parse config file {path}: {first}", hint="it must be YAML or JSON") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path} must hold a mapping of keys to values, not {type(data).__name__}",
                          hint="write one `key: value` per line, using the long flag names without dashes")
    return data


def to_dict(config: Any) -> dict[str, Any]:
    """Plain YAML/JSON-safe values, in field order."""
    out = {}
    for f in dataclasses.fields(config):
        value = getattr(config, f.name)
        if isinstance(value, tuple):
            value = list(value)
        elif isinstance(value, Path):
            value = str(value)
        out[f.name] = value
    return out


def dump_yaml(config: Any) -> str:
    import yaml

    return yaml.safe_dump(to_dict(config), sort_keys=False, allow_unicode=True)


def _coerce(value: Any, annotation: Any) -> Any:
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg)
            except (TypeError, ValueError) as exc:
                errors.append(str(exc))
        raise ValueError(errors[0] if errors else f"invalid value {value!r}")
    if origin is typing.Literal:
        if value not in args:
            raise ValueError(f"{value!r} is not one of {', '.join(str(a) for a in args)}")
        return value
    if origin in (tuple, list):
        if isinstance(value, str):
            value = [v.strip() for v in value.split(",") if v.strip()]
        if not isinstance(value, (list, tuple)):
            raise ValueError(f"expected a list, got {value!r}")
        item = args[0] if args else Any
        return tuple(_coerce(v, item) for v in value)
    if annotation is Any:
        return value
    if annotation is bool:
        if isinstance(value, bool):
            return value
        raise ValueError(f"expected true or false, got {value!r}")
    if annotation is int:
        if isinstance(value, bool) or not isinstance(value, int):
            if isinstance(value, float) and value.is_integer():
                return int(value)
            raise ValueError(f"expected an integer, got {value!r}")
        return value
    if annotation is float:
        if isinstance(value, str):   # YAML 1.1 reads 1e-4 (no dot) as text
            try:
                value = float(value)
            except ValueError:
                raise ValueError(f"expected a number, got {value!r}") from None
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ValueError(f"expected a number, got {value!r}")
        if not math.isfinite(value):
            raise ValueError(f"expected a finite number, got {value!r}")
        return float(value)
    if annotation is str:
        if not isinstance(value, (str, Path)):
            raise ValueError(f"expected text, got {value!r}")
        return str(value)
    return value
