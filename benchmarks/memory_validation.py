"""Check `llmkit memory-estimate` against measured memory, and time it.

    python benchmarks/memory_validation.py                 # everything below, prints markdown tables
    python benchmarks/memory_validation.py --write-results # ... and replaces `## memory-estimate` in RESULTS.md
    python benchmarks/memory_validation.py --only validation|startup|deepspeed

validation: for each configuration (LLaMA-, BERT-, GPT-2-, T5- and mT5-shaped models of 60-110M parameters) a
  fresh subprocess builds the model with transformers, runs one training step the way the HF Trainer does (forward with labels under optional
  bf16 autocast, backward, clip_grad_norm_, optimizer.step, zero_grad(set_to_none=True)) to create the optimizer
  state, then measures a second step:
    * live peak: bytes of live tensors at the start of the step (parameters, buffers, optimizer state) plus the
      highest running sum of the CPU allocator's allocations and frees recorded by torch.profiler(profile_memory)
    * RSS peak: the process's peak resident set (ru_maxrss) minus its RSS after the imports and a warm-up step of
      a tiny model (the ~100 MiB of lazily loaded kernels and thread pools are a per-process constant, like the
      CUDA context that --overhead covers), with glibc's mmap threshold pinned (see MMAP_THRESHOLD)
  and compares both with the estimate at --overhead 0 (the estimate is a steady-state peak, which both steps reach).
  `--device cuda` (not run yet: no GPU here) measures torch.cuda.max_memory_allocated instead.
startup: median wall time of `llmkit memory-estimate --params 1.4B` against `python -c "import typer.rich_utils"`,
  and the time of the whole --plan search.
deepspeed: model-state memory for ZeRO-2/3 with and without offload from DeepSpeed's own estimators beside
  llmkit's weights + gradients + optimizer rows.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# glibc raises its mmap threshold after the first large free, after which freed tensors stay in the heap and RSS
# keeps memory no tensor uses (about +20 % here). Pinning the threshold makes every tensor over 64 KiB its own
# mapping, returned on free, so RSS shows what the process needs rather than what glibc kept. --glibc-default
# measures without it.
MMAP_THRESHOLD = 65536
PIN_MMAP = True
RESULTS = Path(__file__).resolve().parent / "RESULTS.md"
PYTHON = sys.executable

LLAMA_110M = dict(model_type="llama", hidden_size=768, intermediate_size=2048, num_hidden_layers=8,
                  num_attention_heads=12, num_key_value_heads=12, vocab_size=32000, max_position_embeddings=1024,
                  hidden_act="silu", tie_word_embeddings=False, attention_dropout=0.0)
BERT_BASE = dict(model_type="bert", hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
                 num_attention_heads=12, vocab_size=30522, max_position_embeddings=512, type_vocab_size=2,
                 hidden_act="gelu", hidden_dropout_prob=0.1, attention_probs_dropout_prob=0.1,
                 tie_word_embeddings=True)
# GPT-2 with its defaults: gelu_new, dropout 0.1 everywhere, tied head
GPT2_85M = dict(model_type="gpt2", n_embd=768, n_inner=3072, n_layer=8, n_head=12, vocab_size=32000, n_positions=1024)
# t5-small (relu feed-forward, tied head) and an mT5-small-shaped model (gated-gelu, untied head) with a 32k vocabulary
T5_SMALL = dict(model_type="t5", d_model=512, d_ff=2048, num_layers=6, num_decoder_layers=6, num_heads=8, d_kv=64,
                vocab_size=32128, feed_forward_proj="relu", dropout_rate=0.1, decoder_start_token_id=0,
                pad_token_id=0)
MT5_SMALL = dict(model_type="mt5", d_model=512, d_ff=1024, num_layers=8, num_decoder_layers=8, num_heads=6, d_kv=64,
                 vocab_size=32000, feed_forward_proj="gated-gelu", tie_word_embeddings=False, dropout_rate=0.1,
                 decoder_start_token_id=0, pad_token_id=0)
SEQ2SEQ_TYPES = ("t5", "mt5")

# name, model fields, llmkit memory-estimate options
CONFIGS = [
    ("llama fp32 adamw b2 s256", LLAMA_110M, dict(batch_size=2, seq_len=256)),
    ("llama fp32 adamw b4 s256", LLAMA_110M, dict(batch_size=4, seq_len=256)),
    ("llama fp32 adamw b4 s256 ckpt", LLAMA_110M, dict(batch_size=4, seq_len=256, grad_checkpointing=True)),
    ("llama bf16-autocast adamw b1 s128", LLAMA_110M, dict(batch_size=1, seq_len=128, mixed_precision="bf16")),
    ("llama fp32 adafactor b2 s256", LLAMA_110M, dict(batch_size=2, seq_len=256, optimizer="adafactor")),
    ("llama fp32 sgd-momentum b2 s256", LLAMA_110M, dict(batch_size=2, seq_len=256, optimizer="sgd-momentum")),
    ("llama fp32 lora q,v r8 b2 s256", LLAMA_110M, dict(batch_size=2, seq_len=256, peft="lora")),
    ("llama fp32 lora all-linear r16 b4 s256", LLAMA_110M,
     dict(batch_size=4, seq_len=256, peft="lora", lora_rank=16, lora_targets=("all-linear",))),
    ("bert fp32 adamw mlm b4 s128 eager", BERT_BASE, dict(batch_size=4, seq_len=128, attention="eager")),
    ("bert fp32 adamw mlm b8 s128 eager ckpt", BERT_BASE,
     dict(batch_size=8, seq_len=128, attention="eager", grad_checkpointing=True)),
    ("bert fp32 seq-cls frozen base b8 s128", BERT_BASE,
     dict(batch_size=8, seq_len=128, attention="eager", task="seq-cls", freeze_base=True)),
    ("bert bf16-autocast adamw mlm b2 s64 eager", BERT_BASE,
     dict(batch_size=2, seq_len=64, attention="eager", mixed_precision="bf16")),
    # SGD keeps no state, so these peaks are mostly activations: they test the activation terms
    ("llama fp32 sgd b8 s256", LLAMA_110M, dict(batch_size=8, seq_len=256, optimizer="sgd")),
    ("llama fp32 sgd b8 s256 ckpt", LLAMA_110M,
     dict(batch_size=8, seq_len=256, optimizer="sgd", grad_checkpointing=True)),
    ("llama fp32 sgd b4 s256 eager", LLAMA_110M, dict(batch_size=4, seq_len=256, optimizer="sgd", attention="eager")),
    ("llama bf16-autocast sgd b2 s128", LLAMA_110M,
     dict(batch_size=2, seq_len=128, optimizer="sgd", mixed_precision="bf16")),
    ("bert fp32 sgd mlm b16 s128 eager", BERT_BASE,
     dict(batch_size=16, seq_len=128, optimizer="sgd", attention="eager")),
    ("bert bf16-autocast sgd mlm b4 s64 eager", BERT_BASE,
     dict(batch_size=4, seq_len=64, optimizer="sgd", attention="eager", mixed_precision="bf16")),
    # issue #18: GPT-2, T5 and mT5 (eager attention: their dropout makes CPU sdpa fall back to it anyway)
    ("gpt2 fp32 adamw b4 s256 eager", GPT2_85M, dict(batch_size=4, seq_len=256, attention="eager")),
    ("gpt2 fp32 sgd b8 s256 eager", GPT2_85M, dict(batch_size=8, seq_len=256, optimizer="sgd", attention="eager")),
    ("gpt2 fp32 lora c_attn r8 b4 s256 eager", GPT2_85M,
     dict(batch_size=4, seq_len=256, attention="eager", peft="lora", lora_targets=("c_attn",))),
    ("gpt2 bf16-autocast sgd b2 s128 eager", GPT2_85M,
     dict(batch_size=2, seq_len=128, optimizer="sgd", attention="eager", mixed_precision="bf16")),
    ("t5 fp32 adamw seq2seq b4 s128 eager", T5_SMALL, dict(batch_size=4, seq_len=128, attention="eager")),
    ("t5 fp32 sgd seq2seq b8 s128 eager", T5_SMALL, dict(batch_size=8, seq_len=128, optimizer="sgd", attention="eager")),
    ("t5 fp32 lora q,v r8 b8 s128 eager", T5_SMALL,
     dict(batch_size=8, seq_len=128, attention="eager", peft="lora", lora_targets=("q", "v"))),
    ("mt5 fp32 adamw seq2seq b4 s128 eager", MT5_SMALL, dict(batch_size=4, seq_len=128, attention="eager")),
    ("mt5 fp32 sgd seq2seq b8 s128 eager", MT5_SMALL,
     dict(batch_size=8, seq_len=128, optimizer="sgd", attention="eager")),
]


# ---------------------------------------------------------------------------------------------------------------
# the measured side (runs in a fresh subprocess)

def _rss_bytes() -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


def _warm_up_runtime(fields: dict, device: str) -> None:
    """One step of a 1-block, 64-wide model of the same type, then freed: the kernels, thread pools and library
    code that the first forward/backward loads lazily (about 100 MiB of RSS here, whatever the model size) belong
    to the process baseline - the CPU counterpart of the CUDA context that the overhead row stands for."""
    import gc

    import torch
    from transformers import AutoConfig

    small = dict(fields, vocab_size=128)
    small.update({key: 64 for key in ("hidden_size", "n_embd", "d_model") if key in fields})
    small.update({key: 128 for key in ("intermediate_size", "n_inner", "d_ff") if key in fields})
    small.update({key: 1 for key in ("num_hidden_layers", "n_layer", "num_layers", "num_decoder_layers")
                  if key in fields})
    small.update({key: 4 for key in ("num_attention_heads", "n_head", "num_heads") if key in fields})
    small.update({"d_kv": 16} if "d_kv" in fields else {})
    small.pop("num_key_value_heads", None)
    model = _auto_class(fields["model_type"], None).from_config(AutoConfig.for_model(**small)).to(device)
    ids = torch.randint(0, 128, (1, 8), device=device)
    for autocast in (False, True):
        with torch.autocast(device, dtype=torch.bfloat16, enabled=autocast):
            loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
    del model, loss
    gc.collect()


def _auto_class(model_type: str, task: str | None):
    from transformers import (AutoModelForCausalLM, AutoModelForMaskedLM, AutoModelForSeq2SeqLM,
                              AutoModelForSequenceClassification)

    task = task or ("masked-lm" if model_type == "bert" else "seq2seq" if model_type in SEQ2SEQ_TYPES
                    else "causal-lm")
    return {"causal-lm": AutoModelForCausalLM, "masked-lm": AutoModelForMaskedLM, "seq2seq": AutoModelForSeq2SeqLM,
            "seq-cls": AutoModelForSequenceClassification}[task]


def worker(spec: dict) -> dict:
    import resource

    import torch
    import transformers  # noqa: F401  (part of the post-import baseline)
    from transformers import AutoConfig

    torch.set_num_threads(2)
    torch.manual_seed(0)
    device = spec["device"]
    fields, opts = spec["fields"], spec["options"]
    _warm_up_runtime(fields, device)
    baseline_rss = _rss_bytes()
    config = AutoConfig.for_model(**fields)
    task = opts.get("task")
    model = _auto_class(fields["model_type"], task).from_config(
        config, attn_implementation=opts.get("attention", "sdpa")).to(device)
    if fields["model_type"] == "mt5" and not fields.get("tie_word_embeddings", True):
        # from_config ties mT5's head to the embedding whatever the config says; real checkpoints ship their own
        # lm_head, which from_pretrained loads untied (what the estimate counts)
        model.lm_head.weight = torch.nn.Parameter(torch.randn_like(model.lm_head.weight))
    model.train()
    if opts.get("grad_checkpointing"):
        model.gradient_checkpointing_enable()
    if opts.get("peft") == "lora":
        from peft import LoraConfig, get_peft_model

        targets = list(opts.get("lora_targets", ("q_proj", "v_proj")))
        model = get_peft_model(model, LoraConfig(r=opts.get("lora_rank", 8), lora_alpha=16,
                                                 target_modules="all-linear" if targets == ["all-linear"] else targets))
    if opts.get("freeze_base"):
        for name, param in model.named_parameters():
            param.requires_grad = name.startswith("classifier")
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer_name = opts.get("optimizer", "adamw-fused")   # memory-estimate's and the training commands' default
    if optimizer_name == "adamw-fused":
        optimizer = torch.optim.AdamW(trainable, lr=1e-4, fused=True)
    elif optimizer_name == "adamw":
        optimizer = torch.optim.AdamW(trainable, lr=1e-4, foreach=True)
    elif optimizer_name == "adafactor":
        from transformers.optimization import Adafactor

        optimizer = Adafactor(trainable, lr=1e-4, scale_parameter=False, relative_step=False)  # the Trainer's
    elif optimizer_name == "sgd-momentum":
        optimizer = torch.optim.SGD(trainable, lr=1e-3, momentum=0.9, foreach=True)
    else:
        optimizer = torch.optim.SGD(trainable, lr=1e-3, foreach=True)
    b, s = opts["batch_size"], opts["seq_len"]
    autocast = opts.get("mixed_precision", "no") == "bf16"

    def step():
        ids = torch.randint(0, fields["vocab_size"], (b, s), device=device)
        batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids),
                 "labels": torch.randint(0, 2, (b,), device=device) if task == "seq-cls" else ids.clone()}
        with torch.autocast(device, dtype=torch.bfloat16, enabled=autocast):
            loss = model(**batch).loss          # the Trainer keeps only the loss, not the outputs
        loss.backward()
        torch.nn.utils.clip_grad_norm_(trainable, 1.0)
        optimizer.step()
        model.zero_grad(set_to_none=True)

    step()   # creates the optimizer state: the second step is the steady state the estimate describes
    result = {"params": sum(p.numel() for p in model.parameters()),
              "trainable": sum(p.numel() for p in trainable)}
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
        step()
        torch.cuda.synchronize()
        result["live_peak"] = torch.cuda.max_memory_allocated()
    else:
        storages = {}
        tensors = list(model.parameters()) + list(model.buffers())
        for state in optimizer.state.values():
            tensors += [v for v in state.values() if torch.is_tensor(v)]
        for tensor in tensors:
            storage = tensor.untyped_storage()
            storages[storage.data_ptr()] = storage.nbytes()
        live_at_start = sum(storages.values())
        from torch.profiler import ProfilerActivity, profile

        with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
            step()
        events = sorted((e.start_ns(), e.nbytes()) for e in prof.profiler.kineto_results.events()
                        if e.name() == "[memory]" and e.device_type() == torch.autograd.DeviceType.CPU)
        running = highest = 0
        for _, nbytes in events:
            running += nbytes
            highest = max(highest, running)
        result["live_peak"] = live_at_start + highest
    result["rss_peak"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - baseline_rss
    return result


# ---------------------------------------------------------------------------------------------------------------
# the estimated side

def llmkit_estimate(fields: dict, options: dict, workdir: Path, device: str = "cpu"):
    sys.path.insert(0, str(ROOT / "src"))
    from llmkit.memory import estimate
    from llmkit.config import MemoryEstimateConfig

    path = workdir / f"{fields['model_type']}-config.json"
    path.write_text(json.dumps(fields))
    return estimate(MemoryEstimateConfig(model=str(path), overhead="0", device=device, **options))


def run_validation(device: str, pick: list[int] | None = None) -> tuple[str, bool]:
    rows = ["| configuration | params | estimate MiB | live peak MiB | error | RSS peak MiB | error | phase |",
            "|---|---:|---:|---:|---:|---:|---:|---|"]
    ok = True
    with tempfile.TemporaryDirectory() as tmp:
        for index, (name, fields, options) in enumerate(CONFIGS):
            if pick is not None and index not in pick:
                continue
            est = llmkit_estimate(fields, options, Path(tmp), device)
            spec = json.dumps({"fields": fields, "options": options, "device": device})
            started = time.time()
            proc = subprocess.run([PYTHON, __file__, "--worker", spec], capture_output=True, text=True,
                                  env={**os.environ, "OMP_NUM_THREADS": "2", "TOKENIZERS_PARALLELISM": "false",
                                       **({"MALLOC_MMAP_THRESHOLD_": str(MMAP_THRESHOLD)} if PIN_MMAP else {})})
            if proc.returncode != 0:
                raise SystemExit(f"{name}: worker failed\n{proc.stderr[-3000:]}")
            measured = json.loads(proc.stdout.strip().splitlines()[-1])
            total = est.per_device["total"]
            live_err = total / measured["live_peak"] - 1
            rss_err = total / measured["rss_peak"] - 1
            ok &= abs(live_err) <= 0.10 and abs(rss_err) <= 0.15
            if measured["params"] != est.params_total + (est.params_trainable if options.get("peft") else 0):
                print(f"warning: {name}: measured {measured['params']:,} params, estimated {est.params_total:,}",
                      file=sys.stderr)
            rows.append(f"| {name} | {est.params_total / 1e6:.1f}M | {total / 2**20:,.0f} | "
                        f"{measured['live_peak'] / 2**20:,.0f} | {live_err:+.1%} | "
                        f"{measured['rss_peak'] / 2**20:,.0f} | {rss_err:+.1%} | {est.peak_phase} |")
            print(rows[-1], f"({time.time() - started:.0f} s)", file=sys.stderr, flush=True)
    return "\n".join(rows), ok


# ---------------------------------------------------------------------------------------------------------------
# start-up and plan-search time

def _median_seconds(command: list[str], runs: int) -> float:
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        subprocess.run(command, check=True, capture_output=True, cwd=ROOT)
        times.append(time.perf_counter() - started)
    return statistics.median(times)


TRIVIAL_TYPER_APP = """
import typer

app = typer.Typer()


@app.command()
def main(params: str = "1"):
    from rich.console import Console
    from rich.table import Table

    table = Table()
    table.add_column("params")
    table.add_row(params)
    Console().print(table)


app()
"""


def run_startup(runs: int = 11) -> str:
    llmkit = _median_seconds([PYTHON, "-m", "llmkit", "memory-estimate", "--params", "1.4B"], runs)
    typer_help = _median_seconds([PYTHON, "-c", "import typer.rich_utils"], runs)
    # the floor for any Typer command that prints a rich table: Typer 0.29 imports its parameter adapters (and
    # pydantic) when a command runs, which `import typer.rich_utils` alone does not
    with tempfile.TemporaryDirectory() as tmp:
        trivial = Path(tmp) / "trivial_typer_app.py"
        trivial.write_text(TRIVIAL_TYPER_APP)
        trivial_app = _median_seconds([PYTHON, str(trivial), "--params", "1.4B"], runs)
    plan_json = _median_seconds([PYTHON, "-m", "llmkit", "memory-estimate", "--params", "1.4B", "--gpu-memory",
                                 "8GiB", "--plan", "--json"], 5)
    sys.path.insert(0, str(ROOT / "src"))
    from llmkit.memory import estimate
    from llmkit.config import MemoryEstimateConfig

    searches = []
    for kwargs in (dict(params="1.4B", gpu_memory="8GiB", plan=True),
                   dict(params="1.4B", gpu_memory="8GiB", plan=True, batch_size=8, seq_len=1024),
                   dict(model="llama-2-7b", gpu_memory="24GiB", plan=True, batch_size=4, seq_len=2048)):
        started = time.perf_counter()
        result = estimate(MemoryEstimateConfig(**kwargs))
        searches.append((kwargs, time.perf_counter() - started, len(result.plans or [])))
    lines = ["| what | median wall time |", "|---|---:|",
             f"| `llmkit memory-estimate --params 1.4B` | {llmkit:.3f} s |",
             f"| `python -c \"import typer.rich_utils\"` | {typer_help:.3f} s |",
             f"| ratio (target ≤ 1.5) | {llmkit / typer_help:.2f} |",
             f"| a one-command Typer app that prints a one-row rich table | {trivial_app:.3f} s |",
             f"| llmkit / that trivial app | {llmkit / trivial_app:.2f} |",
             f"| `llmkit memory-estimate --params 1.4B --gpu-memory 8GiB --plan --json` (process) | {plan_json:.3f} s |",
             "", "| plan search (in process, target ≤ 1 s) | time | plans |", "|---|---:|---:|"]
    for kwargs, seconds, count in searches:
        flags = " ".join(f"--{k.replace('_', '-')} {v}" if v is not True else f"--{k}" for k, v in kwargs.items())
        lines.append(f"| `{flags}` | {seconds:.3f} s | {count} |")
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------------------------
# DeepSpeed's estimators

def run_deepspeed() -> str:
    import contextlib
    import io

    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        from deepspeed.runtime.zero.stage3 import estimate_zero3_model_states_mem_needs
        from deepspeed.runtime.zero.stage_1_and_2 import estimate_zero2_model_states_mem_needs
    sys.path.insert(0, str(ROOT / "src"))
    from llmkit.memory import estimate
    from llmkit.config import MemoryEstimateConfig
    from llmkit.modelspec import load_spec

    lines = ["| model | ZeRO | offload | GPUs | DeepSpeed GPU GiB | llmkit GPU GiB | DeepSpeed CPU GiB | "
             "llmkit CPU GiB |", "|---|---|---|---:|---:|---:|---:|---:|"]
    for model in ("llama-2-7b", "bloom-1b4"):
        spec = load_spec(model)
        total = spec.params_total()
        largest_layer = max(spec.vocab * spec.hidden, spec.hidden * spec.intermediate)   # the embedding here
        for gpus in (1, 8):
            for zero, offload in ((2, "none"), (2, "optimizer"), (3, "none"), (3, "optimizer"),
                                  (3, "optimizer+params")):
                if zero == 2:
                    cpu, gpu = estimate_zero2_model_states_mem_needs(
                        total, num_gpus_per_node=gpus, num_nodes=1, cpu_offload=offload != "none")
                else:
                    cpu, gpu, _ = estimate_zero3_model_states_mem_needs(
                        total, largest_layer, num_gpus_per_node=gpus, num_nodes=1,
                        cpu_offload=offload != "none", cpu_offload_params=offload == "optimizer+params",
                        zero_init=True)
                ours = estimate(MemoryEstimateConfig(model=model, zero=zero, offload=offload, gpus=gpus,
                                                     mixed_precision="bf16", overhead="0"))
                # model states only: the optimizer-step phase (DeepSpeed's estimators count no activations)
                states = ours.phases["optimizer_step"]
                lines.append(f"| {model} | {zero} | {offload} | {gpus} | {gpu / 2**30:.1f} | {states / 2**30:.1f} | "
                             f"{cpu / 2**30:.1f} | {ours.cpu_ram / 2**30:.1f} |")
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------------------------

def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    parser.add_argument("--only", choices=("validation", "startup", "deepspeed"))
    parser.add_argument("--configs", help="comma-separated indices of CONFIGS to run (default: all)")
    parser.add_argument("--write-results", action="store_true", help="replace `## memory-estimate` in RESULTS.md")
    parser.add_argument("--glibc-default", action="store_true", help="measure RSS without pinning glibc's mmap "
                        "threshold")
    args = parser.parse_args()
    global PIN_MMAP
    PIN_MMAP = not args.glibc_default
    if args.worker:
        print(json.dumps(worker(json.loads(args.worker))))
        return
    sections = {}
    if args.only in (None, "validation"):
        pick = [int(i) for i in args.configs.split(",")] if args.configs else None
        table, ok = run_validation(args.device, pick)
        sections["validation"] = table + f"\n\nAll rows within ±10 % (live) and ±15 % (RSS): {'yes' if ok else 'NO'}"
    if args.only in (None, "startup"):
        sections["startup"] = run_startup()
    if args.only in (None, "deepspeed"):
        sections["deepspeed"] = run_deepspeed()
    for name, text in sections.items():
        print(f"\n### {name}\n\n{text}")
    if args.write_results:
        out = RESULTS.with_suffix(".memory-estimate.generated.md")
        out.write_text("\n\n".join(f"### {k}\n\n{v}" for k, v in sections.items()) + "\n")
        print(f"\nwrote {out}; paste it into the `## memory-estimate` section of {RESULTS.name}", file=sys.stderr)


if __name__ == "__main__":
    main()
