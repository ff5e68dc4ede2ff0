"""Training throughput of `llmkit pretrain` against a plain transformers Trainer script, and packing efficiency.

Same tiny LLaMA, data, batch, sequence length and thread count on both sides; runs alternate so machine noise hits
both alike. tokens/s = non-pad tokens trained / train_runtime (the Trainer's own clock on both sides).

  .venv/bin/python benchmarks/pretrain_throughput.py --steps 30 --rounds 2 --threads 1
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

ROOT = Path(__file__).resolve().parents[1]
LLAMA = dict(model_type="llama", hidden_size=128, intermediate_size=352, num_hidden_layers=2, num_attention_heads=4,
             num_key_value_heads=4, max_position_embeddings=512, tie_word_embeddings=False)

PLAIN = r'''
import json, sys, time, torch
from datasets import Dataset
from transformers import (AutoConfig, AutoModelForCausalLM, AutoTokenizer, DataCollatorForLanguageModeling, Trainer,
                          TrainingArguments)
tok_dir, data, cfg_file, out, steps, batch, seq = sys.argv[1:8]
steps, batch, seq = int(steps), int(batch), int(seq)
tok = AutoTokenizer.from_pretrained(tok_dir)
texts = [json.loads(l)["text"] for l in open(data)]
ids = [x + [tok.eos_token_id] for x in tok(texts, add_special_tokens=False)["input_ids"]]
flat = [t for x in ids for t in x]
blocks = [flat[i:i + seq] for i in range(0, len(flat) - seq + 1, seq)]
ds = Dataset.from_dict({"input_ids": blocks})
fields = json.load(open(cfg_file)); mt = fields.pop("model_type")
torch.manual_seed(0)
model = AutoModelForCausalLM.from_config(AutoConfig.for_model(mt, vocab_size=len(tok), **fields))
args = TrainingArguments(output_dir=out, per_device_train_batch_size=batch, max_steps=steps, learning_rate=2e-3,
                         logging_steps=10, save_strategy="no", report_to=[], use_cpu=True, disable_tqdm=True)
trainer = Trainer(model=model, args=args, train_dataset=ds,
                  data_collator=DataCollatorForLanguageModeling(tok, mlm=False))
m = trainer.train().metrics
print(json.dumps({"tokens_per_second": steps * batch * seq / m["train_runtime"]}))
'''

LLMKIT = r'''
import json, sys, torch
from llmkit.config import PretrainConfig
from llmkit.training.pretrain import run_pretrain
tok_dir, data, cfg_file, out, steps, batch, seq, pack = sys.argv[1:9]
cfg = PretrainConfig(model=cfg_file, from_scratch=True, tokenizer=tok_dir, data=data, output_dir=out, overwrite=True,
                     max_steps=int(steps), batch_size=int(batch), seq_len=int(seq), pack=pack == "pack", lr=2e-3,
                     logging_steps=10, save_steps=100000)
r = run_pretrain(cfg)
m = json.load(open(out + "/manifest.json"))
print(json.dumps({"tokens_per_second": r.tokens / m["train_seconds"], "tokens": r.tokens,
                  "padded_tokens": int(steps) * int(batch) * int(seq)}))
'''


def run(code: str, argv: list[str], threads: int) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads), "HF_HUB_OFFLINE": "1",
           "TOKENIZERS_PARALLELISM": "false"}
    code = f"import torch; torch.set_num_threads({threads})\n" + code
    out = subprocess.run([sys.executable, "-c", code, *argv], capture_output=True, text=True, env=env, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--seq-len", type=int, default=128)
    a = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="llmkit-bench-"))
    from llmkit import corpus
    from llmkit.config import TokenizeTrainConfig
    from llmkit.tokenization import train_tokenizer

    train, _ = corpus.documents()
    data = corpus.write_jsonl(train, work / "train.jsonl")
    train_tokenizer(TokenizeTrainConfig(corpus=(str(data),), output_dir=str(work / "tok"), vocab_size=4096),
                    texts=[r["text"] for r in train])
    cfg = work / "llama.json"
    cfg.write_text(json.dumps(LLAMA))
    common = [str(work / "tok"), str(data), str(cfg)]
    results: dict[str, list[float]] = {"plain Trainer": [], "llmkit pretrain --pack": []}
    for r in range(a.rounds):
        results["plain Trainer"].append(run(PLAIN, common + [str(work / f"p{r}"), str(a.steps), str(a.batch),
                                                               str(a.seq_len)], a.threads)["tokens_per_second"])
        results["llmkit pretrain --pack"].append(run(LLMKIT, common + [str(work / f"l{r}"), str(a.steps),
                                                                        str(a.batch), str(a.seq_len), "pack"],
                                                     a.threads)["tokens_per_second"])
    # packing: useful (non-pad) tokens/s of packed vs padded rows on the varied-length paragraphs
    padded = run(LLMKIT, common + [str(work / "u"), str(a.steps), str(a.batch), str(a.seq_len), "nopack"], a.threads)
    packed = run(LLMKIT, common + [str(work / "k"), str(a.steps), str(a.batch), str(a.seq_len), "pack"], a.threads)
    best = {k: max(v) for k, v in results.items()}
    print(f"threads: {a.threads} (OMP_NUM_THREADS and torch.set_num_threads on both sides); "
          f"batch {a.batch} x seq {a.seq_len}; {a.steps} steps; best of {a.rounds} alternating rounds")
    print("| what | tokens/s (best) | all rounds | × plain |\n|---|---:|---|---:|")
    for k, v in results.items():
        print(f"| {k} | {best[k]:,.0f} | {', '.join(f'{x:,.0f}' for x in v)} | {best[k] / best['plain Trainer']:.2f} |")
    print(f"\npacked rows: non-pad share {packed['tokens'] / packed['padded_tokens']:.4f}; "
          f"useful tokens/s {packed['tokens_per_second']:,.0f}")
    print(f"padded rows (one paragraph per row, padded to the longest in the batch): non-pad tokens/s "
          f"{padded['tokens_per_second']:,.0f}; packed/padded = "
          f"{packed['tokens_per_second'] / padded['tokens_per_second']:.2f}x")


if __name__ == "__main__":
    main()
