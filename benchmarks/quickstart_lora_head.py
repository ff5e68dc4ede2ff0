"""Why the quickstart's LoRA stage trains the output head too: LoRA on every linear layer of the quickstart's tiny
pretrained model, with the head frozen and with the head trained (peft's modules_to_save), on the quickstart's
question/answer pairs. Prints each run's loss curve (every 10 steps).

Runs `llmkit quickstart --fast` first (about a minute) for the pretrained model and the data.

  .venv/bin/python benchmarks/quickstart_lora_head.py
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
WORK = ROOT / "benchmarks" / "_work" / "quickstart-lora"
RUNS = [("head frozen", 1e-2, 80, ()), ("head frozen", 3e-2, 80, ()), ("head frozen", 1e-2, 300, ()),
        ("head trained", 1e-2, 80, ("lm_head",))]


def main() -> None:
    import torch

    from llmkit.config import PeftConfig
    from llmkit.training.peft import run_peft

    subprocess.run([sys.executable, "-m", "llmkit", "quickstart", "--fast", "-o", str(WORK / "qs")], check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    torch.set_num_threads(1)
    print("| head | lr | steps | loss every 10 steps | adapter bytes |\n|---|---:|---:|---|---:|")
    for name, lr, steps, save in RUNS:
        result = run_peft(PeftConfig(
            model=str(WORK / "qs" / "pretrain" / "model"), data=str(WORK / "qs" / "data" / "qa.jsonl"),
            template="plain", method="lora", lora_rank=16, lora_alpha=32, lora_dropout=0.0,
            lora_targets=("all-linear",), modules_to_save=save, seq_len=128, batch_size=8, lr=lr, max_steps=steps,
            warmup_ratio=0.05, scheduler="cosine", logging_steps=10, save_steps=100000,
            output_dir=str(WORK / "run"), overwrite=True))
        curve = ", ".join(f"{x:.2f}" for x in result.training.loss_curve)
        print(f"| {name} | {lr:g} | {steps} | {curve} | {result.adapter_bytes:,} |", flush=True)


if __name__ == "__main__":
    main()
