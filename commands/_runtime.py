"""What every command shares: error handling and exit codes, config building, JSON and rich output."""

import dataclasses
import functools
import json
import os
import sys
import traceback
from pathlib import Path
from typing import Any, Optional

import typer

from llmkit.errors import EXIT_INTERRUPTED, ConfigError, LlmkitError


def cli_command(fn):
    """Map LlmkitError to `Error:`/`Hint:` lines and its exit code, and Ctrl-C to exit 130; never a traceback."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        json_mode = bool(kwargs.get("json_", False))
        try:
            return fn(*args, **kwargs)
        except LlmkitError as exc:
            if os.environ.get("LLMKIT_DEBUG", "") not in ("", "0"):
                traceback.print_exc()
            report_error(exc, json_mode)
            raise typer.Exit(exc.exit_code) from None
        except KeyboardInterrupt:
            if json_mode:
                print(json.dumps({"error": "interrupted", "exit_code": EXIT_INTERRUPTED}), file=sys.stderr)
            else:
                print("Interrupted.", file=sys.stderr)
            raise typer.Exit(EXIT_INTERRUPTED) from None

    return wrapper


def report_error(exc: LlmkitError, json_mode: bool) -> None:
    if json_mode:
        payload = {"error": exc.message, "hint": exc.hint, "exit_code": exc.exit_code}
        print(json.dumps(payload, ensure_ascii=False), file=sys.stderr)
        return
    print(f"Error: {exc.message}", file=sys.stderr)
    if exc.hint:
        print(f"Hint: {exc.hint}", file=sys.stderr)


def build_config(cls, preset: Optional[str], config_file: Optional[Path], overrides: dict[str, Any],
                 print_config: bool = False, json_mode: bool = False):
    """Resolve the config; with --print-config, print it and stop."""
    from llmkit.configio import dump_yaml, resolve, to_dict

    cfg = resolve(cls, preset=preset, file=config_file, overrides=overrides)
    if print_config:
        if json_mode:
            emit_json(to_dict(cfg))
        else:
            sys.stdout.write(dump_yaml(cfg))
        raise typer.Exit(0)
    return cfg


def to_jsonable(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {k: to_jsonable(v) for k, v in dataclasses.asdict(value).items()}
    if isinstance(value, dict):
        return {str(k): to_jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_jsonable(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    return value


def emit_json(value: Any) -> None:
    sys.stdout.write(json.dumps(to_jsonable(value), ensure_ascii=False) + "\n")
    sys.stdout.flush()


def console():
    from rich.console import Console

    return Console(highlight=False, soft_wrap=False)


def reporter(json_mode: bool):
    from llmkit.ui import reporter_for

    return reporter_for(json_mode)


def examples(*lines: str) -> str:
    """The epilog every command's --help ends with: real example command lines."""
    return "Examples:\n\n" + "\n\n".join(f"  $ {line}" for line in lines)


def comma_list(text: Optional[str], flag: str, kind=str) -> Optional[list]:
    """`--flag a,b,c` as a list (None when not given). Text items keep their spaces: " " can be a token."""
    if text is None:
        return None
    parts = [p for p in text.split(",") if (p if kind is str else p.strip())]
    try:
        return [kind(p) for p in parts]
    except ValueError:
        what = "integers" if kind is int else "numbers"
        raise ConfigError(f"{flag} must be comma-separated {what} (got {text!r})",
                                hint=f"e.g. {flag} 1,2,3") from None
