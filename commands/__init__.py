"""The `llmkit` command line: a Typer app with one module per subcommand.

Every module here is light: heavy libraries are imported inside command bodies, so `--help` and shell completion
stay fast.
"""

import typer

from llmkit import __version__

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
    from llmkit.commands import completion, env, presets_cmd, quickstart, tokenize

    app.add_typer(tokenize.app, name="tokenize")
    for module in (quickstart, env, presets_cmd, completion):
        module.register(app)


_register()


def _help_defaults(command) -> dict:
    """Typer coerces an option whose value is None through pydantic (~60 ms of imports); an absent --help is None
    unless a default says False. These defaults keep `llmkit <cmd> --help` as fast as Typer's own help."""
    defaults: dict = {"help": False}
    for name, sub in getattr(command, "commands", {}).items():
        defaults[name] = _help_defaults(sub)
    return defaults


def main() -> None:
    from typer.main import get_command

    command = get_command(app)
    command(prog_name="llmkit", default_map=_help_defaults(command))
