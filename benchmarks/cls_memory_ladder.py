"""The 4 GB lesson, measured (#10): fine-tune a 330M BERT-large-shaped classifier down the memory ladder.

    python benchmarks/cls_memory_ladder.py                  # every rung, prints a markdown table (~10 min on 2 cores)
    python benchmarks/cls_memory_ladder.py --rungs 0,3      # some rungs
    python benchmarks/cls_memory_ladder.py --micro-steps 2  # micro-batches measured per rung (batch-1 rungs)

Rungs (each adds to the one before): baseline (batch 32, length 128, AdamW) -> batch 1 with 32-step gradient
accumulation -> + gradient checkpointing -> + Adafactor -> + frozen encoder (--freeze-base: only the classifier
trains) -> + length 32. Each rung runs in a fresh subprocess: the model is built with llmkit (`build_model("bert-large",
"seq-cls")`, random initialisation: the point is memory), frozen with llmkit's `apply_freezing`, and trained the way
the HF Trainer does (forward with labels, backward, and after the micro-batches clip_grad_norm_, optimizer.step,
zero_grad(set_to_none=True)). One optimizer step is taken: the optimizer state is created there, so it holds the
peak of every later step too.

Measured per rung: on a GPU, torch.cuda.max_memory_allocated; on CPU, the process's peak RSS (ru_maxrss), and that
peak minus the RSS after the imports and a warm-up step of a tiny model (the per-process runtime, the CPU
counterpart of the CUDA context). Beside it, `llmkit memory-estimate --model bert-large --task seq-cls` with the
same flags: at --overhead 0 (tensors only, what the CPU figure measures) and with its default overhead (what a GPU
would need). Time per effective batch (32 sequences): one micro-batch of 32 for the baseline; for the batch-1 rungs
--micro-steps micro-batches run, the mean of all but the first (one-off set-up) is multiplied by 32, plus the
optimizer step. On a shared CPU the times are noisy; the memory figures are not.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PYTHON = sys.executable
EFFECTIVE_BATCH = 32
RUNGS = [
    ("baseline: batch 32, length 128, AdamW", dict(batch_size=32, grad_accum=1, seq_len=128)),
    ("batch 1 x 32 accumulation", dict(batch_size=1, grad_accum=32, seq_len=128)),
    ("+ gradient checkpointing", dict(batch_size=1, grad_accum=32, seq_len=128, grad_checkpointing=True)),
    ("+ Adafactor", dict(batch_size=1, grad_accum=32, seq_len=128, grad_checkpointing=True, optimizer="adafactor")),
    ("+ frozen encoder", dict(batch_size=1, grad_accum=32, seq_len=128, grad_checkpointing=True,
                              optimizer="adafactor", freeze_base=True)),
    ("+ length 32", dict(batch_size=1, grad_accum=32, seq_len=32, grad_checkpointing=True, optimizer="adafactor",
                         freeze_base=True)),
]


def _flags(options: dict) -> str:
    parts = [f"--batch-size {options['batch_size']}", f"--seq-len {options['seq_len']}"]
    if options["grad_accum"] > 1:
        parts.append(f"--grad-accum {options['grad_accum']}")
    if options.get("grad_checkpointing"):
        parts.append("--grad-checkpointing")
    if options.get("optimizer"):
        parts.append(f"--optimizer {options['optimizer']}")
    if options.get("freeze_base"):
        parts.append("--freeze-base")
    return " ".join(parts)


# ------------------------------------------------------------------------------------- the measured side

def _rss_bytes() -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


def worker(options: dict, micro_steps: int, device: str) -> dict:
    import gc
    import resource

    import torch

    sys.path.insert(0, str(ROOT / "src"))
    from llmkit.modeling import build_model
    from llmkit.training.trainer import apply_freezing, parameter_counts

    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    # warm-up: a 1-block, 64-wide BERT classifier's step loads the kernels and thread pools (per-process runtime)
    tiny = build_model("bert-large", "seq-cls", seed=0, overrides=dict(hidden_size=64, intermediate_size=128,
                                                                        num_hidden_layers=1, num_attention_heads=4,
                                                                        vocab_size=128)).to(device)
    ids = torch.randint(0, 128, (1, 8), device=device)
    tiny(input_ids=ids, labels=torch.zeros(1, dtype=torch.long, device=device)).loss.backward()
    del tiny, ids
    gc.collect()
    baseline_rss = _rss_bytes()

    model = build_model("bert-large", "seq-cls", seed=0, overrides=dict(num_labels=2)).to(device)
    model.train()
    if options.get("grad_checkpointing"):
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    apply_freezing(model, bool(options.get("freeze_base")), None)
    total, trainable_count = parameter_counts(model)
    trainable = [p for p in model.parameters() if p.requires_grad]
    if options.get("optimizer") == "adafactor":
        from transformers.optimization import Adafactor

        optimizer = Adafactor(trainable, lr=2e-5, scale_parameter=False, relative_step=False)   # the Trainer's
    else:
        optimizer = torch.optim.AdamW(trainable, lr=2e-5, foreach=True)
    b, s = options["batch_size"], options["seq_len"]
    steps = 1 if options["grad_accum"] == 1 else micro_steps
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    generator = torch.Generator().manual_seed(0)
    micro_times = []
    for _ in range(steps):
        ids = torch.randint(0, 30522, (b, s), generator=generator).to(device)
        labels = torch.randint(0, 2, (b,), generator=generator).to(device)
        started = time.perf_counter()
        loss = model(input_ids=ids, attention_mask=torch.ones_like(ids), labels=labels).loss / options["grad_accum"]
        loss.backward()
        if device == "cuda":
            torch.cuda.synchronize()
        micro_times.append(time.perf_counter() - started)
        del loss
    started = time.perf_counter()
    torch.nn.utils.clip_grad_norm_(trainable, 1.0)
    optimizer.step()
    model.zero_grad(set_to_none=True)
    if device == "cuda":
        torch.cuda.synchronize()
    step_time = time.perf_counter() - started
    peak_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    timed = micro_times[1:] if len(micro_times) > 1 else micro_times   # the first call pays one-off set-up
    micro = sum(timed) / len(timed)
    result = {"params": total, "trainable": trainable_count, "micro_steps": steps, "micro_s": micro,
              "step_s": step_time, "effective_batch_s": micro * options["grad_accum"] + step_time,
              "peak_rss": peak_rss, "baseline_rss": baseline_rss, "threads": torch.get_num_threads()}
    if device == "cuda":
        result["cuda_peak"] = torch.cuda.max_memory_allocated()
    return result


# ------------------------------------------------------------------------------------ the estimated side

def estimate(options: dict, overhead: str | None):
    sys.path.insert(0, str(ROOT / "src"))
    from llmkit.config import MemoryEstimateConfig
    from llmkit.memory import estimate as run

    return run(MemoryEstimateConfig(model="bert-large", task="seq-cls", overhead=overhead, gpu_memory="4GiB",
                                    **options))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rungs", default=None, help="comma-separated rung numbers (default: all)")
    parser.add_argument("--micro-steps", type=int, default=3, help="micro-batches timed on the batch-1 rungs")
    parser.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    parser.add_argument("--threads", type=int, default=1,
                        help="CPU threads per rung (default 1: on a shared 2-core machine two threads spin against "
                             "other processes and batch-1 steps ran several times slower)")
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker is not None:
        spec = json.loads(args.worker)
        print(json.dumps(worker(spec["options"], spec["micro_steps"], spec["device"])))
        return
    device = args.device
    if device is None:
        import torch

        device = "cuda" if torch.cuda.is_available() else "cpu"
    pick = None if args.rungs is None else {int(i) for i in args.rungs.split(",")}
    gib = 2 ** 30
    measured_name = "cuda max allocated GiB" if device == "cuda" else "process peak GiB (above runtime)"
    print(f"| rung | memory-estimate flags | estimate GiB (overhead 0) | estimate GiB (default overhead) | fits 4 GiB "
          f"| {measured_name} | s per effective batch of 32 |")
    print("|---|---|---:|---:|---|---:|---:|")
    for index, (name, options) in enumerate(RUNGS):
        if pick is not None and index not in pick:
            continue
        tensors, with_overhead = estimate(options, "0"), estimate(options, None)
        spec = json.dumps({"options": options, "micro_steps": args.micro_steps, "device": device})
        started = time.time()
        proc = subprocess.run([PYTHON, __file__, "--worker", spec], capture_output=True, text=True,
                              env={**os.environ, "OMP_NUM_THREADS": str(args.threads),
                                   "TOKENIZERS_PARALLELISM": "false", "MALLOC_MMAP_THRESHOLD_": "65536"})
        if proc.returncode != 0:
            raise SystemExit(f"{name}: worker failed\n{proc.stderr[-3000:]}")
        m = json.loads(proc.stdout.strip().splitlines()[-1])
        if device == "cuda":
            shown = f"{m['cuda_peak'] / gib:.2f}"
        else:
            shown = f"{m['peak_rss'] / gib:.2f} ({(m['peak_rss'] - m['baseline_rss']) / gib:.2f})"
        timing = f"{m['effective_batch_s']:,.1f}" + ("" if options["grad_accum"] == 1 else
                                                     f" ({m['micro_s']:.2f} s × 32 + {m['step_s']:.2f} s step)")
        print(f"| {name} | `{_flags(options)}` | {tensors.per_device['total'] / gib:.2f} | "
              f"{with_overhead.per_device['total'] / gib:.2f} | {'yes' if with_overhead.fits else 'no'} | {shown} | "
              f"{timing} |", flush=True)
        print(f"  {name}: {m['params']:,} params, {m['trainable']:,} trainable, {m['micro_steps']} micro-batch(es) "
              f"timed, {m['threads']} threads, runtime baseline {m['baseline_rss'] / gib:.2f} GiB, "
              f"{time.time() - started:.0f} s wall", file=sys.stderr, flush=True)


if __name__ == "__main__":
    main()
