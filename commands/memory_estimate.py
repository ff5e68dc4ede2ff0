"""`llmkit memory-estimate`: training and inference memory per GPU, offline, and a plan when it does not fit.

Light by design: the estimate is arithmetic over a config.json; torch is never imported.
"""

from typing import Annotated, Optional

import typer

from llmkit.commands._options import ConfigOpt, JsonOpt, PresetOpt, PrintConfigOpt, option
from llmkit.commands._runtime import build_config, cli_command, console, emit_json, examples


def _opt(flag: str, help_: str, type_=str):
    return Annotated[Optional[type_], option(flag, help=help_)]


def register(app: typer.Typer) -> None:
    app.command("memory-estimate", epilog=examples(
        "llmkit memory-estimate --params 1.4B --gpu-memory 8GiB --plan",
        "llmkit memory-estimate --model llama-2-7b --peft lora --quant nf4 --double-quant --mixed-precision bf16 "
        "--grad-checkpointing --gpu-memory 16GiB",
        "llmkit memory-estimate --model mistral-7b --zero 3 --gpus 4 --mixed-precision bf16 --explain",
        "llmkit memory-estimate --model ./my-model/config.json --mode inference --batch-size 8 --seq-len 4096 --json",
    ))(memory_estimate)


@cli_command
def memory_estimate(
    params: _opt("--params", "Total parameter count (1.4B, 330M, 7e9); the architecture follows a documented rule.") = None,
    model: _opt("--model", "A model preset (see `llmkit presets`), a dir or config.json, or a hub id.") = None,
    mode: _opt("--mode", "train | inference (default train).") = None,
    task: _opt("--task", "causal-lm | masked-lm | seq2seq | seq-cls (default: from the architecture).") = None,
    precision: _opt("--precision", "fp32 | fp16 | bf16: dtype the weights are stored and trained in.") = None,
    mixed_precision: _opt("--mixed-precision", "no | fp16 | bf16: autocast over fp32 weights (HF Trainer).") = None,
    quant: _opt("--quant", "none | int8 | nf4 | fp4 (bitsandbytes, linear layers only).") = None,
    double_quant: _opt("--double-quant", "Quantize the 4-bit absmax constants too (QLoRA).", bool) = None,
    optimizer: _opt("--optimizer", "adamw | adamw-fused | adamw-8bit | paged-adamw-8bit | adafactor | sgd | "
                                   "sgd-momentum.") = None,
    peft: _opt("--peft", "none | lora | ia3 | prompt-tuning | p-tuning | prefix-tuning.") = None,
    lora_rank: _opt("--lora-rank", "LoRA rank (default 8).", int) = None,
    lora_targets: _opt("--lora-targets", "Comma-separated module names (default q_proj,v_proj) or all-linear.") = None,
    num_virtual_tokens: _opt("--num-virtual-tokens", "Prompt/prefix tokens (default 20).", int) = None,
    freeze_base: _opt("--freeze-base", "Train only the task head.", bool) = None,
    trainable_layers: _opt("--trainable-layers", "Train only the last N blocks.", int) = None,
    batch_size: _opt("--batch-size", "Micro-batch per GPU, in sequences (default 1).", int) = None,
    seq_len: _opt("--seq-len", "Tokens per sequence (default 512).", int) = None,
    grad_accum: _opt("--grad-accum", "Micro-steps per optimizer step (default 1).", int) = None,
    grad_checkpointing: _opt("--grad-checkpointing/--no-grad-checkpointing",
                             "Recompute activations in backward.", bool) = None,
    attention: _opt("--attention", "eager | sdpa | flash (default sdpa).") = None,
    zero: _opt("--zero", "DeepSpeed ZeRO stage 0-3 (default 0 = plain DDP).", int) = None,
    offload: _opt("--offload", "none | optimizer | optimizer+params (DeepSpeed CPU offload).") = None,
    gpus: _opt("--gpus", "GPUs per node (default 1).", int) = None,
    nodes: _opt("--nodes", "Nodes (default 1).", int) = None,
    gpu_memory: _opt("--gpu-memory", "Memory of one GPU for the fit check: 24GiB, 80GB.") = None,
    overhead: _opt("--overhead", "Per-process constant (CUDA context, workspaces); default 1GiB, uncalibrated.") = None,
    layers: _opt("--layers", "Override the number of blocks.", int) = None,
    hidden: _opt("--hidden", "Override the hidden size.", int) = None,
    heads: _opt("--heads", "Override the attention heads.", int) = None,
    kv_heads: _opt("--kv-heads", "Override the key/value heads (GQA).", int) = None,
    vocab: _opt("--vocab", "Override the vocabulary size.", int) = None,
    intermediate: _opt("--intermediate", "Override the MLP size.", int) = None,
    plan: _opt("--plan", "When it does not fit, list the cheapest configurations that do.", bool) = None,
    explain: _opt("--explain", "Show the formula and numbers behind every row.", bool) = None,
    preset: PresetOpt = None, config: ConfigOpt = None, print_config: PrintConfigOpt = False, json_: JsonOpt = False,
) -> None:
    """Memory per GPU for training or inference: weights, gradients, optimizer, activations, overhead."""
    from llmkit.config import MemoryEstimateConfig

    cfg = build_config(MemoryEstimateConfig, preset, config, dict(
        params=params, model=model, mode=mode, task=task, precision=precision, mixed_precision=mixed_precision,
        quant=quant, double_quant=double_quant, optimizer=optimizer, peft=peft, lora_rank=lora_rank,
        lora_targets=lora_targets, num_virtual_tokens=num_virtual_tokens, freeze_base=freeze_base,
        trainable_layers=trainable_layers, batch_size=batch_size, seq_len=seq_len, grad_accum=grad_accum,
        grad_checkpointing=grad_checkpointing, attention=attention, zero=zero, offload=offload, gpus=gpus,
        nodes=nodes, gpu_memory=gpu_memory, overhead=overhead, layers=layers, hidden=hidden, heads=heads,
        kv_heads=kv_heads, vocab=vocab, intermediate=intermediate, plan=plan, explain=explain), print_config, json_)
    from llmkit.memory import estimate

    result = estimate(cfg)
    if json_:
        payload = result.to_json()
        if not cfg.explain:
            payload.pop("explain", None)
        emit_json(payload)
        return
    _render(cfg, result)


_PHASES = {"forward_backward": "forward/backward", "optimizer_step": "optimizer step",
           "inference": "inference"}


def _render(cfg, result) -> None:
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
    if result.plans is not None:
        if not result.plans:
            out.print("no plan needed: it fits" if result.fits else "no searched configuration fits this budget")
        for plan in result.plans:
            tag = " [yellow](changes what is trained)[/yellow]" if plan.changes_what_is_trained else ""
            out.print(f"[bold]plan {plan.rank}[/bold]: {'; '.join(plan.changes)}{tag}")
            out.print(f"  {gib(plan.per_device_total):.2f} GiB per GPU, step time ×{plan.relative_step_time:g}, "
                      f"GPU-time ×{plan.gpu_seconds_factor:g}")
            out.print(f"  memory-estimate flags: {' '.join(plan.flags)}", markup=False)
            out.print(f"  training flags: {' '.join(plan.training_flags)}", markup=False)
