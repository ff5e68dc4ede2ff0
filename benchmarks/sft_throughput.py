"""`llmkit sft` (packed and padded) against TRL's SFTTrainer: trained-token throughput, peak memory, and the
whole-process wall time of a small job.

Same tiny LLaMA (random init, seed 0), tokenizer, ChatML template, data (single-turn chats whose answer lengths
spread like real ones: log-normal, 8 to ~400 tokens), --seq-len / max_length, batch and thread count on both sides;
loss on the answers only on both sides (TRL: conversational prompt/completion, completion-only loss). Trained
tokens/s = tokens with a label in one epoch / train_runtime (each Trainer's own clock). TRL runs from its own
environment (benchmarks/_work/trl-venv: a venv that sees this project's packages plus `pip install --no-deps trl`).

  .venv/bin/python benchmarks/sft_throughput.py --threads 1 --rounds 2
  .venv/bin/python benchmarks/sft_throughput.py --threads 1 --rounds 4 --no-trl   # llmkit vs a plain Trainer only

"plain Trainer padded" is transformers' Trainer with the model's own loss, rows tokenized with the chat template and
an answer mask written by hand (prompt rendered with add_generation_prompt): the floor llmkit's padded path is held to.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
WORK = ROOT / "benchmarks" / "_work" / "sft"
TRL_PY = ROOT / "benchmarks" / "_work" / "trl-venv" / "bin" / "python"
LLAMA = dict(model_type="llama", hidden_size=128, intermediate_size=352, num_hidden_layers=2, num_attention_heads=4,
             num_key_value_heads=4, max_position_embeddings=1024, tie_word_embeddings=False)

LLMKIT = r'''
import json, sys, time, torch
torch.set_num_threads(int(sys.argv[8]))
from llmkit.config import SFTConfig
from llmkit.training.sft import run_sft
tok, data, cfg_file, out, batch, seq, mode, threads, steps = sys.argv[1:10]
kw = dict(max_steps=int(steps)) if steps != "epoch" else dict(epochs=1.0)
cfg = SFTConfig(model=cfg_file, from_scratch=True, tokenizer=tok, data=data, output_dir=out, overwrite=True,
                batch_size=int(batch), seq_len=int(seq), pack=mode == "pack", lr=1e-3, logging_steps=1000,
                save_steps=100000, **kw)
r = run_sft(cfg)
m = json.load(open(out + "/manifest.json"))
print(json.dumps({"trained_tokens": r.trained_tokens, "train_seconds": m["train_seconds"], "steps": r.steps,
                  "peak_rss_bytes": m.get("peak_rss_bytes")}))
'''

TRL = r'''
import json, resource, sys, time, torch
torch.set_num_threads(int(sys.argv[8]))
from datasets import Dataset
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer
from trl import SFTConfig, SFTTrainer
tok_dir, data, cfg_file, out, batch, seq, mode, threads, steps = sys.argv[1:10]
tok = AutoTokenizer.from_pretrained(tok_dir)
rows = [json.loads(l)["messages"] for l in open(data)]
ds = Dataset.from_list([{"prompt": m[:-1], "completion": m[-1:]} for m in rows])
fields = json.load(open(cfg_file)); mt = fields.pop("model_type")
torch.manual_seed(0)
model = AutoModelForCausalLM.from_config(AutoConfig.for_model(mt, vocab_size=len(tok), **fields))
kw = dict(max_steps=int(steps)) if steps != "epoch" else dict(num_train_epochs=1.0)
args = SFTConfig(output_dir=out, per_device_train_batch_size=int(batch), max_length=int(seq),
                 packing=mode == "pack", padding_free=mode == "pack", learning_rate=1e-3, logging_steps=1000,
                 save_strategy="no", report_to=[], use_cpu=True, disable_tqdm=True, completion_only_loss=True,
                 dataset_num_proc=None, **kw)
trainer = SFTTrainer(model=model, args=args, train_dataset=ds, processing_class=tok)
trained = sum(sum(1 for x in labels if x != -100) for labels in trainer.train_dataset["labels"])
m = trainer.train().metrics
print(json.dumps({"trained_tokens": trained, "train_seconds": m["train_runtime"], "steps": trainer.state.global_step,
                  "peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024}))
'''


PLAIN = r"""
import json, resource, sys, torch
torch.set_num_threads(int(sys.argv[8]))
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, Trainer, TrainingArguments
tok_dir, data, cfg_file, out, batch, seq, mode, threads, steps = sys.argv[1:10]
tok = AutoTokenizer.from_pretrained(tok_dir)
if tok.pad_token is None:
    tok.pad_token = tok.eos_token

def ids(messages, **kw):
    out = tok.apply_chat_template(messages, tokenize=True, **kw)
    return list(out["input_ids"] if hasattr(out, "keys") else out)

rows = []
for line in open(data):
    m = json.loads(line)["messages"]
    prompt, full = ids(m[:-1], add_generation_prompt=True), ids(m)
    full = full[:int(seq)]
    labels = [-100] * min(len(prompt), len(full)) + full[len(prompt):]
    rows.append({"input_ids": full, "labels": labels})

def collate(features):
    width = max(len(f["input_ids"]) for f in features)
    pad = lambda seqs, v: torch.tensor([s + [v] * (width - len(s)) for s in seqs])
    return {"input_ids": pad([f["input_ids"] for f in features], tok.pad_token_id),
            "attention_mask": pad([[1] * len(f["input_ids"]) for f in features], 0),
            "labels": pad([f["labels"] for f in features], -100)}

fields = json.load(open(cfg_file)); mt = fields.pop("model_type")
torch.manual_seed(0)
model = AutoModelForCausalLM.from_config(AutoConfig.for_model(mt, vocab_size=len(tok), **fields))
kw = dict(max_steps=int(steps)) if steps != "epoch" else dict(num_train_epochs=1.0)
# seed 0 for the data order too, as llmkit's run: the same batches (so the same padding) on both sides
args = TrainingArguments(output_dir=out, per_device_train_batch_size=int(batch), learning_rate=1e-3,
                         logging_steps=1000, save_strategy="no", report_to=[], use_cpu=True, disable_tqdm=True,
                         remove_unused_columns=False, seed=0, data_seed=0, **kw)
trainer = Trainer(model=model, args=args, train_dataset=rows, data_collator=collate)
trained = sum(sum(1 for x in r["labels"][1:] if x != -100) for r in rows)
m = trainer.train().metrics
print(json.dumps({"trained_tokens": trained, "train_seconds": m["train_runtime"], "steps": trainer.state.global_step,
                  "peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024}))
"""


def prepare(n: int, seed: int) -> tuple[Path, Path, Path]:
    """A BPE tokenizer with ChatML (tokens and template), the chat data, the model config."""
    sys.path.insert(0, str(ROOT / "src"))
    from llmkit import corpus
    from llmkit.config import TokenizeTrainConfig
    from llmkit.data.sft import builtin_template, prepare_tokenizer
    from llmkit.tokenization import train_tokenizer

    WORK.mkdir(parents=True, exist_ok=True)
    train, _ = corpus.documents()
    texts = [r["text"] for r in train]
    tok = WORK / "tokenizer"
    if not (tok / "tokenizer.json").exists():
        (WORK / "corpus.txt").write_text("\n".join(texts), encoding="utf-8")
        train_tokenizer(TokenizeTrainConfig(corpus=(str(WORK / "corpus.txt"),), output_dir=str(tok), type="bpe",
                                            vocab_size=4096, overwrite=True), texts=texts)
        from transformers import AutoTokenizer

        t = AutoTokenizer.from_pretrained(tok)
        prepare_tokenizer(t, "chatml")
        t.chat_template = builtin_template("chatml")
        t.save_pretrained(tok)
    rng = random.Random(seed)
    words = " ".join(texts).split()
    data = WORK / "chats.jsonl"
    with data.open("w", encoding="utf-8") as f:
        for _ in range(n):
            q_len = rng.randint(5, 40)
            a_len = min(max(int(rng.lognormvariate(4.0, 0.9)), 6), 300)   # words: median ~55, long tail
            start = rng.randrange(len(words) - 400)
            question = " ".join(words[start:start + q_len]) + "?"
            answer = " ".join(words[start + q_len:start + q_len + a_len])
            f.write(json.dumps({"messages": [{"role": "user", "content": question},
                                             {"role": "assistant", "content": answer}]}) + "\n")
    config = WORK / "llama.json"
    config.write_text(json.dumps(LLAMA), encoding="utf-8")
    return tok, data, config


def run(python: str, script: str, args: list[str], env: dict) -> tuple[dict, float]:
    started = time.perf_counter()
    proc = subprocess.run([python, "-c", script, *args], capture_output=True, text=True, env=env, cwd=ROOT)
    wall = time.perf_counter() - started
    if proc.returncode != 0:
        raise SystemExit(f"failed: {proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1]), wall


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--examples", type=int, default=400)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--seq-len", type=int, default=512)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--small-steps", type=int, default=30)
    parser.add_argument("--no-trl", action="store_true", help="skip the TRL sides (no benchmarks/_work/trl-venv)")
    a = parser.parse_args()
    tok, data, config = prepare(a.examples, 0)
    env = dict(os.environ, OMP_NUM_THREADS=str(a.threads), MKL_NUM_THREADS=str(a.threads),
               TOKENIZERS_PARALLELISM="false", HF_HUB_OFFLINE="1", PYTHONWARNINGS="ignore")
    py = sys.executable
    sides = {"llmkit --pack": (py, LLMKIT, "pack"), "llmkit padded": (py, LLMKIT, "pad"),
             "plain Trainer padded (hand-written answer mask)": (py, PLAIN, "pad"),
             "TRL packing (padding-free)": (str(TRL_PY), TRL, "pack"), "TRL padded": (str(TRL_PY), TRL, "pad")}
    if a.no_trl:
        sides = {k: v for k, v in sides.items() if not k.startswith("TRL")}
    results: dict[str, list] = {k: [] for k in sides}
    walls: dict[str, list] = {k: [] for k in ("llmkit --pack", "TRL packing (padding-free)") if k in sides}
    for r in range(a.rounds):
        order = list(sides.items()) if r % 2 == 0 else list(sides.items())[::-1]   # alternate: load drifts
        for name, (python, script, mode) in order:
            out = str(WORK / f"out-{name.split()[0]}-{mode}")
            res, _ = run(python, script, [str(tok), str(data), str(config), out, str(a.batch), str(a.seq_len), mode,
                                          str(a.threads), "epoch"], env)
            results[name].append(res)
        for name in walls:   # the small job, whole process: start-up, data preparation, N steps
            python, script, mode = sides[name]
            out = str(WORK / f"small-{name.split()[0]}")
            _, wall = run(python, script, [str(tok), str(data), str(config), out, str(a.batch), str(a.seq_len), mode,
                                           str(a.threads), str(a.small_steps)], env)
            walls[name].append(wall)
    report = {"threads": a.threads, "examples": a.examples, "batch": a.batch, "seq_len": a.seq_len, "sides": {}}
    for name, rows in results.items():
        trained = rows[0]["trained_tokens"]
        seconds = statistics.median(r["train_seconds"] for r in rows)
        report["sides"][name] = {"trained_tokens": trained, "train_seconds": round(seconds, 2),
                                 "trained_tokens_per_second": round(trained / seconds, 1) if trained else None,
                                 "steps": rows[0]["steps"],
                                 "peak_rss_mib": round(max(r["peak_rss_bytes"] or 0 for r in rows) / 2**20)}
    for name, values in walls.items():
        report["sides"][name]["small_job_wall_seconds"] = round(statistics.median(values), 2)
    plain = results["plain Trainer padded (hand-written answer mask)"]
    ours = results["llmkit padded"]
    # per-round ratios (the two sides ran back to back), then their median: robust to load that drifts
    ratios = [(o["trained_tokens"] / o["train_seconds"]) / (p["trained_tokens"] / p["train_seconds"])
              for p, o in zip(plain, ours)]
    report["llmkit_padded_vs_plain_trainer"] = {"per_round": [round(x, 3) for x in ratios],
                                                "median": round(statistics.median(ratios), 3)}
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
