"""`llmkit quantize`: how int8, LLM.int8, NF4 and FP4 turn numbers into codes, step by step."""

from typing import Annotated, Optional

import typer

from llmkit.commands._options import ConfigOpt, JsonOpt, PresetOpt, PrintConfigOpt
from llmkit.commands._runtime import build_config, cli_command, comma_list, console, emit_json, examples

app = typer.Typer(help="Quantize models and explain how quantization works.", no_args_is_help=True)


@app.command("explain", epilog=examples(
    "llmkit quantize explain --method nf4 --values 0.1,-0.5,2.0,0.03,-1.2 --blocksize 64",
    "llmkit quantize explain --method llm-int8 --shape 2,3 --values 0.5,7.1,-0.2,1.0,-0.3,0.9",
    "llmkit quantize explain --method nf4 --double-quant --values 0.4,-0.9,0.05,1.5 --json"))
@cli_command
def explain_cmd(
    method: Annotated[Optional[str], typer.Option("--method", help="absmax-int8 | vector-int8 | llm-int8 | nf4 | fp4.",
                                                  show_default=False)] = None,
    values: Annotated[Optional[str], typer.Option("--values", help="Comma-separated numbers.",
                                                  show_default=False)] = None,
    shape: Annotated[Optional[str], typer.Option("--shape", help="ROWS,COLS for vector-int8 and llm-int8.",
                                                 show_default=False)] = None,
    blocksize: Annotated[Optional[int], typer.Option("--blocksize", help="Values per absmax block (nf4, fp4).",
                                                     show_default=False)] = None,
    double_quant: Annotated[Optional[bool], typer.Option("--double-quant", help="Quantize the block constants too.",
                                                         show_default=False)] = None,
    threshold: Annotated[Optional[float], typer.Option("--threshold", help="LLM.int8 outlier threshold (6.0).",
                                                       show_default=False)] = None,
    preset: PresetOpt = None, config: ConfigOpt = None, print_config: PrintConfigOpt = False, json_: JsonOpt = False,
) -> None:
    """Every step for the given numbers: absmax, scales, integer codes, dequantized values, the error."""
    from llmkit.config import QuantizeExplainConfig

    cfg = build_config(QuantizeExplainConfig, preset, config, dict(
        method=method, values=comma_list(values, "--values", float), shape=comma_list(shape, "--shape", int),
        blocksize=blocksize, double_quant=double_quant, threshold=threshold), print_config, json_)
    from llmkit.quantize import explain

    result = explain(cfg)
    if json_:
        emit_json(result)
        return
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
