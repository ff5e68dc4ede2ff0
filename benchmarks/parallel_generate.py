"""Data-parallel batch generation: `llmkit generate --input --output` in one process against
`llmkit launch --cpu --num-processes 2 -- llmkit generate ...` on the same prompts, one torch thread per process.

    .venv/bin/python benchmarks/parallel_generate.py [--prompts 64] [--new-tokens 768] [--batch-size 4] [--rounds 1]

The model is generate_speed.py's (a randomly initialised 4-layer Qwen2-shaped LM, hidden 256, with a BPE tokenizer
trained on the embedded corpus); every prompt generates exactly --new-tokens tokens (min = max), greedy. Wall times
are whole commands (start-up, model load, generation, merge); the two outputs must be byte for byte equal.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

from _common import BIN
from generate_speed import build


def timed(argv: list[str], env: dict) -> tuple[float, dict]:
    import subprocess

    started = time.perf_counter()
    proc = subprocess.run(argv, capture_output=True, text=True, env=env)
    seconds = time.perf_counter() - started
    if proc.returncode != 0:
        sys.exit(f"failed ({proc.returncode}): {' '.join(argv)}\n{proc.stderr[-3000:]}")
    return seconds, json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompts", type=int, default=64)
    parser.add_argument("--new-tokens", type=int, default=768)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=1)
    args = parser.parse_args()

    import os

    from llmkit import corpus

    work = Path(tempfile.mkdtemp(prefix="llmkit-parallel-gen-"))
    model = build(work, 4096)
    _, held_out = corpus.documents()
    texts = [r["text"][:300] for r in held_out if len(r["text"]) > 100]
    source = work / "prompts.jsonl"
    source.write_text("".join(json.dumps({"prompt": texts[i % len(texts)][: 60 + (i * 37) % 240]}) + "\n"
                              for i in range(args.prompts)), encoding="utf-8")
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR",
                                                            "MASTER_PORT")}
    env.update(OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false", HF_HUB_OFFLINE="1")

    def generate(output: Path) -> list[str]:
        return ["generate", "-m", str(model), "--input", str(source), "--output", str(output), "--batch-size",
                str(args.batch_size), "--max-new-tokens", str(args.new_tokens), "--min-new-tokens",
                str(args.new_tokens), "--overwrite", "--json"]

    llmkit = [str(BIN / "python"), "-m", "llmkit"]
    runs: dict[str, list[tuple[float, dict]]] = {"1 process": [], "2 processes": []}
    for _ in range(args.rounds):   # alternating, so machine noise hits both alike
        runs["1 process"].append(timed([*llmkit, *generate(work / "one.jsonl")], env))
        runs["2 processes"].append(timed([*llmkit, "launch", "--cpu", "--num-processes", "2",
                                          "--threads-per-process", "1", "--json", "--", "llmkit",
                                          *generate(work / "two.jsonl")], env))
    same = (work / "one.jsonl").read_bytes() == (work / "two.jsonl").read_bytes()
    wall = {name: statistics.median(s for s, _ in values) for name, values in runs.items()}
    inside = {name: statistics.median(r["seconds"] for _, r in values) for name, values in runs.items()}
    tokens = runs["1 process"][0][1]["completion_tokens"]
    print(f"{args.prompts} prompts x {args.new_tokens} new tokens, --batch-size {args.batch_size}, greedy, "
          f"1 torch thread per process, {args.rounds} round(s), median")
    for name in runs:
        print(f"  {name:<12} wall {wall[name]:7.1f} s   generate (after load, incl. merge) {inside[name]:7.1f} s   "
              f"{tokens / wall[name]:7.1f} tokens/s end to end")
    print(f"speed-up 2 vs 1 process: {wall['1 process'] / wall['2 processes']:.2f}x wall, "
          f"{inside['1 process'] / inside['2 processes']:.2f}x generation; outputs byte-identical: {same}")


if __name__ == "__main__":
    main()
