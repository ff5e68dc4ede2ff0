"""`llmkit export`: a model as an ONNX graph, checked in ONNX Runtime against PyTorch."""

import typer

from llmkit.commands._options import config_command
from llmkit.commands._runtime import Output, console, examples
from llmkit.config import ExportConfig


def register(app: typer.Typer) -> None:
    app.command("export", epilog=examples(
        "llmkit export --format onnx -m runs/sft -o runs/sft-onnx",
        "llmkit export -m runs/t5-summarize -o runs/t5-onnx",
        "llmkit export -m runs/classifier -o runs/classifier-onnx --atol 1e-5 --json",
    ))(export)


@config_command(ExportConfig)
def export(cfg: ExportConfig, out: Output) -> None:
    """Export a causal LM, an encoder-decoder LM (both with past key values) or a sequence classifier to ONNX; prove
    ONNX Runtime's logits and greedy generation equal PyTorch's."""
    from llmkit.export import export_model

    out.result(export_model(cfg, out.report), render)


def render(result) -> None:
    out = console()
    graphs = ", ".join(f"{g.file} ({len(g.inputs)} inputs, {len(g.outputs)} outputs)" for g in result.graphs)
    out.print(f"{result.architecture} ({result.task}) {result.model} → {result.output_dir}: {graphs}, opset "
              f"{result.opset}, {'with' if result.tokenizer else 'no'} tokenizer; {result.seconds:.1f} s", markup=False)
    for check in result.checks:
        out.print(f"ONNX Runtime vs PyTorch, {check.what}: max |Δlogit| {check.max_abs_diff:.3g} "
                  f"(--atol {result.atol:g})", markup=False)
    if result.generation is not None:
        g = result.generation
        out.print(f"Greedy generation on ONNX Runtime equals transformers' generate: {g.new_tokens} new tokens "
                  f"after a {g.prompt_tokens}-token prompt", markup=False)
