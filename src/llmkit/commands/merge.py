"""`llmkit merge`: fold a LoRA or IA3 adapter into its base model, save it whole, and verify it."""

import typer

from llmkit.commands._options import config_command
from llmkit.commands._runtime import Output, console, examples
from llmkit.config import MergeConfig


def register(app: typer.Typer) -> None:
    app.command("merge", epilog=examples(
        "llmkit merge --adapter runs/peft/adapter -o runs/merged",
        "llmkit merge --base ./model --adapter runs/qlora/adapter --strategy requantize -o ./merged-nf4",
        "llmkit merge --base ./model --adapter ./ia3-adapter --dtype bf16 -o ./merged-bf16 --json",
    ))(merge)


@config_command(MergeConfig)
def merge(cfg: MergeConfig, out: Output) -> None:
    """Fold a LoRA or IA3 adapter into its base model with peft; save it whole; prove the logits equal."""
    from llmkit.merge import merge_adapter

    out.result(merge_adapter(cfg, out.report), render)


def render(result) -> None:
    out = console()
    trained = f" (trained on the {result.quantized_base}-quantized base)" if result.quantized_base else ""
    ran = {"plain": "merged into the base weights",
           "dequantize": "strategy dequantize: merged into the dequantized weights it was trained against",
           "original": "strategy original: merged into the original full-precision weights",
           "requantize": f"strategy requantize: merged into the dequantized weights, then quantized to "
                         f"{result.quantized_base} again"}[result.strategy]
    out.print(f"{result.method} adapter {result.adapter}{trained} + {result.base} → {result.output_dir}",
              markup=False)
    out.print(f"{ran}; {result.merged_modules} layers; {result.params:,} parameters saved as {result.dtype}"
              f"{' (linear layers quantized)' if result.saved_quantized else ''} in {len(result.files)} file(s); "
              f"{result.seconds:.1f} s", markup=False)
    if result.verification is None:
        out.print("Not verified (--no-verify).")
    else:
        v = result.verification
        out.print(f"Verified against {v.reference} on {v.probes} probes ({v.tokens} tokens): max |Δlogit| "
                  f"{v.max_abs_logit_diff:.3g} ({v.max_rel_logit_diff:.3g} of the largest logit; tolerance "
                  f"{result.tolerance:g}), KL mean {v.kl_mean:.3g} / max {v.kl_max:.3g} nats", markup=False)
    if result.drift_from_trained is not None:
        d = result.drift_from_trained
        out.print(f"Compared with the model as trained, {d.reference}: max |Δlogit| {d.max_abs_logit_diff:.3g}, "
                  f"KL mean {d.kl_mean:.3g} nats", markup=False)
