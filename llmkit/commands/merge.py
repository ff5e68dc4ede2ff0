"""`llmkit merge`: fold a LoRA or IA3 adapter into its base model, save it whole, and verify it."""

from typing import Annotated, Optional

import typer

from llmkit.commands._options import (ConfigOpt, JsonOpt, OutputDirOpt, OverwriteOpt, PresetOpt, PrintConfigOpt,
                                     TrustRemoteCodeOpt, option)
from llmkit.commands._runtime import build_config, console, emit_json, examples, reporter


def _opt(flag: str, help_: str, type_=str, *aliases: str):
    return Annotated[Optional[type_], option(flag, *aliases, help=help_)]


def register(app: typer.Typer) -> None:
    app.command("merge", epilog=examples(
        "llmkit merge --adapter runs/peft/adapter -o runs/merged",
        "llmkit merge --base ./model --adapter runs/qlora/adapter --strategy requantize -o ./merged-nf4",
        "llmkit merge --base ./model --adapter ./ia3-adapter --dtype bf16 -o ./merged-bf16 --json",
    ))(merge)


def merge(
    adapter: _opt("--adapter", "The PEFT adapter dir (LoRA or IA3; from `llmkit peft` or peft).", str, "-a") = None,
    base: _opt("--base", "The base model: dir or hub id (default: the one the adapter records).", str, "-m") = None,
    output_dir: OutputDirOpt = None,
    dtype: _opt("--dtype", "auto | fp32 | bf16 | fp16: dtype of the saved weights (auto: the base's).") = None,
    strategy: _opt("--strategy", "dequantize | original | requantize: for adapters trained on a 4-bit/8-bit base "
                                 "(default dequantize).") = None,
    verify: _opt("--verify/--no-verify", "Check the merged model against base + adapter on probe prompts (on by "
                                         "default).", bool) = None,
    tolerance: _opt("--tolerance", "Largest allowed max |Δlogit| / max |logit| (default: 1e-4 fp32, 1e-2 fp16, "
                                   "5e-2 bf16).", float) = None,
    probe: Annotated[Optional[list[str]], option("--probe", help="A verification prompt (repeatable; default: four "
                                                                 "built-in sentences).")] = None,
    max_shard_size: _opt("--max-shard-size", "Largest safetensors shard (default 2GB).") = None,
    overwrite: OverwriteOpt = None, trust_remote_code: TrustRemoteCodeOpt = None,
    preset: PresetOpt = None, config: ConfigOpt = None, print_config: PrintConfigOpt = False, json_: JsonOpt = False,
) -> None:
    """Fold a LoRA or IA3 adapter into its base model with peft; save it whole; prove the logits equal."""
    from llmkit.config import MergeConfig

    cfg = build_config(MergeConfig, preset, config, dict(
        adapter=adapter, base=base, output_dir=str(output_dir) if output_dir else None, dtype=dtype,
        strategy=strategy, verify=verify, tolerance=tolerance, probes=probe or None, max_shard_size=max_shard_size,
        overwrite=overwrite, trust_remote_code=trust_remote_code), print_config, json_)
    from llmkit.merge import merge_adapter

    result = merge_adapter(cfg, reporter(json_))
    if json_:
        emit_json(result)
        return
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
