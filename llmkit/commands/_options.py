"""Option aliases shared by every command, so each flag means the same thing everywhere."""

from pathlib import Path
from typing import Annotated, Optional

import typer


def option(*names: str, help: str, panel: Optional[str] = None):
    """An option that shows no default: "not given" stays None, and the config dataclass holds the real default."""
    return typer.Option(*names, help=help, show_default=False, rich_help_panel=panel)


JsonOpt = Annotated[bool, typer.Option("--json", help="Print exactly one JSON document on stdout; logs go to stderr.")]
ConfigOpt = Annotated[Optional[Path], typer.Option(
    "--config", help="YAML/JSON file of settings (keys are the long flag names). Flags override it.",
    show_default=False)]
PresetOpt = Annotated[Optional[str], typer.Option(
    "--preset", help="A shipped preset (see `llmkit presets`). The config file and flags override it.",
    show_default=False)]
PrintConfigOpt = Annotated[bool, typer.Option(
    "--print-config", help="Print the resolved configuration and exit without doing anything.")]
OutputDirOpt = Annotated[Optional[Path], typer.Option("--output-dir", "-o", help="Where results are written.",
                                                      show_default=False)]
OverwriteOpt = Annotated[Optional[bool], typer.Option("--overwrite", help="Replace a non-empty --output-dir.",
                                                      show_default=False)]
TokenizerOpt = Annotated[Optional[str], typer.Option(
    "--tokenizer", "-t", help="Tokenizer: a local dir, a tokenizer.json file or a hub id.", show_default=False)]
TrustRemoteCodeOpt = Annotated[Optional[bool], typer.Option(
    "--trust-remote-code", help="Allow a hub repo's own Python code to run (only for authors you trust).",
    show_default=False)]
TextFieldOpt = Annotated[Optional[str], typer.Option("--text-field", help="The field that holds the text.",
                                                     show_default=False)]
SeedOpt = Annotated[Optional[int], typer.Option("--seed", help="Random seed.", show_default=False)]


# ------------------------------------------------------------------------- options generated from config blocks

def _cli_type(hint):
    """The type a flag parses to: the config's own scalar type; choices and comma lists arrive as text and are
    checked and split by the config resolver (one set of messages for flags, presets and files)."""
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
    """The field's own panel, else the PANEL of the first block (base-most class) that declares the field."""
    if meta.get("panel"):
        return meta["panel"]
    for klass in reversed(cls.__mro__):
        if name in vars(klass).get("__annotations__", {}):
            return getattr(klass, "PANEL", None)
    return None


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
        flag = meta.get("flag") or "--" + f.name.replace("_", "-")
        decls = [f"{flag}/--no-{flag[2:]}" if meta.get("negatable") else flag]
        decls += list(meta.get("aliases") or ())
        if meta.get("short"):
            decls.append(meta["short"])
        option = typer.Option(*decls, help=_help_text(meta, hints[f.name], f.default), show_default=False,
                              rich_help_panel=_panel(cls, f.name, meta))
        parameters.append(inspect.Parameter(f.name, inspect.Parameter.KEYWORD_ONLY, default=None,
                                            annotation=Annotated[Optional[_cli_type(hints[f.name])], option]))
    return parameters


def config_command(cls, *, skip: tuple[str, ...] = (), extra: tuple = ()):
    """Turn `body(cfg, json_, **extra)` into a command whose options are `cls`'s fields plus --preset, --config,
    --print-config and --json: the flags given are resolved over preset < file < flags into a `cls`, and the body
    gets the config (and the `extra` parameters, inspect.Parameters that come first: a typer.Context, arguments)."""
    import inspect

    from llmkit.commands._runtime import build_config

    common = [inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=default, annotation=annotation)
              for name, annotation, default in (("preset", PresetOpt, None), ("config", ConfigOpt, None),
                                                ("print_config", PrintConfigOpt, False), ("json_", JsonOpt, False))]

    def decorate(body):
        def command(**values):
            preset, config, print_config, json_ = (values.pop(k) for k in ("preset", "config", "print_config",
                                                                           "json_"))
            passed = {p.name: values.pop(p.name) for p in extra}
            overrides = {k: str(v) if isinstance(v, Path) else v for k, v in values.items()}
            return body(build_config(cls, preset, config, overrides, print_config, json_), json_, **passed)

        command.__signature__ = inspect.Signature(list(extra) + config_parameters(cls, skip) + common)
        command.__name__, command.__doc__ = body.__name__, body.__doc__
        return command

    return decorate
