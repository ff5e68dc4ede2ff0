"""`llmkit launch` on CPUs: tokens/s of 2-process DDP against 1 process, and communication per step per strategy.

Side by side in one run, same model, data, global batch and steps:
  - 1 process, 1 thread; 1 process, 2 threads (all the cores); `llmkit launch --strategy ddp --cpu` with 2
    processes x 1 thread (per-device batch halved, so the global batch is the same);
  - communication per optimizer step and rank: memory-estimate's figure (computed) for each strategy, and for ddp,
    zero2 and zero3 the bytes that crossed the loopback interface (gloo's TCP transport; /proc/net/dev `lo`) in a
    run of S2 steps minus a run of S1 steps, divided by (S2 - S1) and by the ranks, so start-up, the initial
    broadcast and saving cancel out. DeepSpeed's CPU accelerator moves part of its traffic through shared memory
    (its shm all-reduce), which the loopback counter does not see. Anything else using loopback on the machine at
    the same time adds noise.

tokens/s = global tokens trained (steps x global batch x seq-len, packed rows: no padding) / the training time RANK 0
measured (manifest.json train_seconds).

  .venv/bin/python benchmarks/launch_ddp.py --steps 30 --rounds 2
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LLAMA = dict(model_type="llama", hidden_size=128, intermediate_size=352, num_hidden_layers=2, num_attention_heads=4,
             num_key_value_heads=4, max_position_embeddings=512, tie_word_embeddings=False)
DIST = ("RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")


def _env(threads: int) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in DIST}
    env.update(OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads), HF_HUB_OFFLINE="1",
               TOKENIZERS_PARALLELISM="false")
    return env


def loopback_bytes() -> int:
    for line in Path("/proc/net/dev").read_text().splitlines():
        name, _, rest = line.partition(":")
        if name.strip() == "lo":
            return int(rest.split()[8])   # transmitted bytes
    return 0


def train(work: Path, out: str, steps: int, batch: int, seq: int, threads: int, launch: list[str] | None) -> dict:
    cmd = ["llmkit", "pretrain", "--model", str(work / "llama.json"), "--from-scratch", "-t", str(work / "tok"),
           "--data", str(work / "train.jsonl"), "-o", str(work / out), "--overwrite", "--pack", "--seq-len",
           str(seq), "--batch-size", str(batch), "--max-steps", str(steps), "--lr", "2e-3", "--logging-steps", "10",
           "--save-steps", "100000", "--json"]
    if launch is None:
        argv = [sys.executable, "-m", *cmd]
    else:
        argv = [sys.executable, "-m", "llmkit", "launch", *launch, "--json", "--", *cmd]
    before = loopback_bytes()
    proc = subprocess.run(argv, capture_output=True, text=True, env=_env(threads))
    sent = loopback_bytes() - before
    if proc.returncode != 0:
        raise SystemExit(f"failed: {' '.join(argv)}\n{proc.stderr[-3000:]}")
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    manifest = json.loads((work / out / "manifest.json").read_text())
    return {"report": report, "train_seconds": manifest["train_seconds"], "loopback_bytes": sent}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--batch", type=int, default=16, help="global batch (sequences)")
    parser.add_argument("--seq-len", type=int, default=128)
    parser.add_argument("--comm-steps", default="4,12", help="S1,S2 for the measured communication")
    a = parser.parse_args()
    sys.path.insert(0, str(ROOT / "src"))
    from llmkit import corpus, modelspec
    from llmkit.config import TokenizeTrainConfig
    from llmkit.launch import AUTO_ORDER, communication_table
    from llmkit.tokenization import train_tokenizer

    work = Path(tempfile.mkdtemp(prefix="llmkit-bench-launch-"))
    train_docs, _ = corpus.documents()
    corpus.write_jsonl(train_docs, work / "train.jsonl")
    train_tokenizer(TokenizeTrainConfig(corpus=(str(work / "train.jsonl"),), output_dir=str(work / "tok"),
                                        vocab_size=4096), texts=[r["text"] for r in train_docs])
    (work / "llama.json").write_text(json.dumps(LLAMA))
    tokens = a.steps * a.batch * a.seq_len
    cores = len(os.sched_getaffinity(0))

    setups = {
        "1 process x 1 thread": (None, a.batch, 1),
        f"1 process x {cores} threads": (None, a.batch, cores),
        "llmkit launch ddp: 2 processes x 1 thread": (["--strategy", "ddp", "--cpu", "--num-processes", "2",
                                                       "--threads-per-process", "1"], a.batch // 2, 1),
    }
    rates: dict[str, list[float]] = {name: [] for name in setups}
    losses: dict[str, float] = {}
    for r in range(a.rounds):
        for name, (launch, batch, threads) in setups.items():
            res = train(work, f"t{r}-{len(rates[name])}-{name[:1]}{threads}{batch}", a.steps, batch, a.seq_len,
                        threads, launch)
            rates[name].append(tokens / res["train_seconds"])
            losses[name] = res["report"]["train_loss"]

    spec = modelspec.load_spec(str(work / "llama.json"), {"vocab": 4096})
    computed = communication_table(spec, AUTO_ORDER, num_processes=2, batch_size=a.batch // 2,
                                   seq_len=a.seq_len)
    s1, s2 = (int(x) for x in a.comm_steps.split(","))
    measured = {}
    for strategy in ("ddp", "zero2", "zero3"):
        launch = ["--strategy", strategy, "--cpu", "--num-processes", "2", "--threads-per-process", "1"]
        short = train(work, f"c-{strategy}-{s1}", s1, a.batch // 2, a.seq_len, 1, launch)
        long = train(work, f"c-{strategy}-{s2}", s2, a.batch // 2, a.seq_len, 1, launch)
        measured[strategy] = (long["loopback_bytes"] - short["loopback_bytes"]) / (s2 - s1) / 2

    best = {k: max(v) for k, v in rates.items()}
    base = best["1 process x 1 thread"]
    print(f"{cores} cores; tiny LLaMA ({spec.name}: hidden 128, 2 layers, vocab 4096); global batch {a.batch} x "
          f"seq {a.seq_len}, packed; {a.steps} steps; best of {a.rounds} alternating rounds")
    print("| setup | tokens/s (best) | all rounds | x 1 process x 1 thread | final train loss |")
    print("|---|---:|---|---:|---:|")
    for k, v in rates.items():
        print(f"| {k} | {best[k]:,.0f} | {', '.join(f'{x:,.0f}' for x in v)} | {best[k] / base:.2f} | "
              f"{losses[k]:.4f} |")
    print(f"\ncommunication per optimizer step and rank, 2 ranks (measured: loopback bytes, steps {s1} -> {s2})")
    print("| strategy | computed (memory-estimate) | measured (loopback) |\n|---|---:|---:|")
    for strategy, value in computed.items():
        m = measured.get(strategy)
        print(f"| {strategy} | {value / 2**20:,.2f} MiB | "
              f"{'' if m is None else f'{m / 2**20:,.2f} MiB'} |")


if __name__ == "__main__":
    main()
