"""Start-up: median wall time of `llmkit --help` and friends against the floor (Typer's own rich help) and peers.

    .venv/bin/python benchmarks/startup.py [--repeats 15] [--before REV]

Every subcommand's --help and a whole `memory-estimate --params 1.4B`, against the floor (`import typer.rich_utils`,
what a Typer app's rich help costs before it does anything) and the peers (accelerate; trl from
benchmarks/_work/trl-venv when it exists). With --before REV the same commands also run on git revision REV (a
worktree under benchmarks/_work), alternated with today's in one run; both trees then start through the same
`python -c` driver with PYTHONPATH, so the install method (editable finder or not) does not enter the comparison.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
from pathlib import Path

from _common import BIN, ROOT, alternating_medians

SUBCOMMANDS = ("tokenize", "tokenize show", "tokenize train", "tokenize dataset", "pretrain", "sft", "peft", "launch",
               "memory-estimate", "quantize", "quantize model", "merge", "generate", "quickstart", "env", "presets")
TRL = ROOT / "benchmarks" / "_work" / "trl-venv" / "bin" / "trl"   # see sft_throughput.py for this venv
FLOOR = 'python -c "import typer.rich_utils" (floor)'
DRIVER = "import sys; sys.argv[0] = 'llmkit'; from llmkit.commands import main; main()"


def llmkit_lines() -> dict[str, list[str]]:
    lines = {"llmkit --help": ["--help"]}
    for sub in SUBCOMMANDS:
        lines[f"llmkit {sub} --help"] = [*sub.split(), "--help"]
    lines["llmkit memory-estimate --params 1.4B"] = ["memory-estimate", "--params", "1.4B"]
    return lines


def package_root(tree: Path) -> Path:
    return tree / "src" if (tree / "src" / "llmkit").is_dir() else tree


def worktree(rev: str) -> Path:
    sha = subprocess.run(["git", "rev-parse", "--short", rev], cwd=ROOT, check=True, capture_output=True,
                         text=True).stdout.strip()
    tree = ROOT / "benchmarks" / "_work" / f"before-{sha}"
    if not tree.exists():
        subprocess.run(["git", "worktree", "add", "--detach", str(tree), sha], cwd=ROOT, check=True,
                       capture_output=True)
    return tree


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--before", metavar="REV", help="also time git revision REV, side by side")
    args = parser.parse_args()
    commands = {FLOOR: [sys.executable, "-c", "import typer.rich_utils"]}
    trees = {"after": ROOT} if args.before is None else {"before": worktree(args.before), "after": ROOT}
    for name, argv in llmkit_lines().items():
        for label, tree in trees.items():
            key = name if args.before is None else f"{name} [{label}]"
            if args.before is None:
                commands[key] = [str(BIN / "llmkit"), *argv]
            else:
                commands[key] = ["env", f"PYTHONPATH={package_root(tree)}", sys.executable, "-c", DRIVER, *argv]
    if (BIN / "accelerate").exists() or shutil.which("accelerate"):
        commands["accelerate --help (peer)"] = [str(BIN / "accelerate"), "--help"]
    if TRL.exists():
        commands["trl --help (peer)"] = [str(TRL), "--help"]
    medians = alternating_medians(commands, args.repeats, env={"COLUMNS": "100"})
    floor = medians[FLOOR]
    if args.before is None:
        print("| command | median wall time (s) | × floor |")
        print("|---|---:|---:|")
        for name, seconds in medians.items():
            print(f"| `{name}` | {seconds:.3f} | {seconds / floor:.2f} |")
        return
    print(f"| command | before {args.before} (s) | × floor | after (s) | × floor |")
    print("|---|---:|---:|---:|---:|")
    print(f"| `{FLOOR}` | {floor:.3f} | 1.00 | {floor:.3f} | 1.00 |")
    for name in llmkit_lines():
        before, after = medians[f"{name} [before]"], medians[f"{name} [after]"]
        print(f"| `{name}` | {before:.3f} | {before / floor:.2f} | {after:.3f} | {after / floor:.2f} |")
    for name, seconds in medians.items():
        if name.endswith("(peer)"):
            print(f"| `{name}` | {seconds:.3f} | {seconds / floor:.2f} | | |")


if __name__ == "__main__":
    main()
