"""`llmkit serve` throughput: 16 concurrent clients against the server batching (--max-batch-size 16) and serving
one request at a time (--max-batch-size 1), in generated tokens per second.

    .venv/bin/python benchmarks/serve.py [--rounds 3] [--clients 16] [--new-tokens 64] [--threads 1]

The model is generate_speed.py's (a randomly initialised Qwen2-shaped LM of a few M parameters); each client sends
one greedy /v1/completions request for a different prompt; the server runs in this process on a free loopback port,
rounds alternating so machine noise hits both alike.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

from generate_speed import build


def start(model: Path, batch_size: int, clients: int, new_tokens: int):
    import uvicorn

    from llmkit.config import ServeConfig
    from llmkit.inference.generator import Generator
    from llmkit.runtime import free_port
    from llmkit.serve import create_app

    cfg = ServeConfig(model=str(model), max_batch_size=batch_size, max_queue=clients, max_tokens=new_tokens)
    server = uvicorn.Server(uvicorn.Config(create_app(Generator(cfg), cfg), host="127.0.0.1", port=free_port(),
                                           log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.05)
    return server, thread


def one_round(url: str, model: str, prompts: list[str], new_tokens: int) -> float:
    """Generated tokens per second over all clients, from the first request sent to the last answer."""
    import httpx

    tokens = []

    def ask(prompt: str) -> None:
        reply = httpx.post(f"{url}/v1/completions", timeout=600, json={
            "model": model, "prompt": prompt, "max_tokens": new_tokens, "temperature": 0}).json()
        tokens.append(reply["usage"]["completion_tokens"])

    threads = [threading.Thread(target=ask, args=(p,)) for p in prompts]
    started = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return sum(tokens) / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()

    import torch

    from llmkit import corpus

    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        model = build(Path(tmp), vocab=4096)
        train, _ = corpus.documents()
        prompts = [r["text"][:40 + 7 * i] for i, r in enumerate(train[:args.clients])]
        servers = {size: start(model, size, args.clients, args.new_tokens) for size in (args.clients, 1)}
        rates: dict[int, list[float]] = {size: [] for size in servers}
        for _ in range(args.rounds):
            for size, (server, _) in servers.items():
                rates[size].append(one_round(f"http://127.0.0.1:{server.config.port}", str(model), prompts,
                                             args.new_tokens))
        for server, thread in servers.values():
            server.should_exit = True
            thread.join()
    batched, single = (statistics.median(rates[size]) for size in (args.clients, 1))
    print(f"{args.clients} concurrent clients, {args.new_tokens} new tokens each, greedy, {args.threads} thread(s), "
          f"median of {args.rounds} rounds", file=sys.stderr)
    print(f"--max-batch-size {args.clients}: {batched:,.0f} tokens/s")
    print(f"--max-batch-size 1: {single:,.0f} tokens/s")
    print(f"batched / one at a time: {batched / single:.2f}x")


if __name__ == "__main__":
    main()
