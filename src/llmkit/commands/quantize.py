"""`llmkit quantize`: explain int8/LLM.int8/NF4/FP4 step by step; quantize a model and measure it; compare methods."""

import typer

from llmkit.commands._options import config_command
from llmkit.commands._runtime import Output, console, examples
from llmkit.config import QuantizeCompareConfig, QuantizeExplainConfig, QuantizeModelConfig
from llmkit.ui import format_bytes

app = typer.Typer(help="Quantize models and explain how quantization works.", no_args_is_help=True,
                  add_completion=False)


@app.command("explain", epilog=examples(
    "llmkit quantize explain --method nf4 --values 0.1,-0.5,2.0,0.03,-1.2 --blocksize 64",
    "llmkit quantize explain --method llm-int8 --shape 2,3 --values 0.5,7.1,-0.2,1.0,-0.3,0.9",
    "llmkit quantize explain --method nf4 --double-quant --values 0.4,-0.9,0.05,1.5 --json"))
@config_command(QuantizeExplainConfig)
def explain_cmd(cfg: QuantizeExplainConfig, out: Output) -> None:
    """Every step for the given numbers: absmax, scales, integer codes, dequantized values, the error."""
    from llmkit.quantize import explain

    out.result(explain(cfg), _render_explained)


def _render_explained(result) -> None:
    from rich.table import Table

    out = console()
    out.print(f"[bold]{result.method}[/bold] on {len(result.values)} values, shape {result.shape}")
    for number, step in enumerate(result.steps, start=1):
        out.print(f"  {number}. {step}", markup=False)
    table = Table(title_justify="left")
    for column in ("#", "x", "code", "x̂", "|x − x̂|"):
        table.add_column(column, justify="right")
    for i, (x, code, deq, err) in enumerate(zip(result.values, result.codes, result.dequantized, result.abs_error)):
        table.add_row(str(i), f"{x:.6g}", str(code), f"{deq:.6g}", f"{err:.3g}")
    out.print(table)
    out.print(f"max |error| {result.max_abs_error:.4g}, mean |error| {result.mean_abs_error:.4g}, relative "
              f"(Frobenius) {result.relative_error:.4%}; {result.bits_per_value:.4f} bits per value")


@app.command("model", epilog=examples(
    "llmkit quantize model -m runs/quickstart/pretrain/model --method nf4 --double-quant -o runs/model-nf4",
    "llmkit quantize model -m ./model --method int8 --eval-data held_out.jsonl -o ./model-int8 --json",
    "llmkit quantize model -m ./model --method fp4 --blocksize 128 --compute-dtype bf16 -o ./model-fp4"))
@config_command(QuantizeModelConfig)
def model_cmd(cfg: QuantizeModelConfig, out: Output) -> None:
    """Quantize a model with bitsandbytes and save it; sizes, bits per parameter, per-layer error, perplexity."""
    from llmkit.quantize_model import quantize_model

    out.result(quantize_model(cfg, out.report), _render_quantized)


def _render_quantized(result) -> None:
    out = console()
    report = result.report
    out.print(f"[bold]{result.model}[/bold] → {result.output_dir}: {_label(report)}, {report.quantized_layers} "
              f"linear layers quantized in {report.seconds:.1f} s; perplexity on {report.perplexity['tokens']} tokens "
              f"of {result.eval_source}", markup=True, highlight=False)
    out.print(_reports_table([report]))
    out.print(_layers_table(report))
    if report.outliers:
        o = report.outliers
        out.print(f"LLM.int8 outliers (|x| ≥ {o['threshold']:g} on the eval text): {o['outlier_columns']} of "
                  f"{o['columns']} input features ({o['share']:.3%}) in {o['layers_with_outliers']} layer(s) go "
                  "through the 16-bit matmul")
    if result.skipped_modules:
        out.print(f"Kept in full precision: {', '.join(result.skipped_modules)}", markup=False)
    out.print(f"Reloads quantized with AutoModelForCausalLM.from_pretrained('{result.output_dir}') "
              f"({report.reload['layers']} layers, max |Δlogit| {report.reload['max_abs_logit_diff']:.2g})",
              markup=False)


@app.command("compare", epilog=examples(
    "llmkit quantize compare -m runs/quickstart/pretrain/model",
    "llmkit quantize compare -m ./model --methods nf4,nf4+dq --eval-data held_out.jsonl --json"))
@config_command(QuantizeCompareConfig)
def compare_cmd(cfg: QuantizeCompareConfig, out: Output) -> None:
    """int8, nf4, fp4 and nf4 + double quantization side by side on one model (nothing is saved)."""
    from llmkit.quantize_model import compare_methods

    out.result(compare_methods(cfg, out.report), _render_compared)


def _render_compared(result) -> None:
    out = console()
    out.print(f"[bold]{result.model}[/bold]: perplexity {result.perplexity_before:.4g} before quantization, on "
              f"{result.eval_tokens} tokens of {result.eval_source}")
    out.print(_reports_table(result.reports))


def _label(report) -> str:
    if report.method == "int8":
        return "int8 (LLM.int8, per-row scales)"
    return f"{report.method}{' + double quant' if report.double_quant else ''}, block {report.blocksize}, " \
           f"compute {report.compute_dtype}"



def _reports_table(reports):
    from rich.table import Table

    table = Table(title_justify="left")
    for column in ("method", "disk", "memory", "bits/param\ntheory / achieved / on disk", "‖W − Ŵ‖/‖W‖\nmean / max",
                   "perplexity", "Δ"):
        table.add_column(column, justify="right")
    for r in reports:
        s, b, e, p = r.size, r.bits_per_param, r.error, r.perplexity
        table.add_row(r.method + ("+dq" if r.double_quant else ""),
                      f"{format_bytes(s['disk_before'])} → {format_bytes(s['disk_after'])}",
                      f"{format_bytes(s['memory_before'])} → {format_bytes(s['memory_after'])}",
                      f"{b['theory']:.3f} / {b['achieved']:.3f} / " + (f"{b['on_disk']:.3f}" if b["on_disk"] else "?"),
                      f"{e['mean_rel_frobenius']:.4f} / {e['max_rel_frobenius']:.4f}",
                      f"{p['before']:.4g} → {p['after']:.4g}", f"{p['change_pct']:+.2f}%")
    return table


def _layers_table(report, limit: int = 12):
    from rich.table import Table

    layers = sorted(report.layers, key=lambda e: e.rel_frobenius, reverse=True)
    table = Table(title=f"Reconstruction error, worst {min(limit, len(layers))} of {len(layers)} layers",
                  title_justify="left")
    for column in ("layer", "shape", "‖W − Ŵ‖/‖W‖", "max |W − Ŵ|"):
        table.add_column(column, justify="right" if column != "layer" else "left")
    for e in layers[:limit]:
        table.add_row(e.name, "×".join(map(str, e.shape)), f"{e.rel_frobenius:.4f}", f"{e.max_abs:.3g}")
    return table
