"""Bad input, as fresh processes: how long each takes to fail, and that it fails cleanly.

    .venv/bin/python benchmarks/bad_inputs.py [--every N]

Runs every N-th case of tests/commands/test_bad_input_matrix.py (values that are not numbers, values outside a
list, unknown flags, presets and config files, on every command) plus mistyped local paths on every command that
reads one and hub ids that are neither cached nor reachable, each as `llmkit ...` in a fresh process in an empty
directory. Prints the wall-time distribution and each source case's time. None of these needs a model, so each
should fail in under 1 s.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _common import BIN, ROOT

PATH_TYPOS = [
    ["generate", "-m", "./no-model", "--prompt", "x"],
    ["generate", "-m", "./no-model", "--input", "in.jsonl", "--output", "out.jsonl"],
    ["sft", "-m", "./no-model", "--data", "d.jsonl", "-o", "run"],
    ["peft", "-m", "./no-model", "--data", "d.jsonl", "-o", "run"],
    ["pretrain", "-m", "./no.json", "--from-scratch", "-t", "./no-tok", "--data", "d.jsonl", "-o", "run"],
    ["merge", "--adapter", "./no-adapter", "-o", "merged"],
    ["quantize", "model", "-m", "./no-model", "-o", "q"],
    ["quantize", "compare", "-m", "./no-model"],
    ["tokenize", "show", "-t", "./no-tok", "hello"],
    ["tokenize", "dataset", "-t", "./no-tok", "--data", "d.jsonl", "-o", "ds"],
    ["tokenize", "train", "--corpus", "missing.txt", "-o", "tok"],
    ["launch", "--cpu", "--dry-run", "--", "llmkit", "sft", "-m", "./no-model", "--data", "d.jsonl", "-o", "run"],
    # hub ids neither in the HF cache nor reachable (offline here)
    ["generate", "-m", "no-org/no-model", "--prompt", "x"],
    ["sft", "-m", "no-org/no-model", "--data", "d.jsonl", "-o", "run"],
    ["tokenize", "show", "-t", "no-org/no-tok", "hello"],
]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--every", type=int, default=5, help="run every N-th matrix case")
    args = parser.parse_args()
    sys.path[:0] = [str(ROOT / "tests"), str(ROOT / "tests" / "commands"), str(ROOT / "src")]
    from test_bad_input_matrix import CASES

    cases = [argv for _, argv, _ in CASES[::args.every]] + PATH_TYPOS
    times, unclean = [], []
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "d.jsonl").write_text('{"text": "a"}\n')
        (Path(tmp) / "unknown-key.yaml").write_text("no_such_setting: 1\n")
        (Path(tmp) / "not-a-mapping.yaml").write_text("- a list\n")
        for argv in cases:
            started = time.perf_counter()
            proc = subprocess.run([str(BIN / "llmkit"), *argv], cwd=tmp, capture_output=True, text=True)
            times.append((time.perf_counter() - started, argv))
            if proc.returncode not in (1, 2) or not proc.stderr.startswith("Error: ") or "Traceback" in proc.stderr:
                unclean.append((argv, proc.returncode, proc.stderr[:200]))
    seconds = sorted(t for t, _ in times)
    print(f"{len(cases)} cases: median {statistics.median(seconds):.3f} s, 90th percentile "
          f"{seconds[int(0.9 * (len(seconds) - 1))]:.3f} s, max {seconds[-1]:.3f} s; "
          f"{sum(t >= 1 for t in seconds)} took 1 s or more; {len(unclean)} not clean")
    for t, argv in sorted(times, reverse=True)[:3]:
        print(f"  slowest: {t:.3f} s  llmkit {' '.join(argv)}")
    for t, argv in times[-len(PATH_TYPOS):]:
        print(f"  source: {t:.3f} s  llmkit {' '.join(argv)}")
    for argv, code, err in unclean:
        print(f"  NOT CLEAN (exit {code}): llmkit {' '.join(argv)}: {err}")


if __name__ == "__main__":
    main()
