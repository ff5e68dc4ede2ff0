"""QLoRA's gradient invariant on bitsandbytes' CUDA kernels (tests/training/test_qlora_invariants.py checks its CPU ones).

    python benchmarks/gpu_qlora_check.py                        # on a CUDA machine; elsewhere it says so, exit 0
    python benchmarks/gpu_qlora_check.py --device cpu           # the same check on the CPU kernels
    python benchmarks/gpu_qlora_check.py --compute-dtype bf16   # 4-bit matmuls in bf16 (llmkit's default on a GPU)

For nf4 (+ double quant), fp4 and int8, with LoRA on q,v and on all-linear: a tiny random LLaMA is loaded and wrapped
the way `llmkit peft --quant` does it (llmkit's quantization_config and AdapterPlan, whose probe forward runs in eval
mode without grad), one more eval-mode no-grad forward runs (an evaluation), then one training backward. Its LoRA
gradients are compared with those of a plain fp32 transformers + peft model holding the dequantized weights and the
same LoRA weights. Prints a table and PASS/FAIL; exit 1 on FAIL.

Tolerance (max |Δgrad| / max |grad| per LoRA tensor): both sides do fp32 math on the same weights, so 1e-4 on CPU
and 1e-3 on CUDA (other summation orders; TF32 is switched off). bitsandbytes' CUDA int8 training matmul quantizes
the activations to int8 per row and computes in fp16: 5e-2 there; 4-bit with bf16 compute: 5e-2. The bug this
guards against (no gradient through the frozen base after an evaluation) shows as a missing gradient or an error of
order 1 (on CPU before the fix: no gradient for q,v, 1.2-1.3 for all-linear).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

QUANTS = {"nf4": dict(quant="nf4", double_quant=True), "fp4": dict(quant="fp4"), "int8": dict(quant="int8")}
TARGETS = {"q,v": ("q_proj", "v_proj"), "all-linear": ("all-linear",)}
# every linear layer's input is a multiple of 64 (bitsandbytes' CPU 4-bit kernels need it)
ARCH = dict(model_type="llama", vocab_size=256, num_hidden_layers=2, hidden_size=64, intermediate_size=128,
            num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128, tie_word_embeddings=False)


def tolerance(quant: str, device: str, compute_dtype: str) -> float:
    if (compute_dtype == "bf16" and quant != "int8") or (quant == "int8" and device != "cpu"):
        return 5e-2
    return 1e-4 if device == "cpu" else 1e-3


def dequantized(layer):
    import bitsandbytes as bnb
    import bitsandbytes.functional as F

    if isinstance(layer, bnb.nn.Linear4bit):
        return F.dequantize_4bit(layer.weight.data, layer.weight.quant_state).float()
    return layer.weight.data.float() * layer.weight.SCB.float().unsqueeze(1) / 127  # int8: row-wise absmax


def check(base: Path, data: Path, quant: str, targets: str, device: str, compute_dtype: str) -> dict:
    import bitsandbytes as bnb
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import LlamaForCausalLM

    from llmkit.config import PeftConfig
    from llmkit.modeling import load_model
    from llmkit.training.peft import AdapterPlan, quantization_config

    cfg = PeftConfig(model=str(base), data=str(data), output_dir=str(base.parent / "run"), lora_rank=4,
                     lora_dropout=0.0, lora_targets=TARGETS[targets], compute_dtype=compute_dtype, **QUANTS[quant])
    plan = AdapterPlan(cfg, tokenizer_source=str(base), quantization_config=quantization_config(cfg))
    quantized = load_model(str(base), device=device, **plan.load_options)
    layers = {n: m for n, m in quantized.named_modules() if isinstance(m, (bnb.nn.Linear4bit, bnb.nn.Linear8bitLt))}
    weights = {n: dequantized(m).clone() for n, m in layers.items()}   # as loaded, before any forward
    qlora = plan(quantized)

    reference = LlamaForCausalLM.from_pretrained(base, dtype=torch.float32).to(device)
    with torch.no_grad():
        for name, module in reference.named_modules():
            if name in weights:
                module.weight.copy_(weights[name])
    reference = get_peft_model(reference, LoraConfig(r=4, lora_alpha=cfg.lora_alpha, lora_dropout=0.0,
                                                     target_modules="all-linear" if targets == "all-linear"
                                                     else list(TARGETS[targets])))
    lora = {n: p for n, p in qlora.named_parameters() if p.requires_grad}
    reference_lora = {n: p for n, p in reference.named_parameters() if p.requires_grad}
    if sorted(lora) != sorted(reference_lora):
        return dict(tensors=len(lora), missing=-1, worst=float("inf"))
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():   # B non-zero, so that every A gets a gradient too
        for name, p in lora.items():
            p.copy_(torch.randn(p.shape, generator=generator) * 0.1)
            reference_lora[name].copy_(p)
    ids = torch.randint(3, ARCH["vocab_size"], (2, 8), generator=generator).to(device)
    qlora.eval()                                   # an evaluation, as the trainer runs it
    with torch.no_grad():
        qlora(input_ids=ids, labels=ids)
    grads = []
    for model in (qlora, reference):
        model.train()
        model(input_ids=ids, labels=ids).loss.backward()
        grads.append({n: p.grad for n, p in model.named_parameters() if p.requires_grad})
    missing = sum(1 for n in grads[1] if grads[0][n] is None)
    errors = [float((grads[0][n].float() - g).abs().max() / g.abs().max()) for n, g in grads[1].items()
              if grads[0][n] is not None]
    return dict(tensors=len(lora), missing=missing, worst=max(errors) if errors else float("inf"))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda", help="cuda (default) or cpu")
    parser.add_argument("--compute-dtype", default="fp32", choices=["fp32", "bf16"], help="of the 4-bit matmuls")
    args = parser.parse_args()
    import torch

    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print("gpu_qlora_check: needs a CUDA GPU (none here); run it with --device cpu for the CPU kernels")
        return 0
    device = "cuda:0" if args.device == "cuda" else args.device
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    import logging
    import warnings

    import transformers

    transformers.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    logging.getLogger("bitsandbytes").setLevel(logging.ERROR)   # int8's eval-mode matmul says it casts to fp16
    warnings.filterwarnings("ignore", message="`is_gradient_checkpointing` is deprecated")
    from llmkit.modeling import build_model

    rows, ok = [], True
    with tempfile.TemporaryDirectory(prefix="gpu-qlora-") as tmp:
        base, data = Path(tmp) / "base", Path(tmp) / "data.jsonl"
        build_model(dict(ARCH), seed=0).save_pretrained(base)
        data.write_text(json.dumps({"prompt": "1 + 1?", "completion": " 2"}) + "\n", encoding="utf-8")
        for quant in QUANTS:
            for targets in TARGETS:
                result = check(base, data, quant, targets, device, args.compute_dtype)
                limit = tolerance(quant, device, args.compute_dtype)
                passed = result["missing"] == 0 and result["worst"] <= limit
                ok &= passed
                rows.append((quant, targets, result["tensors"], result["missing"], result["worst"], limit, passed))
    name = torch.cuda.get_device_name() if args.device.startswith("cuda") else "cpu"
    import bitsandbytes

    print(f"QLoRA LoRA gradients after an eval pass vs the dequantized fp32 model — {name}, bitsandbytes "
          f"{bitsandbytes.__version__}, {args.compute_dtype} compute")
    print("| quant | targets    | LoRA tensors | no grad | max rel err | tolerance | result |")
    print("|-------|------------|--------------|---------|-------------|-----------|--------|")
    for quant, targets, tensors, missing, worst, limit, passed in rows:
        print(f"| {quant:<5} | {targets:<10} | {tensors:>12} | {missing:>7} | {worst:>11.2e} | {limit:>9.0e} | "
              f"{'ok' if passed else 'FAIL':<6} |")
    print("PASS" if ok else "FAIL")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
