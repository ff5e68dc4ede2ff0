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
