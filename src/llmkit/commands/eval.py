"""`llmkit eval`: perplexity, task-head metrics or generation metrics of a model on a dataset; two side by side."""

import typer

from llmkit.commands._options import config_command
from llmkit.commands._runtime import Output, console, examples
from llmkit.config import EvalConfig


def register(app: typer.Typer) -> None:
    app.command("eval", epilog=examples(
        "llmkit eval -m runs/pretrain/model --data held-out.jsonl --seq-len 512 --stride 256 --json",
        "llmkit eval -m runs/cls/model --data dev.jsonl   (accuracy and macro-F1; NER: entity F1; QA: EM/F1)",
        "llmkit eval -m runs/sft/model --data dev.jsonl --metric exact-match,rouge --max-new-tokens 64",
        "llmkit eval --compare runs/peft/adapter runs/merged --data held-out.jsonl   (also a model and its "
        "`quantize model` output)",
    ))(eval_)


@config_command(EvalConfig)
def eval_(cfg: EvalConfig, out: Output) -> None:
    """Evaluate a model on a dataset: perplexity (packed or sliding window), a task head's metrics, or
    generation metrics (ROUGE, BLEU, chrF, exact match); --compare A B puts two models side by side."""
    from llmkit.eval import CompareResult, run_eval

    result = run_eval(cfg, out.report)
    for side in (result.a, result.b) if isinstance(result, CompareResult) else (result,):
        for warning in side.warnings:
            out.report.warn(warning)
    out.result(result, render_compare if isinstance(result, CompareResult) else render)



def _who(result) -> str:
    return result.model + (f" + {result.adapter}" if result.adapter else "")


def _figures(result) -> str:
    d = result.details
    if "tokens" in d:
        speed = f", {d['tokens_per_s']:,.0f} tokens/s" if d.get("tokens_per_s") else ""
        return (f"{d['tokens']:,} tokens scored in {d['windows']:,} {d['mode']} window(s) of {d['seq_len']}"
                + (f", stride {d['stride']}" if d["stride"] else "") + speed)
    if "rows" in d:
        return f"{result.examples:,} examples in {d['rows']:,} rows (--seq-len {d['seq_len']})"
    if "generated_tokens" in d:
        return f"{result.examples:,} prompts, {d['generated_tokens']:,} tokens generated"
    return f"{result.examples:,} examples"


def render(result) -> None:
    from rich.table import Table

    table = Table(title=f"{_who(result)} ({result.task})", title_justify="left")
    table.add_column("metric")
    table.add_column("value", justify="right")
    for name, value in result.metrics.items():
        table.add_row(name, f"{value:.4f}")
    out = console()
    if result.metrics:
        out.print(table)
        out.print(f"{_figures(result)}; {result.seconds:.1f} s", markup=False)
    if result.harness is not None:
        _render_harness(result.harness)


def render_compare(result) -> None:
    from rich.table import Table

    table = Table(title_justify="left")
    table.add_column("metric")
    table.add_column(f"A: {_who(result.a)}", justify="right")
    table.add_column(f"B: {_who(result.b)}", justify="right")
    table.add_column("B - A", justify="right")
    for name, delta in result.delta.items():
        table.add_row(name, f"{result.a.metrics[name]:.4f}", f"{result.b.metrics[name]:.4f}", f"{delta:+.4g}")
    out = console()
    out.print(table)
    for label, side in (("A", result.a), ("B", result.b)):
        out.print(f"{label}: {_figures(side)}; {side.seconds:.1f} s", markup=False)


def _render_harness(results: dict) -> None:
    out = console()
    for task, values in results.items():
        shown = "  ".join(f"{k} {v:.4f}" for k, v in values.items() if isinstance(v, (int, float)))
        out.print(f"{task}: {shown}", markup=False)
