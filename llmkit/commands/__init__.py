"""The `llmkit` command line: a Typer app with one module per subcommand.

Every module here is light: heavy libraries are imported inside command bodies, so `--help` and shell completion
stay fast.
"""

import sys

import typer
from typer.core import TyperGroup

from llmkit import __version__
from llmkit.runtime import quiet_optional_kernel_notices

quiet_optional_kernel_notices()

EXIT_CODES_HELP = (
    "Exit codes: 0 success; 1 the operation failed (data, checkpoint, runtime); "
    "2 usage or configuration error; 130 interrupted; 143 terminated (SIGTERM). Set LLMKIT_DEBUG=1 to see "
    "tracebacks."
)


class LlmkitGroup(TyperGroup):
    """The `llmkit` group. Its `main` is the one try of the program: every command's errors, and click's usage
    errors, become `Error:`/`Hint:` lines and exit codes there (`_runtime.run_mapping_errors`)."""

    def main(self, args=None, prog_name=None, **extra):
        from llmkit.commands import _runtime

        extra.pop("standalone_mode", None)
        args = list(sys.argv[1:] if args is None else args)

        def call():
            return super(LlmkitGroup, self).main(args=args, prog_name=prog_name, standalone_mode=False, **extra)

        if _runtime.resolving():   # resolve_command_line: errors go back to the caller as exceptions
            return call()
        sys.exit(_runtime.run_mapping_errors(call, json_mode="--json" in args))


app = typer.Typer(
    cls=LlmkitGroup,
    name="llmkit",
    help="Train, shrink and run transformer language models on your own hardware.",
    epilog=EXIT_CODES_HELP,
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"llmkit {__version__}")
        raise typer.Exit(0)


@app.callback()
def _root(version: bool = typer.Option(False, "--version", callback=_version, is_eager=True,
                                       help="Print the version and exit.")) -> None:
    """Train, shrink and run transformer language models on your own hardware."""


def _register() -> None:
    from llmkit.commands import completion, env, memory_estimate, presets_cmd, pretrain, quickstart, sft, tokenize

    app.add_typer(tokenize.app, name="tokenize")
    from llmkit.commands import quantize

    app.add_typer(quantize.app, name="quantize")
    from llmkit.commands import merge
    merge.register(app)
    from llmkit.commands import generate
    generate.register(app)
    for module in (quickstart, env, presets_cmd, memory_estimate, completion, pretrain, sft):
        module.register(app)
    from llmkit.commands import peft
    peft.register(app)
    from llmkit.commands import launch
    launch.register(app)


_register()


def main() -> None:
    app(prog_name="llmkit")
