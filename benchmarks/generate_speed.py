"""`llmkit generate` speed: decode tokens/s against a plain `model.generate` script on the same model and prompt,
batch mode (--batch-size 8) against one prompt at a time, and time to first token.

    .venv/bin/python benchmarks/generate_speed.py [--rounds 5] [--new-tokens 128] [--prompts 64] [--threads 1]

The model is a randomly initialised Qwen2-shaped LM of a few M parameters with a byte-level BPE tokenizer trained on
the embedded corpus; both sides generate exactly --new-tokens tokens (min = max), greedy, in one process, rounds
alternating so machine noise hits both alike.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path


def build(workdir: Path, vocab: int) -> Path:
    from llmkit import corpus
    from llmkit.config import TokenizeTrainConfig
    from llmkit.modeling import build_model, load_tokenizer
    from llmkit.tokenization import train_tokenizer

    train, _ = corpus.documents()
    texts = [r["text"] for r in train]
    (workdir / "corpus.txt").write_text("\n".join(texts), encoding="utf-8")
    train_tokenizer(TokenizeTrainConfig(corpus=(str(workdir / "corpus.txt"),), output_dir=str(workdir / "tok"),
                                        type="bpe", vocab_size=vocab, overwrite=True), texts=texts)
    tok = load_tokenizer(str(workdir / "tok"))
    model = build_model("qwen2.5-0.5b", vocab_size=len(tok), seed=0, overrides=dict(
        num_hidden_layers=4, hidden_size=256, intermediate_size=688, num_attention_heads=4, num_key_value_heads=2,
        bos_token_id=0, eos_token_id=1, pad_token_id=2, max_position_embeddings=1024, tie_word_embeddings=False))
    out = workdir / "model"
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--new-tokens", type=int, default=128)
    parser.add_argument("--prompts", type=int, default=64)
    parser.add_argument("--batch-new-tokens", type=int, default=32)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from llmkit import corpus
    from llmkit.config import GenerateConfig
    from llmkit.inference.batch import run_batch
    from llmkit.inference.generator import Generator

    torch.set_num_threads(args.threads)
    work = Path(tempfile.mkdtemp(prefix="llmkit-gen-bench-"))
    model_dir = build(work, 4096)
    n = args.new_tokens
    train, held_out = corpus.documents()
    prompt = next(r["text"] for r in held_out if len(r["text"]) > 400)[:400]

    # the plain script: what a user writes by hand
    plain_model = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    plain_tok = AutoTokenizer.from_pretrained(model_dir)
    params = sum(p.numel() for p in plain_model.parameters())

    def plain() -> float:
        enc = plain_tok(prompt, return_tensors="pt")
        started = time.perf_counter()
        with torch.inference_mode():
            out = plain_model.generate(**enc, max_new_tokens=n, min_new_tokens=n, do_sample=False,
                                       pad_token_id=plain_tok.pad_token_id)
        seconds = time.perf_counter() - started
        plain_tok.decode(out[0, enc["input_ids"].shape[1]:], skip_special_tokens=True)
        assert out.shape[1] - enc["input_ids"].shape[1] == n
        return seconds

    cfg = GenerateConfig(model=str(model_dir), prompt=prompt, max_new_tokens=n, min_new_tokens=n, do_sample=False)
    generator = Generator(cfg)
    sink: list[str] = []

    def llmkit_stream():
        sink.clear()
        started = time.perf_counter()
        result = generator.complete(prompt, on_text=sink.append)  # streaming, as the terminal gets it
        seconds = time.perf_counter() - started
        assert result.completion_tokens == n and "".join(sink) == result.text
        return seconds, result

    plain(), llmkit_stream()  # warm-up
    plain_times, llmkit_times, ttfts, llmkit_decode = [], [], [], []
    for _ in range(args.rounds):
        plain_times.append(plain())
        seconds, result = llmkit_stream()
        llmkit_times.append(seconds)
        ttfts.append(result.timings.time_to_first_token_s)
        llmkit_decode.append(result.timings.decode_tokens_per_s)
    plain_tps = n / statistics.median(plain_times)
    llmkit_tps = n / statistics.median(llmkit_times)

    # batch: the same prompts, --batch-size 8 against one at a time
    prompts = [r["text"][:200] for r in held_out + train if len(r["text"]) > 50][:args.prompts]
    source = work / "prompts.jsonl"
    source.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in prompts), encoding="utf-8")

    def batch(size: int) -> float:
        target = work / f"out-{size}.jsonl"
        target.unlink(missing_ok=True)
        bcfg = GenerateConfig(model=str(model_dir), input=str(source), output=str(target), batch_size=size,
                              max_new_tokens=args.batch_new_tokens, min_new_tokens=args.batch_new_tokens)
        bgen = Generator(bcfg)
        started = time.perf_counter()
        run_batch(bcfg, bgen)
        return time.perf_counter() - started

    one = batch(1)
    eight = batch(8)
    same = (work / "out-1.jsonl").read_text() == (work / "out-8.jsonl").read_text()

    report = {
        "model_params": params, "prompt_tokens": result.prompt_tokens, "new_tokens": n, "threads": args.threads,
        "rounds": args.rounds,
        "plain_generate_tokens_per_s": round(plain_tps, 1), "llmkit_tokens_per_s": round(llmkit_tps, 1),
        "ratio": round(llmkit_tps / plain_tps, 3),
        "llmkit_decode_tokens_per_s_reported": statistics.median(llmkit_decode),
        "time_to_first_token_ms": round(statistics.median(ttfts) * 1000, 1),
        "batch_prompts": len(prompts), "batch_new_tokens": args.batch_new_tokens,
        "batch_size_1_s": round(one, 2), "batch_size_8_s": round(eight, 2), "batch_speedup": round(one / eight, 2),
        "batch_outputs_identical": same,
    }
    json.dump(report, sys.stdout, indent=2)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()
