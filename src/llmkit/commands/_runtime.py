"""What every command shares: error handling and exit codes, config building, JSON and rich output."""

import contextlib
import contextvars
import dataclasses
import functools
import json
import os
import sys
import traceback
from pathlib import Path
from typing import Any, Callable, Optional

import typer

from llmkit.errors import EXIT_INTERRUPTED, ConfigError, LlmkitError

# set while `resolve_command_line` parses a command line: build_config hands the resolved config back instead of
# running the command, and errors propagate to the caller instead of being printed
_RESOLVING = contextvars.ContextVar("llmkit_resolving", default=False)


def resolving() -> bool:
    """Whether a command line is being resolved (resolve_command_line), not run."""
    return _RESOLVING.get()


class _Resolved(Exception):
    def __init__(self, config):
        super().__init__("resolved")
        self.config = config


def resolve_command_line(argv: list[str], root):
    """The resolved config of `llmkit ARGV...` (without the program name), through the command's own parser,
    preset, config file and flag handling -- exactly what `--print-config` would show -- without running it.
    `root` is the `llmkit` click command (`ctx.find_root().command` in a command; `typer.main.get_command(app)`).

    Raises ConfigError for what the command itself would refuse (an unknown flag, a bad value, a bad preset)."""
    name = argv[0] if argv else ""
    token = _RESOLVING.set(True)
    try:
        root.main(args=list(argv), prog_name="llmkit", standalone_mode=False)
    except _Resolved as resolved:
        return resolved.config
    except LlmkitError:
        raise
    except Exception as exc:
        usage = usage_error(exc)
        if usage is None:
            raise
        raise ConfigError(f"llmkit {name}: {usage.message}",
                          hint=f"check it alone: llmkit {name} ... --print-config") from None
    finally:
        _RESOLVING.reset(token)
    raise ConfigError(f"`llmkit {' '.join(argv[:1])}` does not resolve a configuration",
                      hint="only commands built from a config (pretrain, sft, peft, ...) can be resolved")


def usage_error(exc: BaseException) -> ConfigError | None:
    """Click's usage errors (an unknown flag, a bad value) as a ConfigError, else None. Typer vendors click, so its
    exception classes are not public: they are known by their exit code 2 and their format_message()."""
    if getattr(exc, "exit_code", None) != 2 or not hasattr(exc, "format_message"):
        return None
    context = getattr(exc, "ctx", None)
    return ConfigError(exc.format_message(),
                       hint=f"see `{context.command_path if context is not None else 'llmkit'} --help`")


def run_mapping_errors(call, json_mode: bool) -> int:
    """Run the command line (`call`, click in non-standalone mode) and return its exit code: the one place where
    errors become an `Error:` line and a `Hint:` (one JSON line under --json, on stderr) with their exit code,
    click's usage errors included; Ctrl-C is 130. Unexpected exceptions keep their traceback: they are bugs.
    LLMKIT_DEBUG=1 shows the traceback behind every error."""
    from llmkit.errors import as_user_error

    try:
        result = call()
    except KeyboardInterrupt:
        result = EXIT_INTERRUPTED
    except Exception as exc:   # noqa: BLE001 - mapped below, or re-raised
        if type(exc).__name__ == "NoArgsIsHelpError":   # `llmkit tokenize` alone: its help (styled on a terminal)
            typer.echo(exc.format_message(), err=True)
            return exc.exit_code
        error = as_user_error(exc) or usage_error(exc)
        if error is None:
            raise
        if os.environ.get("LLMKIT_DEBUG", "") not in ("", "0"):
            traceback.print_exc()
        report_error(error, json_mode)
        return error.exit_code
    if result == EXIT_INTERRUPTED:   # typer turns Ctrl-C into exit 130
        if json_mode:
            print(json.dumps({"error": "interrupted", "exit_code": EXIT_INTERRUPTED}), file=sys.stderr)
        else:
            print("Interrupted.", file=sys.stderr)
    return result if isinstance(result, int) else 0


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
    if _RESOLVING.get():
        raise _Resolved(cfg)
    if print_config:
        if json_mode:
            emit_json(to_dict(cfg))
        else:
            sys.stdout.write(dump_yaml(cfg))
        raise typer.Exit(0)
    return cfg


def to_jsonable(value: Any) -> Any:
    """The one serialisation of a result: a result that shapes its own document (`to_json()`) gets that shape,
    any other dataclass its fields."""
    if callable(getattr(value, "to_json", None)):
        return to_jsonable(value.to_json())
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {k: to_jsonable(v) for k, v in dataclasses.asdict(value).items()}
    if isinstance(value, dict):
        return {str(k): to_jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_jsonable(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    return value


def emit_json(value: Any, stream=None) -> None:
    stream = stream or sys.stdout
    stream.write(json.dumps(to_jsonable(value), ensure_ascii=False) + "\n")
    stream.flush()


def console():
    from rich.console import Console

    return Console(highlight=False, soft_wrap=False)


class Output:
    """Where a command writes: progress, messages and warnings go to stderr through `report` (plain lines and no
    progress bars under --json); the command's one result goes to stdout through `result`, exactly once."""

    def __init__(self, json_mode: bool):
        self.json = json_mode
        self._result_written = False
        self._stdout = None   # under json_only_stdout: the real stdout, kept for the result

    @contextlib.contextmanager
    def json_only_stdout(self):
        """Under --json, everything else written to stdout while the command runs (libraries that print notices,
        such as DeepSpeed's accelerator line on import) goes to stderr: stdout holds the result alone."""
        if not self.json:
            yield
            return
        self._stdout = sys.stdout
        try:
            with contextlib.redirect_stdout(sys.stderr):
                yield
        finally:
            self._stdout = None

    @functools.cached_property
    def report(self):
        from llmkit.ui import reporter_for

        return reporter_for(self.json)

    @property
    def stdout(self):
        """Where the command's one result goes (the real stdout, also while json_only_stdout holds it)."""
        return self._stdout or sys.stdout

    def result(self, value: Any, render: Optional[Callable[[Any], None]] = None) -> None:
        """Under --json, `value` as one JSON document (to_jsonable); else `render(value)` for people. No `render`:
        people already saw the result as it was produced (a chat's streamed replies)."""
        assert not self._result_written, "a command writes one result: under --json, exactly one JSON document"
        self._result_written = True
        if self.json:
            emit_json(value, self.stdout)
        elif render is not None:
            render(value)


def examples(*lines: str) -> str:
    """The epilog every command's --help ends with: real example command lines."""
    return "Examples:\n\n" + "\n\n".join(f"  $ {line}" for line in lines)
