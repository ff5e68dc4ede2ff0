"""`llmkit memory-estimate`: training and inference memory per GPU, offline, and a plan when it does not fit.

Light by design: the estimate is arithmetic over a config.json; torch is never imported.
"""

import dataclasses

import typer

from llmkit.commands._options import config_command
from llmkit.commands._runtime import Output, console, examples
from llmkit.config import MemoryEstimateConfig

def register(app: typer.Typer) -> None:
    app.command("memory-estimate", epilog=examples(
        "llmkit memory-estimate --params 1.4B --gpu-memory 8GiB --plan",
        "llmkit memory-estimate --model llama-2-7b --peft lora --quant nf4 --double-quant --mixed-precision bf16 "
        "--grad-checkpointing --gpu-memory 16GiB",
        "llmkit memory-estimate --model mistral-7b --zero 3 --gpus 4 --mixed-precision bf16 --explain",
        "llmkit memory-estimate --model ./my-model/config.json --mode inference --batch-size 8 --seq-len 4096 --json",
    ))(memory_estimate)


@config_command(MemoryEstimateConfig)
def memory_estimate(cfg: MemoryEstimateConfig, out: Output) -> None:
    """Memory per GPU for training or inference: weights, gradients, optimizer, activations, overhead."""
    from llmkit.memory import estimate, load_model_spec

    spec = load_model_spec(cfg)
    result = estimate(cfg, spec)
    fit = None
    if cfg.plan or cfg.fit:   # the search is imported only when asked for: it is start-up time otherwise
        from llmkit.plans import largest_fit, search_plans
        from llmkit.translate import with_plan_commands

        if cfg.plan:
            result = with_plan_commands(dataclasses.replace(result, plans=search_plans(cfg, spec, result)))
        if cfg.fit:
            fit = largest_fit(cfg, spec)
    if not cfg.explain:   # the formulas are shown, and serialised, only when asked for
        result = dataclasses.replace(result, explain={})
    document = result if fit is None else {**result.to_json(), "fit": fit}
    out.result(document, lambda _: _render(cfg, result, fit))


_PHASES = {"forward_backward": "forward/backward", "optimizer_step": "optimizer step",
           "inference": "inference"}


def _render(cfg, result, fit) -> None:
    from rich.table import Table

    from llmkit.memory import gib

    out = console()
    a = result.assumptions
    out.print(f"[bold]{a['model']}[/bold]: {result.params_total:,} parameters, {result.params_trainable:,} trainable "
              f"({a['family']}, {a['layers']} layers, hidden {a['hidden']}, {a['heads']} heads, vocab {a['vocab']})")
    if a.get("architecture_rule"):
        out.print(f"[dim]assumed architecture ({a['architecture_rule']}); override with --layers/--hidden/--heads/"
                  "--vocab[/dim]")
    table = Table(title=f"per GPU, peak in the {_PHASES[result.peak_phase]} phase", title_justify="left")
    for column, justify in (("component", "left"), ("bytes", "right"), ("GiB", "right"), ("share", "right")):
        table.add_column(column, justify=justify)
    total = result.per_device["total"] or 1
    for row in ("weights", "gradients", "optimizer", "activations", "overhead"):
        value = result.per_device[row]
        table.add_row(row, f"{value:,}", f"{gib(value):.2f}", f"{value / total:.1%}")
    table.add_row("[bold]total[/bold]", f"[bold]{total:,}[/bold]", f"[bold]{gib(total):.2f}[/bold]", "100.0%")
    out.print(table)
    if result.cpu_ram:
        out.print(f"CPU RAM for offload: {result.cpu_ram:,} bytes ({gib(result.cpu_ram):.2f} GiB) per node")
    host = result.host_ram_bytes
    if host:
        out.print(f"host RAM per node: {gib(host['total']):.2f} GiB (loading the model {gib(host['load']):.2f} GiB, "
                  f"offload {gib(host['offload']):.2f} GiB; not at the same time)")
    if result.communication_bytes_per_step:
        out.print(f"communication per optimizer step: {gib(result.communication_bytes_per_step):.2f} GiB per GPU")
    if result.fits is not None:
        verdict = "[green]fits[/green]" if result.fits else "[red]does not fit[/red]"
        out.print(f"{verdict} in {gib(result.gpu_memory):.2f} GiB "
                  f"({gib(result.gpu_memory - result.per_device['total']):+.2f} GiB to spare)")
    if cfg.explain:
        explain = Table(title="how each row is counted", title_justify="left", show_lines=True)
        explain.add_column("row")
        explain.add_column("formula and numbers", overflow="fold")
        for row, text in result.explain.items():
            explain.add_row(row, text)
        out.print(explain)
    for note in result.notes:
        out.print(f"[yellow]note:[/yellow] {note}")
    if fit is not None:
        limit = " (the search's limit: more may fit)" if fit["limit_reached"] else ""
        out.print(f"[bold]largest {fit['lever'].replace('_', ' ')} that fits[/bold]: {fit['value']:,}{limit}, "
                  f"{gib(fit['per_device_total']):.2f} GiB per GPU")
    if result.plans is not None:
        if not result.plans:
            out.print("no plan needed: it fits" if result.fits else "no searched configuration fits this budget")
        changes = "what is computed" if cfg.mode == "inference" else "what is trained"
        for plan in result.plans:
            tag = f" [yellow](changes {changes})[/yellow]" if plan.changes_what_is_trained else ""
            out.print(f"[bold]plan {plan.rank}[/bold]: {'; '.join(plan.changes)}{tag}")
            time = "decode time" if cfg.mode == "inference" else "step time"
            host = f", host RAM {gib(plan.host_ram['total']):.1f} GiB" if plan.host_ram.get("total") else ""
            out.print(f"  {gib(plan.per_device_total):.2f} GiB per GPU{host}, {time} ×{plan.relative_step_time:g}, "
                      f"GPU-time ×{plan.gpu_seconds_factor:g} (vs the configuration asked for)")
            out.print(f"  memory-estimate flags: {' '.join(plan.flags)}", markup=False)
            out.print(f"  run it: {plan.command}", markup=False, soft_wrap=True)
