"""`llmkit tokenize dataset` throughput against raw `tokenizers.encode_batch` and the usual datasets.map recipe.

    .venv/bin/python benchmarks/tokenize_throughput.py [--megabytes 24] [--threads 2]

All three tokenize the same generated JSONL corpus (paragraphs of the Python language reference, shuffled and
re-joined until it is big enough) with the same byte-level BPE tokenizer and the same thread count.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import subprocess
import sys
import time
from pathlib import Path

from _common import BIN, ROOT

WORK = ROOT / "benchmarks" / "_work" / "tokenize"


def make_corpus(path: Path, megabytes: int) -> int:
    sys.path.insert(0, str(ROOT / "src"))
    from llmkit import corpus

    train, held_out = corpus.documents()
    paragraphs = [r["text"] for r in train + held_out]
    rng = random.Random(0)
    written = 0
    count = 0
    with path.open("w", encoding="utf-8") as f:
        while written < megabytes * 1_000_000:
            k = rng.randint(1, 8)  # documents of 1 to 8 paragraphs: a realistic spread of lengths
            text = "\n\n".join(rng.choice(paragraphs) for _ in range(k))
            line = json.dumps({"id": count, "text": text}) + "\n"
            f.write(line)
            written += len(line.encode())
            count += 1
    return count


def run(label: str, script: str, env: dict) -> dict:
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, check=True)
    return json.loads(proc.stdout.strip().splitlines()[-1])


RAW = """
import json, time
from tokenizers import Tokenizer
texts = [json.loads(l)["text"] for l in open({data!r}, encoding="utf-8")]
tok = Tokenizer.from_file({tok!r} + "/tokenizer.json")
t = time.perf_counter()
enc = tok.encode_batch_fast(texts) if hasattr(tok, "encode_batch_fast") else tok.encode_batch(texts)
dt = time.perf_counter() - t
print(json.dumps({{"seconds": dt, "tokens": sum(len(e.ids) for e in enc)}}))
"""

RECIPE = """
import json, time, shutil
t = time.perf_counter()
import datasets
from transformers import AutoTokenizer
tok = AutoTokenizer.from_pretrained({tok!r})
ds = datasets.load_dataset("json", data_files={data!r}, split="train", cache_dir={cache!r})
out = ds.map(lambda b: tok(b["text"]), batched=True, remove_columns=ds.column_names)
out.save_to_disk({out!r})
dt = time.perf_counter() - t
print(json.dumps({{"seconds": dt, "tokens": sum(len(x) for x in out["input_ids"])}}))
"""

LLMKIT_IN_PROCESS = """
import json, time
from llmkit.config import TokenizeDatasetConfig
from llmkit.tokenization import tokenize_dataset
t = time.perf_counter()
r = tokenize_dataset(TokenizeDatasetConfig(tokenizer={tok!r}, data={data!r}, output_dir={out!r}, overwrite=True))
dt = time.perf_counter() - t
print(json.dumps({{"seconds": dt, "tokens": r.stats.tokens}}))
"""


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--megabytes", type=int, default=24)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    WORK.mkdir(parents=True, exist_ok=True)
    data = WORK / "corpus.jsonl"
    documents = make_corpus(data, args.megabytes)
    tok = WORK / "tok"
    subprocess.run([str(BIN / "llmkit"), "tokenize", "train", "--corpus", str(data), "--vocab-size", "8000",
                    "-o", str(tok), "--overwrite", "--json"], check=True, capture_output=True)
    env = {**os.environ, "RAYON_RS_NUM_CPUS": str(args.threads), "OMP_NUM_THREADS": str(args.threads),
           "TOKENIZERS_PARALLELISM": "true", "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    results: dict[str, list[dict]] = {"raw": [], "llmkit_work": [], "llmkit_command": [], "recipe": []}
    for _ in range(args.rounds):
        results["raw"].append(run("raw", RAW.format(data=str(data), tok=str(tok)), env))
        results["llmkit_work"].append(run("llmkit", LLMKIT_IN_PROCESS.format(
            data=str(data), tok=str(tok), out=str(WORK / "out-llmkit")), env))
        started = time.perf_counter()
        subprocess.run([str(BIN / "llmkit"), "tokenize", "dataset", "-t", str(tok), "--data", str(data), "-o",
                        str(WORK / "out-cmd"), "--overwrite", "--json", "--num-proc", str(args.threads)],
                       check=True, capture_output=True, env=env)
        results["llmkit_command"].append({"seconds": time.perf_counter() - started,
                                          "tokens": results["llmkit_work"][-1]["tokens"]})
        shutil.rmtree(WORK / "cache", ignore_errors=True)
        shutil.rmtree(WORK / "out-recipe", ignore_errors=True)
        results["recipe"].append(run("recipe", RECIPE.format(data=str(data), tok=str(tok), cache=str(WORK / "cache"),
                                                             out=str(WORK / "out-recipe")), env))
    size = data.stat().st_size / 1e6
    best = {k: min(v, key=lambda r: r["seconds"]) for k, v in results.items()}
    raw_rate = best["raw"]["tokens"] / best["raw"]["seconds"]
    print(f"corpus: {size:.1f} MB, {documents:,} documents, {best['raw']['tokens']:,} tokens; "
          f"{args.threads} tokenizer threads; best of {args.rounds} alternating rounds\n")
    print("| what | seconds | tokens/s | × raw |")
    print("|---|---:|---:|---:|")
    names = {"raw": "raw `tokenizers` encode_batch, texts in memory (the limit)",
             "llmkit_work": "`llmkit tokenize dataset` work: read JSONL + tokenize + write Arrow (in-process)",
             "llmkit_command": "`llmkit tokenize dataset` whole command, process start included",
             "recipe": "usual recipe: load_dataset(json) + map(tokenizer, batched) + save_to_disk"}
    for key, label in names.items():
        rate = best[key]["tokens"] / best[key]["seconds"]
        print(f"| {label} | {best[key]['seconds']:.2f} | {rate:,.0f} | {rate / raw_rate:.2f} |")


if __name__ == "__main__":
    main()
