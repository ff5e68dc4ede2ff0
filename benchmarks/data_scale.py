"""Real data at real scale (issue #17): peak RSS of `llmkit pretrain` against corpus size, before and after; time to
the first optimizer step, cold and from the data cache; tokenizing throughput against raw `encode_batch` and a
plain `datasets.map(batched=True, num_proc=N)`.

    .venv/bin/python benchmarks/data_scale.py [--sizes 1,20,200] [--before 9fd7615 --before-sizes 1,20]
                                              [--throughput-mb 200] [--threads 2] [--layouts pack,unpacked]

Corpora are parquet files of synthetic documents (50-1,000 words drawn from the words of Python's language
reference) under benchmarks/_work/data_scale, sized in millions of tokens of a 4k byte-level BPE trained on a
sample of them. Each pretrain run is a fresh process (a 2-layer LLaMA of hidden 32, 3 steps of 8 x 128); its peak
RSS is the child's ru_maxrss, its time to the first step the moment "step 1/" reaches stderr.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import shutil
import subprocess
import sys
from pathlib import Path

from _common import BIN, ROOT
from startup import DRIVER, package_root, worktree

WORK = ROOT / "benchmarks" / "_work" / "data_scale"
MODEL = {"model_type": "llama", "architectures": ["LlamaForCausalLM"], "hidden_size": 32, "intermediate_size": 64,
         "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2, "max_position_embeddings": 512,
         "vocab_size": 4096}


def words() -> list[str]:
    from pydoc_data.topics import topics

    return sorted({w for text in topics.values() for w in re.findall(r"[A-Za-z]{2,12}", text)})


def write_corpus(path: Path, tokens: int, tokens_per_word: float, seed: int = 0) -> int:
    import pyarrow as pa
    import pyarrow.parquet as pq

    vocab, rng, target = words(), random.Random(seed), int(tokens / tokens_per_word)
    written = documents = 0
    with pq.ParquetWriter(str(path), pa.schema([("text", pa.string())]), compression="zstd") as writer:
        while written < target:
            batch = []
            for _ in range(2000):
                n = rng.randint(50, 1000)
                batch.append(" ".join(rng.choices(vocab, k=n)))
                written += n
            documents += len(batch)
            writer.write_table(pa.table({"text": batch}))
    return documents


def prepare(sizes: list[int]) -> tuple[Path, dict[int, Path]]:
    WORK.mkdir(parents=True, exist_ok=True)
    tok = WORK / "tok"
    sample = WORK / "sample.parquet"
    if not tok.exists():
        write_corpus(sample, 2_000_000, 1.0, seed=99)
        subprocess.run([str(BIN / "llmkit"), "tokenize", "train", "--corpus", str(sample), "--vocab-size", "4000",
                        "-o", str(tok), "--json"], check=True, capture_output=True)
    from tokenizers import Tokenizer
    import pyarrow.parquet as pq

    texts = pq.read_table(sample).column("text").to_pylist()[:500]
    backend = Tokenizer.from_file(str(tok / "tokenizer.json"))
    ratio = sum(len(e.ids) for e in backend.encode_batch(texts)) / sum(len(t.split()) for t in texts)
    corpora = {}
    for size in sizes:
        path = WORK / f"corpus-{size}M.parquet"
        if not path.exists():
            write_corpus(path, size * 1_000_000, ratio)
        corpora[size] = path
    return tok, corpora


def pretrain(tree: Path | None, tok: Path, data: Path, pack: bool, cache: Path | None, out: Path,
             extra: tuple[str, ...] = (), steps: int = 3) -> dict:
    """One `llmkit pretrain` in a fresh process: its peak RSS, time to the first step, and rows."""
    model = WORK / "tiny-llama.json"
    model.write_text(json.dumps(MODEL))
    args = ["pretrain", "--model", str(model), "--from-scratch", "-t", str(tok), "--data", str(data),
            "-o", str(out), "--overwrite", "--seq-len", "128", "--batch-size", "8", "--max-steps", str(steps),
            "--logging-steps", "1", "--json", *(["--pack"] if pack else []), *extra]
    if cache is not None:
        args += ["--data-cache", str(cache)]
    command = [sys.executable, "-c", DRIVER, *args]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "OMP_NUM_THREADS": "2",
           "HF_DATASETS_CACHE": str(WORK / "hf-datasets")}
    if tree is not None:
        env["PYTHONPATH"] = str(package_root(tree))
    wrapper = ("import json, resource, subprocess, sys, time\n"
               "t = time.perf_counter(); first = None\n"
               "p = subprocess.Popen(sys.argv[1:], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)\n"
               "lines = []\n"
               "for line in p.stderr:\n"
               "    lines.append(line)\n"
               "    if first is None and 'step 1/' in line: first = time.perf_counter() - t\n"
               "out = p.stdout.read(); p.wait()\n"
               "print(json.dumps({'rc': p.returncode, 'first_step_s': first, 'wall_s': time.perf_counter() - t,\n"
               "  'peak_rss_mb': resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024,\n"
               "  'stdout': out[-4000:], 'stderr': ''.join(lines)[-3000:]}))\n")
    result = json.loads(subprocess.run([sys.executable, "-c", wrapper, *command], capture_output=True, text=True,
                                       env=env, check=True).stdout)
    if result["rc"] != 0:
        raise SystemExit(f"pretrain failed: {result['stderr']}")
    report = json.loads(result.pop("stdout"))
    result["train_rows"], result["tokens_per_second"] = report["train_rows"], report["tokens_per_second"]
    result["cached"] = "reused from the data cache" in result["stderr"]
    return result


RAW = """
import json, time, pyarrow.parquet as pq
from tokenizers import Tokenizer
texts = pq.read_table({data!r}).column("text").to_pylist()
tok = Tokenizer.from_file({tok!r} + "/tokenizer.json")
t = time.perf_counter()
enc = tok.encode_batch_fast(texts, add_special_tokens=False)
dt = time.perf_counter() - t
print(json.dumps({{"seconds": dt, "tokens": sum(len(e.ids) for e in enc)}}))
"""

LLMKIT = """
import json, time, datasets
from transformers import AutoTokenizer
from llmkit.data.tokens import cached_tokens
tok = AutoTokenizer.from_pretrained({tok!r})
ds = datasets.Dataset.from_parquet({data!r})
t = time.perf_counter()
r = cached_tokens([{data!r}], lambda: ds, "text", tok, add_special_tokens=False, append_eos=None,
                  cache_dir={cache!r})
dt = time.perf_counter() - t
print(json.dumps({{"seconds": dt, "tokens": r.docs.tokens}}))
"""

MAP = """
import json, time, datasets
from transformers import AutoTokenizer
tok = AutoTokenizer.from_pretrained({tok!r})
ds = datasets.Dataset.from_parquet({data!r})
t = time.perf_counter()
out = ds.map(lambda b: {{"input_ids": tok(b["text"], add_special_tokens=False)["input_ids"]}}, batched=True,
             num_proc={threads}, remove_columns=["text"], cache_file_name={cache!r} + "/map.arrow")
dt = time.perf_counter() - t
print(json.dumps({{"seconds": dt, "tokens": sum(len(c.values) for c in out.data.column("input_ids").chunks)}}))
"""


def throughput(tok: Path, megabytes: int, threads: int) -> list[tuple[str, dict]]:
    data = WORK / f"text-{megabytes}MB.parquet"
    if not data.exists():
        import pyarrow.parquet as pq

        # the same words, cut to `megabytes` of text
        source = pq.ParquetFile(str(sorted(WORK.glob("corpus-*M.parquet"), key=lambda p: p.stat().st_size)[-1]))
        import pyarrow as pa

        tables, size = [], 0
        for batch in source.iter_batches(batch_size=2000):
            tables.append(pa.Table.from_batches([batch]))
            size += sum(len(t) for t in batch.column(0).to_pylist())
            if size >= megabytes * 1_000_000:
                break
        pq.write_table(pa.concat_tables(tables), str(data), compression="zstd")
    env = {**os.environ, "RAYON_NUM_THREADS": str(threads), "TOKENIZERS_PARALLELISM": "true",
           "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "HF_DATASETS_CACHE": str(WORK / "hf-datasets")}
    rows = []
    for label, script in (("raw `tokenizers` encode_batch_fast, texts in memory (the limit)", RAW),
                          ("llmkit: Dataset text column -> tokens cache entry (pretrain's path)", LLMKIT),
                          (f"`datasets.map(batched=True, num_proc={threads})` with the fast tokenizer", MAP)):
        cache = WORK / "throughput-cache"
        shutil.rmtree(cache, ignore_errors=True)
        cache.mkdir()
        proc = subprocess.run([sys.executable, "-c", script.format(data=str(data), tok=str(tok), cache=str(cache),
                                                                 threads=threads)],
                              capture_output=True, text=True, env=env, check=True)
        rows.append((label, json.loads(proc.stdout.strip().splitlines()[-1])))
    shutil.rmtree(WORK / "throughput-cache", ignore_errors=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sizes", default="1,20,200", help="corpus sizes, millions of tokens")
    parser.add_argument("--before", metavar="REV", help="also measure git revision REV")
    parser.add_argument("--before-sizes", default="1,20")
    parser.add_argument("--throughput-mb", type=int, default=200)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--layouts", default="pack,unpacked", help="pack, unpacked or both")
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    print(f"load average at start: {os.getloadavg()}", flush=True)
    tok, corpora = prepare(sizes)
    trees = {"after": None}
    if args.before:
        trees = {"before": worktree(args.before), "after": None}
    print("| tree | corpus | layout | peak RSS (MB) | first step (s) | wall (s) | train rows |")
    print("|---|---:|---|---:|---:|---:|---:|", flush=True)
    for label, tree in trees.items():
        for size in sizes if label == "after" else [int(s) for s in args.before_sizes.split(",")]:
            for pack in [layout == "pack" for layout in args.layouts.split(",")]:
                cache = WORK / f"cache-{size}M"
                if label == "after":
                    shutil.rmtree(cache, ignore_errors=True)
                runs = [("cold", cache)] + ([("cached", cache)] if label == "after" else [])
                for how, cache_dir in runs:
                    r = pretrain(tree, tok, corpora[size], pack, cache_dir if label == "after" else None,
                                 WORK / "run")
                    name = label if label == "before" else f"after, {how}{' (reused)' if r['cached'] else ''}"
                    print(f"| {name} | {size}M | {'--pack' if pack else 'unpacked'} | {r['peak_rss_mb']:,.0f} | "
                          f"{r['first_step_s']:.1f} | {r['wall_s']:.1f} | {r['train_rows']:,} |", flush=True)
    print(f"\nload average: {os.getloadavg()}\n", flush=True)
    if args.throughput_mb:
        rows = throughput(tok, args.throughput_mb, args.threads)
        raw_rate = rows[0][1]["tokens"] / rows[0][1]["seconds"]
        print(f"tokenizing {args.throughput_mb} MB of text, {args.threads} threads/processes\n")
        print("| what | seconds | tokens | tokens/s | x raw |\n|---|---:|---:|---:|---:|")
        for label, r in rows:
            rate = r["tokens"] / r["seconds"]
            print(f"| {label} | {r['seconds']:.1f} | {r['tokens']:,} | {rate:,.0f} | {rate / raw_rate:.2f} |")
    print(f"\nload average at the end: {os.getloadavg()}")


if __name__ == "__main__":
    main()
