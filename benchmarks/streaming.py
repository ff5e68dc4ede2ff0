"""`pretrain --streaming` (issue #17) beside the memory-mapped path, on data_scale.py's corpora: peak RSS against
corpus size, time to the first optimizer step, and training tokens/s.

    .venv/bin/python benchmarks/streaming.py [--sizes 1,20,200] [--steps 40]

Each run is a fresh process (data_scale.pretrain: a 2-layer LLaMA of hidden 32 from scratch, batch 8 x 128,
--pack). "mapped, cold" tokenizes the whole corpus into an empty --data-cache first; "mapped, cached" is the same
command again; "streaming" reads the parquet file as a `datasets` stream with a 10,000-document shuffle buffer.
"""

from __future__ import annotations

import argparse
import os
import shutil

from data_scale import WORK, prepare, pretrain


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sizes", default="1,20,200", help="corpus sizes, millions of tokens")
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--mapped-sizes", default="200", help="sizes also run memory-mapped, cold and cached")
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    print(f"load average at start: {os.getloadavg()}", flush=True)
    tok, corpora = prepare(sizes)
    print("| corpus | path | peak RSS (MB) | first step (s) | wall (s) | train tokens/s |")
    print("|---:|---|---:|---:|---:|---:|")
    out = WORK / "streaming-run"
    for size in sizes:
        runs = [("streaming", None, ("--streaming",))]
        if str(size) in args.mapped_sizes.split(","):
            cache = WORK / "streaming-cache"
            shutil.rmtree(cache, ignore_errors=True)
            runs += [("mapped, cold", cache, ()), ("mapped, cached", cache, ())]
        for label, cache, extra in runs:
            r = pretrain(None, tok, corpora[size], True, cache, out, extra=extra, steps=args.steps)
            print(f"| {size}M | {label} | {r['peak_rss_mb']:,.0f} | {r['first_step_s']:.1f} | {r['wall_s']:.1f} | "
                  f"{r['tokens_per_second']:,.0f} |", flush=True)
    print(f"load average at end: {os.getloadavg()}")
    shutil.rmtree(WORK / "streaming-cache", ignore_errors=True)


if __name__ == "__main__":
    main()
