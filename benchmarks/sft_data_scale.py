"""`llmkit sft`: peak RSS against corpus size, before (git revision --before, in a worktree) and after, and the time
to the first optimizer step with a cold and a warm data cache (issue #17).

Synthetic multi-turn `messages` jsonl (2-4 exchanges of pydoc prose, each reply 20-80 words) of about 1M, 20M and 200M
tokens (counted as rendered with chatml by the benchmark's BPE tokenizer of 600 ids, estimated from a sample) under
benchmarks/_work/sft_scale; a tiny LLaMA (hidden 32, from scratch) trains 3 steps of batch 4 at --seq-len 1024. Each
run is a fresh process that calls run_sft and reports its own peak RSS (ru_maxrss, the tokenizing workers apart) and
the seconds from its start to the end of the first optimizer step.

  .venv/bin/python benchmarks/sft_data_scale.py --sizes 1M,20M --before 9fd7615
  .venv/bin/python benchmarks/sft_data_scale.py --sizes 200M            # after only (before needs > 12 GB there)
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

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
from startup import package_root, worktree  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
WORK = ROOT / "benchmarks" / "_work" / "sft_scale"
SIZES = {"1M": 1_000_000, "20M": 20_000_000, "200M": 200_000_000}
LLAMA = dict(model_type="llama", hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
             num_key_value_heads=2, max_position_embeddings=1024, tie_word_embeddings=False)

CHILD = r'''
import json, resource, sys, time
started = time.time()
import torch
torch.set_num_threads(1)
from transformers import TrainerCallback
from llmkit.config import SFTConfig
from llmkit.training.sft import run_sft
tok, data, model, out, cache = sys.argv[1:6]
first = {}

class FirstStep(TrainerCallback):
    def on_step_end(self, args, state, control, **kwargs):
        first.setdefault("seconds", time.time() - started)

extra = {"data_cache": cache} if cache else {}
cfg = SFTConfig(model=model, from_scratch=True, tokenizer=tok, data=data, output_dir=out, overwrite=True,
                template="chatml", seq_len=1024, batch_size=4, max_steps=3, logging_steps=1,
                **extra)
result = run_sft(cfg, callbacks=[FirstStep()])
print(json.dumps({"first_step_s": round(first["seconds"], 1), "examples": result.examples,
                  "rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                  "workers_rss_mb": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024,
                  "trained_tokens": result.trained_tokens}))
'''


def tokenizer_dir() -> Path:
    tok = WORK / "tok"
    if not tok.exists():
        from llmkit import corpus
        from llmkit.config import TokenizeTrainConfig
        from llmkit.tokenization import train_tokenizer

        texts = [r["text"] for r in corpus.documents()[0]]
        (WORK / "corpus.txt").write_text("\n".join(texts), encoding="utf-8")
        train_tokenizer(TokenizeTrainConfig(corpus=(str(WORK / "corpus.txt"),), output_dir=str(tok), type="bpe",
                                            vocab_size=600))
    return tok


def conversation(rng: random.Random, words: list[str]) -> list[dict]:
    def text(low, high):
        start = rng.randrange(len(words) - high)
        return " ".join(words[start:start + rng.randint(low, high)])

    messages = [{"role": "system", "content": "Answer from the Python reference."}] if rng.random() < 0.3 else []
    for _ in range(rng.randint(2, 4)):
        messages += [{"role": "user", "content": text(8, 30) + "?"}, {"role": "assistant", "content": text(20, 80)}]
    return messages


def corpus_file(size: str, tok: Path) -> Path:
    """A jsonl of about SIZES[size] rendered tokens (the tokens per byte measured on a sample)."""
    path = WORK / f"chats-{size}.jsonl"
    if path.exists():
        return path
    from transformers import AutoTokenizer

    from llmkit import corpus
    from llmkit.data import sft

    words = " ".join(r["text"] for r in corpus.documents()[0]).split()
    tokenizer = AutoTokenizer.from_pretrained(tok)
    sft.prepare_tokenizer(tokenizer, "chatml")
    rng = random.Random(0)
    sample = [conversation(rng, words) for _ in range(500)]
    tokens = sum(len(tokenizer(sft.render(tokenizer, sft.builtin_template("chatml"), m, False, "sample"),
                               add_special_tokens=False)["input_ids"]) for m in sample)
    per_byte = tokens / sum(len(json.dumps({"messages": m}).encode()) + 1 for m in sample)
    target, written = SIZES[size] / per_byte, 0
    rng = random.Random(1)
    with (WORK / f".{path.name}.tmp").open("w", encoding="utf-8") as f:
        while written < target:
            line = json.dumps({"messages": conversation(rng, words)}) + "\n"
            f.write(line)
            written += len(line.encode())
    (WORK / f".{path.name}.tmp").rename(path)
    return path


def run(tree: Path, tok: Path, data: Path, model: Path, cache: Path | None) -> dict:
    env = {**os.environ, "PYTHONPATH": str(package_root(tree)), "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    out = WORK / "run"
    started = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", CHILD, str(tok), str(data), str(model), str(out),
                           str(cache or "")], env=env, cwd=tree, capture_output=True, text=True)
    if done.returncode:
        sys.exit(f"{tree.name} on {data.name} failed:\n{done.stderr[-3000:]}")
    return {**json.loads(done.stdout.strip().splitlines()[-1]), "wall_s": round(time.perf_counter() - started, 1)}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sizes", default="1M,20M")
    parser.add_argument("--before", metavar="REV", help="also run git revision REV (sizes up to --before-max)")
    parser.add_argument("--before-max", default="20M")
    args = parser.parse_args()
    WORK.mkdir(parents=True, exist_ok=True)
    tok = tokenizer_dir()
    model = WORK / "llama.json"
    model.write_text(json.dumps(LLAMA), encoding="utf-8")
    print(f"uptime: {subprocess.run(['uptime'], capture_output=True, text=True).stdout.strip()}", flush=True)
    for size in args.sizes.split(","):
        data = corpus_file(size, tok)
        print(f"{size}: {data.stat().st_size / 1e6:,.0f} MB of jsonl", flush=True)
        if args.before and SIZES[size] <= SIZES[args.before_max]:
            print(f"  before {args.before}: {run(worktree(args.before), tok, data, model, None)}", flush=True)
        cache = WORK / f"cache-{size}"
        shutil.rmtree(cache, ignore_errors=True)
        print(f"  after, cold cache: {run(ROOT, tok, data, model, cache)}", flush=True)
        print(f"  after, warm cache: {run(ROOT, tok, data, model, cache)}", flush=True)
        print(f"  cache entry: {sum(p.stat().st_size for p in cache.rglob('*') if p.is_file()) / 1e6:,.0f} MB; "
              f"uptime: {subprocess.run(['uptime'], capture_output=True, text=True).stdout.strip()}", flush=True)


if __name__ == "__main__":
    main()
