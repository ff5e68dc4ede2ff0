"""The `llmkit` command line: a Typer app with one module per subcommand.

Every module here is light: heavy libraries are imported inside command bodies, so `--help` and shell completion
stay fast.
"""

import typer

from llmkit import __version__
from llmkit.runtime import quiet_optional_kernel_notices

quiet_optional_kernel_notices()

EXIT_CODES_HELP = (
    "Exit codes: 0 success; 1 the operation failed (data, checkpoint, runtime); "
    "2 usage or configuration error; 130 interrupted. Set LLMKIT_DEBUG=1 to see tracebacks."
)

app = typer.Typer(
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
