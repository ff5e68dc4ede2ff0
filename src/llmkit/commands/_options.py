"""Option aliases shared by every command, so each flag means the same thing everywhere."""

from pathlib import Path
from typing import Annotated, Optional

import typer


JsonOpt = Annotated[bool, typer.Option("--json", help="Print exactly one JSON document on stdout; logs go to stderr.")]
ConfigOpt = Annotated[Optional[Path], typer.Option(
    "--config", help="YAML/JSON file of settings (keys are the long flag names). Flags override it.",
    show_default=False)]
PresetOpt = Annotated[Optional[str], typer.Option(
    "--preset", help="A shipped preset (see `llmkit presets`). The config file and flags override it.",
    show_default=False)]
PrintConfigOpt = Annotated[bool, typer.Option(
    "--print-config", help="Print the resolved configuration and exit without doing anything.")]


# ------------------------------------------------------------------------- options generated from config blocks

def _cli_type(hint):
    """The type a flag parses to: the config's own scalar type; choices and comma lists arrive as text and are
    checked and split by the config resolver (one set of messages for flags, presets and files). A repeatable or
    positional list's items parse to their own type."""
    import types
    import typing

    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        return _cli_type(next(a for a in args if a is not type(None)))
    if origin is typing.Literal:
        return int if all(isinstance(a, int) for a in args) else str
    if origin in (tuple, list):
        return str
    return hint if hint in (bool, int, float, str) else str


def _help_text(meta: dict, hint, default) -> str:
    import typing

    text = meta["help"]
    literal = next((h for h in (hint, *typing.get_args(hint)) if typing.get_origin(h) is typing.Literal), None)
    if literal is not None and " | " not in text:
        lead = text[0].lower() if text[1:2].islower() else text[0]   # "The run" -> "the run"; keep "DeepSpeed"
        text = " | ".join(map(str, typing.get_args(literal))) + ": " + lead + text[1:]
    if default not in (None, False, "", ()) and "default" not in text:
        shown = ",".join(default) if isinstance(default, tuple) else str(default)
        if isinstance(default, float):
            shown = f"{default:g}" if default == 0 or abs(default) >= 1e-3 else f"{default:.0e}".replace("e-0", "e-")
        text = f"{text[:-1]} (default {shown})." if text.endswith(".") else f"{text} (default {shown})"
    return text


def _panel(cls, name: str, meta: dict) -> Optional[str]:
    """The field's own panel, else the PANEL of the first block (base-most class) that declares the field, else
    that of the nearest block that includes that one: a block without a panel (trust-remote-code, the device)
    shows where the command puts it."""
    if meta.get("panel"):
        return meta["panel"]
    blocks = cls.__mro__[::-1]
    owner = next(klass for klass in blocks if name in vars(klass).get("__annotations__", {}))
    return next((vars(klass)["PANEL"] for klass in blocks if issubclass(klass, owner) and "PANEL" in vars(klass)),
                None)


def _declarations(name: str, meta: dict) -> list[str]:
    """The flag (with its off form), its other names and its short form, as typer.Option takes them."""
    flag = meta.get("flag") or "--" + name.replace("_", "-")
    negatable = meta.get("negatable")
    off = negatable if isinstance(negatable, str) else "--no-" + flag[2:]
    return [f"{flag}/{off}" if negatable else flag, *meta.get("aliases", ()), *filter(None, [meta.get("short")])]


def config_parameters(cls, skip: tuple[str, ...] = ()) -> list:
    """One keyword parameter per field of config dataclass `cls` (declared with llmkit.config.opt), in field order:
    `Annotated[Optional[T], typer.Option(...)] = None`, so "not given" stays None and the dataclass holds the
    default."""
    import dataclasses
    import inspect
    import typing

    hints = typing.get_type_hints(cls)
    parameters = []
    for f in dataclasses.fields(cls):
        if not f.init or f.name in skip:
            continue
        meta = dict(f.metadata)
        if "help" not in meta:
            raise TypeError(f"{cls.__name__}.{f.name} has no help: declare it with llmkit.config.opt()")
        hint = hints[f.name]
        settings = dict(help=_help_text(meta, hint, f.default), show_default=False,
                        rich_help_panel=_panel(cls, f.name, meta))
        if meta.get("positional"):
            parameter = typer.Argument(**settings)
        else:
            parameter = typer.Option(*_declarations(f.name, meta), **settings)
        if meta.get("repeatable") or meta.get("positional"):
            cli_type = list[_cli_type(typing.get_args(hint)[0])]
        else:
            cli_type = Path if meta.get("path") else _cli_type(hint)
        parameters.append(inspect.Parameter(f.name, inspect.Parameter.KEYWORD_ONLY, default=None,
                                            annotation=Annotated[Optional[cli_type], parameter]))
    return parameters


def _as_given(value):
    """A parsed flag as the resolver takes it: a path as text, a repeatable flag given no times as not given."""
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, list) and not value:
        return None
    return value


def config_command(cls, *, skip: tuple[str, ...] = (), extra: tuple = ()):
    """Turn `body(cfg, out, **extra)` into a command whose options are `cls`'s fields plus --preset, --config,
    --print-config and --json: the flags given are resolved over preset < file < flags into a `cls`, and the body
    gets the config, the Output for --json or people, and the `extra` parameters (inspect.Parameters that come
    first: a typer.Context, arguments)."""
    import inspect

    from llmkit.commands._runtime import Output, build_config

    common = [inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=default, annotation=annotation)
              for name, annotation, default in (("preset", PresetOpt, None), ("config", ConfigOpt, None),
                                                ("print_config", PrintConfigOpt, False), ("json_", JsonOpt, False))]

    def decorate(body):
        def command(**values):
            preset, config, print_config, json_ = (values.pop(k) for k in ("preset", "config", "print_config",
                                                                           "json_"))
            passed = {p.name: values.pop(p.name) for p in extra}
            overrides = {k: _as_given(v) for k, v in values.items()}
            cfg = build_config(cls, preset, config, overrides, print_config, json_)
            from llmkit.preflight import check_sources

            check_sources(cfg)   # a mistyped local path fails now, before any heavy import
            out = Output(json_)
            with out.json_only_stdout():
                return body(cfg, out, **passed)

        command.__signature__ = inspect.Signature(list(extra) + config_parameters(cls, skip) + common)
        command.__name__, command.__doc__ = body.__name__, body.__doc__
        command.config_class = cls   # what the command resolves (tests walk every command's fields)
        return command

    return decorate
