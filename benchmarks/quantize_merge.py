"""Time and measure `llmkit quantize model` and `llmkit merge` on a ~100M-parameter LLaMA (random init, built here).

    python benchmarks/quantize_merge.py                      # all of it; prints a markdown table
    python benchmarks/quantize_merge.py --methods nf4+dq --skip-merge --eval-tokens 512
    python benchmarks/quantize_merge.py --model runs/quickstart/pretrain/model   # a trained model instead

For each method (int8, nf4, fp4, nf4 + double quant) a fresh subprocess runs llmkit's `quantize_model` (what the
command runs) on the saved fp32 model, so its peak RSS (ru_maxrss) is that method's alone. Reported: the quantize time
(bitsandbytes through transformers' from_pretrained, the `seconds` of the report), the whole run (load, perplexity
before and after, reconstruction errors, save, reload check), peak RSS, bits per parameter of the quantized linears
(theory, achieved, on disk), sizes and the perplexity change on held-out text of the embedded corpus. Then `merge`:
a LoRA (r 16 on q/k/v/o, random B) folded into the same model, with and without verification.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ARCH = dict(num_hidden_layers=12, hidden_size=768, intermediate_size=2304, num_attention_heads=12,
            num_key_value_heads=12, max_position_embeddings=1024, tie_word_embeddings=False, bos_token_id=0,
            eos_token_id=1, pad_token_id=2)


def build(work: Path) -> Path:
    import torch

    from llmkit import corpus
    from llmkit.config import TokenizeTrainConfig
    from llmkit.modeling import build_model, load_tokenizer
    from llmkit.tokenization import train_tokenizer

    model_dir = work / "model"
    if (model_dir / "config.json").exists():
        return model_dir
    text = work / "corpus.txt"
    text.write_text("\n".join(r["text"] for r in corpus.documents()[0]), encoding="utf-8")
    train_tokenizer(TokenizeTrainConfig(corpus=(str(text),), output_dir=str(work / "tok"), vocab_size=4096))
    tok = load_tokenizer(str(work / "tok"))
    torch.manual_seed(0)
    model = build_model("llama-2-7b", overrides=ARCH, vocab_size=len(tok), seed=0)
    model.save_pretrained(model_dir)
    tok.save_pretrained(model_dir)
    return model_dir


def one_method(model_dir: str, method: str, out: str, eval_tokens: int) -> dict:
    """Runs in its own process (see main)."""
    from dataclasses import asdict

    from llmkit.config import QuantizeModelConfig
    from llmkit.quantize_model import quantize_model

    base, _, dq = method.partition("+")
    started = time.perf_counter()
    result = quantize_model(QuantizeModelConfig(model=model_dir, method=base, double_quant=bool(dq), output_dir=out,
                                                overwrite=True, eval_tokens=eval_tokens))
    report = asdict(result.report)
    report.pop("layers")
    if report["outliers"]:
        report["outliers"].pop("layers")
    return {"method": method, "wall_s": round(time.perf_counter() - started, 1),
            "peak_rss": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024, "report": report}


def merge_run(model_dir: str, work: str, verify: bool) -> dict:
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from llmkit.config import MergeConfig
    from llmkit.merge import merge_adapter

    adapter = Path(work) / "lora"
    if not (adapter / "adapter_config.json").exists():
        torch.manual_seed(0)
        model = get_peft_model(AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32),
                               LoraConfig(r=16, lora_alpha=32, target_modules=["q_proj", "k_proj", "v_proj", "o_proj"],
                                          init_lora_weights=False))
        model.save_pretrained(adapter)
    started = time.perf_counter()
    result = merge_adapter(MergeConfig(adapter=str(adapter), output_dir=str(Path(work) / "merged"), overwrite=True,
                                       verify=verify))
    v = result.verification
    return {"verify": verify, "wall_s": round(time.perf_counter() - started, 1),
            "merged_modules": result.merged_modules,
            "params": result.params, "files": len(result.files),
            "peak_rss": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
            "max_rel_logit_diff": v.max_rel_logit_diff if v else None, "kl_mean": v.kl_mean if v else None}


def _child(args: list[str]) -> dict:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    proc = subprocess.run([sys.executable, __file__, *args], capture_output=True, text=True, env=env)
    if proc.returncode:
        raise SystemExit(f"child {args} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--methods", default="int8,nf4,fp4,nf4+dq")
    parser.add_argument("--eval-tokens", type=int, default=2048)
    parser.add_argument("--work", default=str(ROOT / "benchmarks" / "_work" / "quantize_merge"))
    parser.add_argument("--skip-merge", action="store_true")
    parser.add_argument("--model", help="measure this (trained) model dir instead of the random-init one")
    parser.add_argument("--child", nargs="*", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        kind, *rest = args.child
        payload = one_method(*rest[:3], int(rest[3])) if kind == "quantize" else merge_run(rest[0], rest[1],
                                                                                             rest[2] == "1")
        print(json.dumps(payload))
        return
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    model_dir = Path(args.model) if args.model else build(work)
    rows = []
    for method in args.methods.split(","):
        with tempfile.TemporaryDirectory(dir=work) as tmp:
            rows.append(_child(["--child", "quantize", str(model_dir), method, str(Path(tmp) / "q"),
                                str(args.eval_tokens)]))
        print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
    r0 = rows[0]["report"]
    print(f"model: {r0['params_total']:,} parameters, {r0['params_quantized']:,} in {r0['quantized_layers']} "
          f"quantized linears; perplexity on {r0['perplexity']['tokens']} held-out tokens\n")
    print("| method | quantize s | whole run s | peak RSS | bits/param theory | achieved | on disk | disk | memory "
          "| mean rel. error | perplexity before → after | change |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for row in rows:
        r = row["report"]
        b, s, p = r["bits_per_param"], r["size"], r["perplexity"]
        print(f"| {row['method']} | {r['seconds']:.1f} | {row['wall_s']:.1f} | {row['peak_rss'] / 2**20:,.0f} MiB | "
              f"{b['theory']:.4f} | {b['achieved']:.4f} | {b['on_disk']:.4f} | {s['disk_before'] / 2**20:.0f} → "
              f"{s['disk_after'] / 2**20:.0f} MiB | {s['memory_before'] / 2**20:.0f} → {s['memory_after'] / 2**20:.0f} "
              f"MiB | {r['error']['mean_rel_frobenius']:.4f} | {p['before']:.2f} → {p['after']:.2f} | "
              f"{p['change_pct']:+.2f} % |")
        if r["outliers"]:
            o = r["outliers"]
            print(f"|  | LLM.int8 outliers: {o['outlier_columns']} of {o['columns']} input features "
                  f"({o['share']:.2%}) | | | | | | | | | | |")
    if not args.skip_merge:
        print("\n| merge (LoRA r 16 on q/k/v/o) | wall s | peak RSS | max rel. Δlogit | KL mean |")
        print("|---|---:|---:|---:|---:|")
        for verify in (False, True):
            m = _child(["--child", "merge", str(model_dir), str(work), "1" if verify else "0"])
            print(f"| {'with' if verify else 'without'} verification ({m['merged_modules']} layers, {m['files']} "
                  f"file(s)) | {m['wall_s']:.1f} | {m['peak_rss'] / 2**20:,.0f} MiB | "
                  f"{m['max_rel_logit_diff'] if m['max_rel_logit_diff'] is not None else '—'} | "
                  f"{m['kl_mean'] if m['kl_mean'] is not None else '—'} |")


if __name__ == "__main__":
    main()
