"""`llmkit quickstart`: the whole life of a tiny model on text that ships with Python."""

from typing import Annotated, Optional

import typer

from llmkit.commands._options import (ConfigOpt, JsonOpt, OutputDirOpt, OverwriteOpt, PresetOpt, PrintConfigOpt,
                                      SeedOpt)
from llmkit.commands._runtime import build_config, console, emit_json, examples, reporter
from llmkit.config import QuickstartConfig


def register(app: typer.Typer) -> None:
    app.command("quickstart", epilog=examples("llmkit quickstart", "llmkit quickstart --fast -o /tmp/qs",
                                              "llmkit quickstart --fast --json"))(quickstart)


def quickstart(
    output_dir: OutputDirOpt = None,
    fast: Annotated[Optional[bool], typer.Option("--fast", help="The small version (about a minute).",
                                                 show_default=False)] = None,
    seed: SeedOpt = None, overwrite: OverwriteOpt = None,
    preset: PresetOpt = None, config: ConfigOpt = None, print_config: PrintConfigOpt = False, json_: JsonOpt = False,
) -> None:
    """Run a model's life stage by stage on the Python language reference: no network, no GPU."""
    cfg = build_config(QuickstartConfig, preset, config, dict(output_dir=output_dir, fast=fast, seed=seed,
                                                       overwrite=overwrite),
                       print_config, json_)
    from llmkit.quickstart import run_quickstart

    result = run_quickstart(cfg, reporter=reporter(json_))
    if json_:
        emit_json(result)
        return
    from rich.markup import escape
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
        elif stage.name == "pretrain":
            s = stage.summary
            text = (f"{s['parameters'] / 1e6:.1f}M-parameter LLaMA, {s['steps']} steps; held-out perplexity "
                    f"{s['held_out_perplexity_before']:,.0f} -> {s['held_out_perplexity_after']:,.0f} "
                    f"({s['perplexity_fall']:.1f}x lower); loss {s['sparkline']}")
        elif stage.name == "sft":
            s = stage.summary
            text = (f"LoRA adapter on {s['pairs']} question/answer pairs (loss on answers), {s['steps']} steps; "
                    f"{s['reproduced']}/{s['asked']} greedy answers reproduce the reference; adapter "
                    f"{s['adapter_bytes'] / 2**20:.1f} MiB vs model {s['model_bytes'] / 2**20:.1f} MiB; "
                    f"loss {s['sparkline']}")
        elif stage.name == "merge":
            s = stage.summary
            text = (f"{s['merged_modules']} layers folded into the base; merged = base + adapter on {s['probes']} "
                    f"probe prompts (max |Δlogit| {s['max_abs_logit_diff']:.1e}, KL {s['kl_mean']:.1e})")
        elif stage.name == "quantize":
            s = stage.summary
            text = (f"NF4 + double quantization ({s['bits_per_param']:.3f} bits/weight): "
                    f"{s['disk_before'] / 2**20:.2f} -> {s['disk_after'] / 2**20:.2f} MiB on disk; "
                    f"perplexity on the tuning chats {s['perplexity_before']:,.1f} -> {s['perplexity_after']:,.1f} "
                    f"({s['perplexity_change_pct']:+.1f} %)")
        elif stage.name == "generate":
            text = f"{len(stage.summary['samples'])} prompts, greedy and sampled (below)"
        else:
            text = ", ".join(f"{k}={v}" for k, v in stage.summary.items())
        table.add_row(stage.name, text, f"{stage.seconds:.1f}", stage.output or "")
    out = console()
    out.print(table)
    tokenizer_stage = next(s for s in result.stages if s.name == "tokenizer")
    out.print(Panel("|".join(tokenizer_stage.summary["sample_tokens"]), subtitle="tokens split by |",
                    title=repr(tokenizer_stage.summary["sample_text"][:60] + "…"), title_align="left"))
    sft_stage = next((s for s in result.stages if s.name == "sft"), None)
    if sft_stage is not None:
        lines = []
        for sample in sft_stage.summary["samples"]:
            mark = "[green]reproduces the reference[/]" if sample["reproduced"] else "[yellow]differs[/]"
            lines.append(f"[bold]{escape(sample['question'])}[/bold]")
            lines.append(f"  before SFT: {escape(sample['before'][:100])}")
            lines.append(f"  after SFT:  {escape(sample['after'][:100])}  ({mark})")
        out.print(Panel("\n".join(lines), title="answers before and after instruction tuning (greedy)",
                        title_align="left"))
    generate_stage = next((s for s in result.stages if s.name == "generate"), None)
    if generate_stage is not None:
        lines = []
        for sample in generate_stage.summary["samples"]:
            lines.append(f"[bold]{escape(sample['prompt'])}[/bold]")
            lines.append(f"  greedy:  {escape(sample['greedy'])}")
            lines.append(f"  sampled: {escape(sample['sampled'])}")
        out.print(Panel("\n".join(lines), title="generated by the pretrained model", title_align="left"))
    out.print(f"done in {result.seconds:.1f} s; everything is in {result.output_dir}")
