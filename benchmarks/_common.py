"""Helpers for the benchmark scripts: timing whole commands side by side, alternating, and medians."""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def time_command(argv: list[str], env: dict | None = None) -> float:
    started = time.perf_counter()
    subprocess.run(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=True,
                   env={**os.environ, **(env or {})})
    return time.perf_counter() - started


def alternating_medians(commands: dict[str, list[str]], repeats: int, env: dict | None = None) -> dict[str, float]:
    """Run each command once per round, rounds repeated, so machine noise hits every command alike."""
    times: dict[str, list[float]] = {name: [] for name in commands}
    for name, argv in commands.items():  # warm the file cache
        time_command(argv, env)
    for _ in range(repeats):
        for name, argv in commands.items():
            times[name].append(time_command(argv, env))
    return {name: statistics.median(values) for name, values in times.items()}
