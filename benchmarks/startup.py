"""Start-up: median wall time of `llmkit --help` and friends against the floor (Typer's own rich help) and peers.

    .venv/bin/python benchmarks/startup.py [--repeats 15]

Every subcommand's --help and a whole `memory-estimate --params 1.4B`, against the floor (Typer's own rich help
module) and the peers (accelerate; trl from benchmarks/_work/trl-venv when it exists).
"""

from __future__ import annotations

import argparse
import shutil
import sys

from _common import BIN, ROOT, alternating_medians

SUBCOMMANDS = ("tokenize", "tokenize show", "tokenize train", "tokenize dataset", "pretrain", "sft", "peft", "launch",
               "memory-estimate", "quantize", "quantize model", "merge", "generate", "quickstart", "env", "presets")
TRL = ROOT / "benchmarks" / "_work" / "trl-venv" / "bin" / "trl"   # see sft_throughput.py for this venv


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=15)
    args = parser.parse_args()
    llmkit = str(BIN / "llmkit")
    commands = {
        'python -c "import typer.rich_utils" (floor)': [sys.executable, "-c", "import typer.rich_utils"],
        "llmkit --help": [llmkit, "--help"],
    }
    for sub in SUBCOMMANDS:
        commands[f"llmkit {sub} --help"] = [llmkit, *sub.split(), "--help"]
    commands["llmkit memory-estimate --params 1.4B"] = [llmkit, "memory-estimate", "--params", "1.4B"]
    if (BIN / "accelerate").exists() or shutil.which("accelerate"):
        commands["accelerate --help (peer)"] = [str(BIN / "accelerate"), "--help"]
    if TRL.exists():
        commands["trl --help (peer)"] = [str(TRL), "--help"]
    medians = alternating_medians(commands, args.repeats, env={"COLUMNS": "100"})
    floor = medians['python -c "import typer.rich_utils" (floor)']
    print(f"| command | median wall time (s) | × floor |")
    print("|---|---:|---:|")
    for name, seconds in medians.items():
        print(f"| `{name}` | {seconds:.3f} | {seconds / floor:.2f} |")


if __name__ == "__main__":
    main()
