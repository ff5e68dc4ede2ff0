"""`llmkit peft`: every method on one model and data, next to full `sft` and to a hand-written peft + Trainer
script (the usual recipe) for LoRA.

Per method, in a fresh process each (so peak RSS is the run's own): trainable parameters (and peft's own count),
adapter size on disk, trained tokens/s (each Trainer's own train_runtime), the process peak RSS and memory-estimate's
forecast (tensors only on CPU). The baseline trains the same LoRA (q_proj, v_proj, r=8) on the same pre-tokenized
rows with the same batch, steps and threads, loss on the answers only.

  .venv/bin/python benchmarks/peft_methods.py --threads 1 --steps 30
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
WORK = ROOT / "benchmarks" / "_work" / "peft"
# 64-multiples so the QLoRA row runs on bitsandbytes' CPU kernels
LLAMA = dict(model_type="llama", hidden_size=256, intermediate_size=704, num_hidden_layers=4, num_attention_heads=4,
             num_key_value_heads=4, max_position_embeddings=512, tie_word_embeddings=False)

SETUP = r'''
import json, sys
from pathlib import Path
from transformers import AutoTokenizer
from llmkit import corpus
from llmkit.config import TokenizeTrainConfig
from llmkit.modeling import build_model
from llmkit.tokenization import train_tokenizer
work, llama = Path(sys.argv[1]), json.loads(sys.argv[2])
train, _ = corpus.documents()
train_tokenizer(TokenizeTrainConfig(corpus=("x",), output_dir=str(work / "tok"), vocab_size=4096, overwrite=True),
                texts=[r["text"] for r in train])
tok = AutoTokenizer.from_pretrained(work / "tok")
model = build_model(llama, vocab_size=len(tok), seed=0, overrides={"pad_token_id": tok.pad_token_id,
                                                                   "eos_token_id": tok.eos_token_id})
model.save_pretrained(work / "base")
tok.save_pretrained(work / "base")
pairs = corpus.qa_pairs()
rows = [{"messages": [{"role": "user", "content": p["question"]}, {"role": "assistant", "content": p["answer"]}]}
        for p in pairs] * 4
(work / "qa.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
print(json.dumps({"rows": len(rows)}))
'''

LLMKIT = r'''
import json, sys, torch
torch.set_num_threads(int(sys.argv[4]))
from llmkit.config import PeftConfig, SFTConfig
from llmkit.training.peft import run_peft
from llmkit.training.sft import run_sft
work, method, steps = sys.argv[1], sys.argv[2], int(sys.argv[3])
common = dict(model=work + "/base", data=work + "/qa.jsonl", template="plain", seq_len=128, batch_size=8,
              max_steps=steps, logging_steps=1000, save_steps=100000, output_dir=f"{work}/run-{method}",
              overwrite=True)
extra = {"qlora": dict(method="lora", quant="nf4", double_quant=True),
         "prompt-tuning": dict(method="prompt-tuning", prompt_init_text="Answer the question:"),
         }.get(method, dict(method=method))
if method == "full":
    r = run_sft(SFTConfig(lr=1e-4, **common))
    training, trainable, adapter = r, r.trainable_parameters, None
else:
    r = run_peft(PeftConfig(**common, **extra))
    training, trainable, adapter = r.training, r.trainable_parameters, r.adapter_bytes
m = json.load(open(training.output_dir + "/manifest.json"))
print(json.dumps({"trainable": trainable, "parameters": training.parameters, "adapter_bytes": adapter,
                  "tokens_per_second": training.tokens_per_second, "train_seconds": m["train_seconds"],
                  "peak_rss_bytes": m.get("peak_rss_bytes"),
                  "estimated_bytes": m["memory"]["estimated_peak_bytes"]}))
'''

BASELINE = r'''
import json, resource, sys, time, torch
torch.set_num_threads(int(sys.argv[3]))
from peft import LoraConfig, get_peft_model
from transformers import AutoModelForCausalLM, AutoTokenizer, Trainer, TrainingArguments
work, steps = sys.argv[1], int(sys.argv[2])
tok = AutoTokenizer.from_pretrained(work + "/base")
rows = []
for line in open(work + "/qa.jsonl"):
    m = json.loads(line)["messages"]
    prompt = tok("### User:\n" + m[0]["content"] + "\n\n### Assistant:\n", add_special_tokens=False)["input_ids"]
    answer = tok(m[1]["content"] + tok.eos_token, add_special_tokens=False)["input_ids"]
    ids = (prompt + answer)[:128]
    rows.append({"input_ids": ids, "labels": ([-100] * len(prompt) + answer)[:128]})
def collate(batch):
    width = max(len(r["input_ids"]) for r in batch)
    ids = torch.tensor([r["input_ids"] + [tok.pad_token_id] * (width - len(r["input_ids"])) for r in batch])
    labels = torch.tensor([r["labels"] + [-100] * (width - len(r["labels"])) for r in batch])
    mask = torch.tensor([[1] * len(r["input_ids"]) + [0] * (width - len(r["input_ids"])) for r in batch])
    return {"input_ids": ids, "labels": labels, "attention_mask": mask}
model = get_peft_model(AutoModelForCausalLM.from_pretrained(work + "/base", dtype=torch.float32),
                       LoraConfig(task_type="CAUSAL_LM", r=8, lora_alpha=16, lora_dropout=0.05,
                                  target_modules=["q_proj", "v_proj"]))
args = TrainingArguments(output_dir=work + "/baseline", per_device_train_batch_size=8, max_steps=steps,
                         learning_rate=2e-4, lr_scheduler_type="cosine", logging_steps=1000, save_strategy="no",
                         report_to=[], use_cpu=True, disable_tqdm=True, remove_unused_columns=False, seed=0)
class Counting(Trainer):   # non-pad tokens actually trained (the dataloader may collate a batch ahead)
    seen = 0
    def training_step(self, model, inputs, num_items_in_batch=None):
        Counting.seen += int(inputs["attention_mask"].sum())
        return super().training_step(model, inputs, num_items_in_batch)
trainer = Counting(model=model, args=args, train_dataset=rows, data_collator=collate)
out = trainer.train()
tokens = Counting.seen
print(json.dumps({"trainable": model.get_nb_trainable_parameters()[0], "train_seconds": out.metrics["train_runtime"],
                  "tokens_per_second": tokens / out.metrics["train_runtime"],
                  "peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024}))
'''

METHODS = ["full", "lora", "qlora", "ia3", "prompt-tuning", "p-tuning", "prefix-tuning"]


def run(code: str, *args: str) -> dict:
    done = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, cwd=ROOT)
    if done.returncode != 0:
        raise SystemExit(done.stderr[-3000:])
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--steps", type=int, default=30)
    args = parser.parse_args()
    WORK.mkdir(parents=True, exist_ok=True)
    run(SETUP, str(WORK), json.dumps(LLAMA))
    rows = {}
    for method in METHODS:
        rows[method] = run(LLMKIT, str(WORK), method, str(args.steps), str(args.threads))
        print(method, rows[method], flush=True)
    # the baseline and llmkit's LoRA alternate twice, so machine noise hits both alike
    base_runs, lora_runs = [], []
    for _ in range(2):
        base_runs.append(run(BASELINE, str(WORK), str(args.steps), str(args.threads)))
        lora_runs.append(run(LLMKIT, str(WORK), "lora", str(args.steps), str(args.threads)))
    print("\n| method | trainable | share | adapter on disk | tokens/s | peak RSS | memory-estimate (tensors) |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for method, r in rows.items():
        adapter = "-" if r["adapter_bytes"] is None else f"{r['adapter_bytes'] / 2**10:,.0f} KiB"
        print(f"| {method} | {r['trainable']:,} | {r['trainable'] / r['parameters']:.2%} | {adapter} | "
              f"{r['tokens_per_second']:,.0f} | {r['peak_rss_bytes'] / 2**20:,.0f} MiB | "
              f"{r['estimated_bytes'] / 2**20:,.1f} MiB |")
    best = lambda runs: max(r["tokens_per_second"] for r in runs)  # noqa: E731
    print(f"\nLoRA q_proj,v_proj r=8, {args.steps} steps of 8 rows, {args.threads} thread(s), best of 2 alternating: "
          f"llmkit peft {best(lora_runs):,.0f} tokens/s (all tokens incl. prompt) vs peft + Trainer script "
          f"{best(base_runs):,.0f} tokens/s = {best(lora_runs) / best(base_runs):.2f}x; trainable "
          f"{lora_runs[0]['trainable']:,} vs {base_runs[0]['trainable']:,}")


if __name__ == "__main__":
    main()
