"""`llmkit presets`: what ships, and what a preset holds."""

from typing import Annotated, Optional

import typer

from llmkit.commands._options import JsonOpt
from llmkit.commands._runtime import Output, console, examples


def register(app: typer.Typer) -> None:
    app.command("presets", epilog=examples("llmkit presets", "llmkit presets tokenize/bpe-4k",
                                           "llmkit presets --json"))(presets)


def presets(
    name: Annotated[Optional[str], typer.Argument(help="KIND/NAME of one preset to print.", show_default=False)] = None,
    json_: JsonOpt = False,
) -> None:
    """List the shipped presets, or print one."""
    from llmkit import presets as shipped
    from llmkit.errors import ConfigError

    out = Output(json_)
    if name is not None:
        kind, _, preset = name.partition("/")
        if not preset:
            raise ConfigError(f"give a preset as KIND/NAME (got {name!r})", hint="run `llmkit presets` to list them")
        # scripts get the settings; people get the file as it ships, comments and all
        out.result(shipped.load_preset(kind, preset), lambda _: typer.echo(shipped.preset_text(kind, preset), nl=False))
        return
    out.result({kind: shipped.list_presets(kind) for kind in shipped.list_kinds()}, render_listing)


def render_listing(listing: dict[str, list[str]]) -> None:
    out = console()
    for kind, names in listing.items():
        out.print(f"[bold]{kind}[/bold]: {', '.join(names)}")
