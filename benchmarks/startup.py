"""Start-up: median wall time of `llmkit --help` and friends against the floor (Typer's own rich help) and peers.

    .venv/bin/python benchmarks/startup.py [--repeats 15]
"""

from __future__ import annotations

import argparse
import shutil
import sys

from _common import BIN, alternating_medians


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=15)
    args = parser.parse_args()
    llmkit = str(BIN / "llmkit")
    commands = {
        'python -c "import typer.rich_utils" (floor)': [sys.executable, "-c", "import typer.rich_utils"],
        "llmkit --help": [llmkit, "--help"],
        "llmkit tokenize --help": [llmkit, "tokenize", "--help"],
        "llmkit tokenize show --help": [llmkit, "tokenize", "show", "--help"],
    }
    if (BIN / "accelerate").exists() or shutil.which("accelerate"):
        commands["accelerate --help (peer)"] = [str(BIN / "accelerate"), "--help"]
    medians = alternating_medians(commands, args.repeats, env={"COLUMNS": "100"})
    floor = medians['python -c "import typer.rich_utils" (floor)']
    print(f"| command | median wall time (s) | × floor |")
    print("|---|---:|---:|")
    for name, seconds in medians.items():
        print(f"| `{name}` | {seconds:.3f} | {seconds / floor:.2f} |")


if __name__ == "__main__":
    main()
