"""AdamW implementations on this CPU: time per step and how far they drift apart (the training default's reason).

    .venv/bin/python benchmarks/optimizer_step.py [--params 4e6] [--tensors 40] [--steps 20]

One thread, the same parameters and gradients for each of fused, foreach and for-loop AdamW; prints the median
step time of each and the largest parameter difference from foreach after 5 steps from the same start.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--params", type=float, default=4e6)
    parser.add_argument("--tensors", type=int, default=40)
    parser.add_argument("--steps", type=int, default=20)
    args = parser.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    size = int(args.params) // args.tensors
    start = [torch.randn(size) for _ in range(args.tensors)]
    grads = [torch.randn(size) for _ in range(args.tensors)]
    results = {}
    for name, options in (("fused", {"fused": True}), ("foreach", {"foreach": True}), ("for-loop", {"foreach": False})):
        params = [torch.nn.Parameter(p.clone()) for p in start]
        for p, g in zip(params, grads):
            p.grad = g.clone()
        optimizer = torch.optim.AdamW(params, lr=1e-3, weight_decay=0.01, **options)
        times = []
        for step in range(args.steps):
            began = time.perf_counter()
            optimizer.step()
            times.append(time.perf_counter() - began)
            if step == 4:
                results[name] = [p.detach().clone() for p in params]
        print(f"{name:>8}: {statistics.median(times) * 1e3:.2f} ms per step")
    for name in ("fused", "for-loop"):
        drift = max((a - b).abs().max().item() for a, b in zip(results[name], results["foreach"]))
        print(f"{name} vs foreach after 5 steps: max |difference| {drift:.2e}")


if __name__ == "__main__":
    main()
