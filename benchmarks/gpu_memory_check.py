"""Check `llmkit memory-estimate` against measured GPU memory (issue #18).

    python benchmarks/gpu_memory_check.py                     # every configuration, a table and gpu_memory_check.json
    python benchmarks/gpu_memory_check.py --configs 0,3 --json out.json

On a machine without CUDA it prints "no CUDA: nothing measured" and exits 0.

Each configuration runs in a fresh subprocess (its own CUDA context, an empty caching allocator): it builds a
random-init LLaMA (~170M parameters) or GPT-2 (124M) from a config (nothing is downloaded), prepares it the way
llmkit's training commands do (full training, LoRA through peft, or QLoRA: bitsandbytes NF4 from a bf16 checkpoint
saved locally, then peft's prepare_model_for_kbit_training), runs one training step as the HF Trainer does (forward
with labels under optional autocast, backward, clip_grad_norm_, optimizer.step, zero_grad(set_to_none=True)) to
create the optimizer state, then measures a second step:
  * allocated: torch.cuda.max_memory_allocated() over that step (the tensors alone), against the estimate at
    --overhead 0;
  * nvidia-smi: the highest memory.used of the GPU while the subprocess lived, less memory.used before it started
    (the CUDA context, the allocator's reserve and the first step included), against the estimate with its default
    overhead row (CUDA context + allocator reserve).
The estimate is llmkit.memory.estimate(MemoryEstimateConfig(..., device="cuda")) for the same settings.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PYTHON = sys.executable
NO_CUDA = "no CUDA: nothing measured"
TOLERANCE = 0.10        # issue #18: every GPU row within 10 %
POLL_SECONDS = 0.05

LLAMA_170M = dict(model_type="llama", hidden_size=1024, intermediate_size=2816, num_hidden_layers=8,
                  num_attention_heads=16, num_key_value_heads=16, vocab_size=32000, max_position_embeddings=2048,
                  hidden_act="silu", tie_word_embeddings=False, attention_dropout=0.0)
GPT2_124M = dict(model_type="gpt2", n_embd=768, n_inner=3072, n_layer=12, n_head=12, vocab_size=50257,
                 n_positions=1024)

# name, model fields, memory-estimate options (the worker reads the same options)
CONFIGS = [
    ("llama full fp32 b4 s512", LLAMA_170M, dict(batch_size=4, seq_len=512)),
    ("llama full fp32 b4 s512 ckpt", LLAMA_170M, dict(batch_size=4, seq_len=512, grad_checkpointing=True)),
    ("llama full bf16-autocast b4 s512", LLAMA_170M, dict(batch_size=4, seq_len=512, mixed_precision="bf16")),
    ("llama full fp16-autocast b4 s512", LLAMA_170M, dict(batch_size=4, seq_len=512, mixed_precision="fp16")),
    ("llama full bf16-autocast b8 s512 ckpt", LLAMA_170M,
     dict(batch_size=8, seq_len=512, mixed_precision="bf16", grad_checkpointing=True)),
    ("llama lora q,v fp32 b4 s512", LLAMA_170M, dict(batch_size=4, seq_len=512, peft="lora")),
    ("llama lora q,v bf16 base b8 s512", LLAMA_170M, dict(batch_size=8, seq_len=512, peft="lora", precision="bf16")),
    ("llama lora all-linear bf16 base b8 s512 ckpt", LLAMA_170M,
     dict(batch_size=8, seq_len=512, peft="lora", precision="bf16", lora_targets=("all-linear",),
          grad_checkpointing=True)),
    ("llama qlora nf4 bf16-autocast b4 s512", LLAMA_170M,
     dict(batch_size=4, seq_len=512, peft="lora", quant="nf4", mixed_precision="bf16")),
    ("llama qlora nf4 bf16-autocast b8 s512 ckpt", LLAMA_170M,
     dict(batch_size=8, seq_len=512, peft="lora", quant="nf4", mixed_precision="bf16", grad_checkpointing=True)),
    ("gpt2 full fp32 b4 s512", GPT2_124M, dict(batch_size=4, seq_len=512)),
    ("gpt2 full bf16-autocast b4 s512", GPT2_124M, dict(batch_size=4, seq_len=512, mixed_precision="bf16")),
    ("gpt2 full fp16-autocast b4 s512 ckpt", GPT2_124M,
     dict(batch_size=4, seq_len=512, mixed_precision="fp16", grad_checkpointing=True)),
    ("gpt2 lora c_attn fp32 b8 s512", GPT2_124M,
     dict(batch_size=8, seq_len=512, peft="lora", lora_targets=("c_attn",))),
    ("gpt2 lora c_attn bf16 base b8 s512 ckpt", GPT2_124M,
     dict(batch_size=8, seq_len=512, peft="lora", lora_targets=("c_attn",), precision="bf16",
          grad_checkpointing=True)),
]


# ---------------------------------------------------------------------------------------------------------------
# the estimated side (no torch)

def estimate_for(fields: dict, options: dict, workdir: Path, overhead: str | None):
    """memory-estimate of one configuration on CUDA (overhead "0": the tensors alone; None: the default row)."""
    sys.path.insert(0, str(ROOT / "src"))
    from llmkit.config import MemoryEstimateConfig
    from llmkit.memory import estimate

    path = workdir / f"{fields['model_type']}-config.json"
    path.write_text(json.dumps(fields))
    return estimate(MemoryEstimateConfig(model=str(path), device="cuda", overhead=overhead, **options))


# ---------------------------------------------------------------------------------------------------------------
# the measured side (a fresh subprocess per configuration)

def _model(fields: dict, options: dict, workdir: Path):
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.for_model(**fields)
    if options.get("quant", "none") == "none":
        model = AutoModelForCausalLM.from_config(config)
        if options.get("precision") == "bf16":
            model = model.to(torch.bfloat16)
        return model.cuda()
    from peft import prepare_model_for_kbit_training
    from transformers import BitsAndBytesConfig

    # QLoRA as llmkit peft runs it: a 16-bit checkpoint quantized by bitsandbytes while it loads onto the GPU
    checkpoint = workdir / "bf16-checkpoint"
    AutoModelForCausalLM.from_config(config).to(torch.bfloat16).save_pretrained(checkpoint)
    quantization = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type=options["quant"],
                                      bnb_4bit_use_double_quant=options.get("double_quant", False),
                                      bnb_4bit_compute_dtype=torch.bfloat16)
    model = AutoModelForCausalLM.from_pretrained(checkpoint, quantization_config=quantization, device_map={"": 0})
    return prepare_model_for_kbit_training(model, use_gradient_checkpointing=options.get("grad_checkpointing", False))


def worker(spec: dict) -> dict:
    import torch

    torch.manual_seed(0)
    fields, options = spec["fields"], spec["options"]
    with tempfile.TemporaryDirectory() as tmp:
        model = _model(fields, options, Path(tmp))
    model.train()
    if options.get("grad_checkpointing"):
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    if options.get("peft") == "lora":
        from peft import LoraConfig, get_peft_model

        targets = list(options.get("lora_targets", ("q_proj", "v_proj")))
        model = get_peft_model(model, LoraConfig(r=options.get("lora_rank", 8), lora_alpha=16,
                                                 target_modules="all-linear" if targets == ["all-linear"] else targets))
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=1e-4, fused=True)   # adamw-fused: the estimate's default
    mixed = options.get("mixed_precision", "no")
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(mixed)
    scaler = torch.amp.GradScaler("cuda", enabled=mixed == "fp16")   # the Trainer's fp16 loss scaling
    b, s = options["batch_size"], options["seq_len"]

    def step():
        ids = torch.randint(0, fields["vocab_size"], (b, s), device="cuda")
        with torch.autocast("cuda", dtype=dtype or torch.float32, enabled=dtype is not None):
            loss = model(input_ids=ids, attention_mask=torch.ones_like(ids), labels=ids).loss
        scaler.scale(loss).backward()
        scaler.unscale_(optimizer)
        torch.nn.utils.clip_grad_norm_(trainable, 1.0)
        scaler.step(optimizer)
        scaler.update()
        model.zero_grad(set_to_none=True)

    step()
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    step()
    torch.cuda.synchronize()
    return {"allocated": torch.cuda.max_memory_allocated(), "reserved": torch.cuda.max_memory_reserved(),
            "params": sum(p.numel() for p in model.parameters()), "trainable": sum(p.numel() for p in trainable)}


def _gpu_memory_used() -> int:
    """memory.used of GPU 0 in bytes, from nvidia-smi."""
    out = subprocess.run(["nvidia-smi", "--query-gpu=memory.used", "--format=csv,noheader,nounits", "--id=0"],
                         capture_output=True, text=True, check=True).stdout
    return int(out.strip().splitlines()[0]) * 2**20


def _measure(name: str, fields: dict, options: dict) -> dict:
    """Runs the worker in a fresh process while a thread polls nvidia-smi for the GPU's highest memory.used."""
    smi = shutil.which("nvidia-smi") is not None
    before = _gpu_memory_used() if smi else 0
    highest = [before]
    done = threading.Event()

    def poll():
        while not done.is_set():
            highest[0] = max(highest[0], _gpu_memory_used())
            time.sleep(POLL_SECONDS)

    poller = threading.Thread(target=poll, daemon=True)
    if smi:
        poller.start()
    spec = json.dumps({"fields": fields, "options": options})
    proc = subprocess.run([PYTHON, __file__, "--worker", spec], capture_output=True, text=True,
                          env={**os.environ, "TOKENIZERS_PARALLELISM": "false"})
    done.set()
    if smi:
        poller.join()
    if proc.returncode != 0:
        raise SystemExit(f"{name}: worker failed\n{proc.stderr[-3000:]}")
    measured = json.loads(proc.stdout.strip().splitlines()[-1])
    measured["nvidia_smi"] = highest[0] - before if smi else None
    return measured


def run(pick: list[int] | None) -> tuple[list[dict], bool]:
    rows, ok = [], True
    with tempfile.TemporaryDirectory() as tmp:
        for index, (name, fields, options) in enumerate(CONFIGS):
            if pick is not None and index not in pick:
                continue
            tensors = estimate_for(fields, options, Path(tmp), overhead="0")
            with_overhead = estimate_for(fields, options, Path(tmp), overhead=None)
            started = time.time()
            measured = _measure(name, fields, options)
            row = {"name": name, "options": options, "params": tensors.params_total,
                   "estimate_tensors": tensors.per_device["total"], "allocated": measured["allocated"],
                   "allocated_error": tensors.per_device["total"] / measured["allocated"] - 1,
                   "estimate_total": with_overhead.per_device["total"], "nvidia_smi": measured["nvidia_smi"],
                   "reserved": measured["reserved"], "peak_phase": tensors.peak_phase,
                   "seconds": round(time.time() - started, 1)}
            if measured["nvidia_smi"]:
                row["nvidia_smi_error"] = with_overhead.per_device["total"] / measured["nvidia_smi"] - 1
            ok &= abs(row["allocated_error"]) <= TOLERANCE and abs(row.get("nvidia_smi_error", 0)) <= TOLERANCE
            rows.append(row)
            print(_table_row(row), file=sys.stderr, flush=True)
    return rows, ok


def _mib(n: int | None) -> str:
    return "-" if n is None else f"{n / 2**20:,.0f}"


def _table_row(row: dict) -> str:
    smi_error = f"{row['nvidia_smi_error']:+.1%}" if "nvidia_smi_error" in row else "-"
    return (f"| {row['name']} | {row['params'] / 1e6:.0f}M | {_mib(row['estimate_tensors'])} | "
            f"{_mib(row['allocated'])} | {row['allocated_error']:+.1%} | {_mib(row['estimate_total'])} | "
            f"{_mib(row['nvidia_smi'])} | {smi_error} | {row['peak_phase']} |")


def table(rows: list[dict]) -> str:
    head = ["| configuration | params | estimate (tensors) MiB | max_memory_allocated MiB | error | "
            "estimate (total) MiB | nvidia-smi MiB | error | phase |", "|---|---:|---:|---:|---:|---:|---:|---:|---|"]
    return "\n".join(head + [_table_row(r) for r in rows])


def cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--configs", help="comma-separated indices of CONFIGS to run (default: all)")
    parser.add_argument("--json", default=str(Path(__file__).resolve().parent / "gpu_memory_check.json"),
                        help="where the rows go (default: benchmarks/gpu_memory_check.json)")
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker(json.loads(args.worker))))
        return
    if not cuda_available():
        print(NO_CUDA)
        return
    pick = [int(i) for i in args.configs.split(",")] if args.configs else None
    rows, ok = run(pick)
    Path(args.json).write_text(json.dumps({"rows": rows, "within_tolerance": ok, "tolerance": TOLERANCE}, indent=1))
    print(table(rows))
    print(f"every row within {TOLERANCE:.0%}: {ok}; rows in {args.json}")


if __name__ == "__main__":
    main()
