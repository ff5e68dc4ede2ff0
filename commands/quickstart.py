"""`llmkit quickstart`: the whole life of a tiny model on text that ships with Python."""

from typing import Annotated, Optional

import typer

from llmkit.commands._options import ConfigOpt, JsonOpt, OutputDirOpt, PresetOpt, PrintConfigOpt, SeedOpt
from llmkit.commands._runtime import build_config, cli_command, console, emit_json, examples, reporter
from llmkit.config import QuickstartConfig


def register(app: typer.Typer) -> None:
    app.command("quickstart", epilog=examples("llmkit quickstart", "llmkit quickstart --fast -o /tmp/qs",
                                              "llmkit quickstart --fast --json"))(quickstart)


@cli_command
def quickstart(
    output_dir: OutputDirOpt = None,
    fast: Annotated[Optional[bool], typer.Option("--fast", help="The small version (about a minute).",
                                                 show_default=False)] = None,
    seed: SeedOpt = None,
    preset: PresetOpt = None, config: ConfigOpt = None, print_config: PrintConfigOpt = False, json_: JsonOpt = False,
) -> None:
    """Run a model's life stage by stage on the Python language reference: no network, no GPU."""
    cfg = build_config(QuickstartConfig, preset, config, dict(output_dir=output_dir, fast=fast, seed=seed),
                       print_config, json_)
    from llmkit.quickstart import run_quickstart

    result = run_quickstart(cfg, reporter=reporter(json_))
    if json_:
        emit_json(result)
        return
    from rich.panel import Panel
    from rich.table import Table

    table = Table(title="llmkit quickstart", title_justify="left")
    for column in ("stage", "result", "seconds", "output"):
        table.add_column(column)
    for stage in result.stages:
        if stage.name == "tokenizer":
            s = stage.summary
            text = (f"{s['type']}, {s['vocab_size']:,} tokens; {s['tokens_per_word_held_out']:.2f} tokens/word "
                    f"held out; lossless: {'yes' if s['lossless_round_trip'] else 'NO'}")
        else:
            text = ", ".join(f"{k}={v}" for k, v in stage.summary.items())
        table.add_row(stage.name, text, f"{stage.seconds:.1f}", stage.output or "")
    out = console()
    out.print(table)
    tokenizer_stage = next(s for s in result.stages if s.name == "tokenizer")
    out.print(Panel("|".join(tokenizer_stage.summary["sample_tokens"]), subtitle="tokens split by |",
                    title=repr(tokenizer_stage.summary["sample_text"][:60] + "…"), title_align="left"))
    out.print(f"done in {result.seconds:.1f} s; everything is in {result.output_dir}")
