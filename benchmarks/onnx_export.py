"""Greedy decoding speed of an exported tiny LLaMA: ONNX Runtime (llmkit's OnnxGenerator: transformers' `generate`
on the graph, presents fed back as past) against transformers' `model.generate` greedy, one prompt, same tokens; and
`llmkit generate --backend onnxruntime` against `--backend torch` (llmkit's Generator, decode tokens/s it reports).

    .venv/bin/python benchmarks/onnx_export.py [--rounds 3] [--new-tokens 64] [--hidden 64] [--layers 2] [--threads 1]

The model is a randomly initialised LLaMA with the test suite's shape by default (hidden 64, 2 layers) and a BPE
tokenizer trained on the embedded corpus; it is exported with `llmkit export --format onnx` (whose own check runs),
then both sides generate exactly --new-tokens tokens (no end-of-sequence stop), rounds alternating. Prints one JSON
line.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path


def build(workdir: Path, hidden: int, layers: int) -> Path:
    from llmkit import corpus
    from llmkit.config import TokenizeTrainConfig
    from llmkit.modeling import build_model, load_tokenizer
    from llmkit.tokenization import train_tokenizer

    texts = [r["text"] for r in corpus.documents()[0]]
    (workdir / "corpus.txt").write_text("\n".join(texts), encoding="utf-8")
    train_tokenizer(TokenizeTrainConfig(corpus=(str(workdir / "corpus.txt"),), output_dir=str(workdir / "tok"),
                                        type="bpe", vocab_size=2000, overwrite=True), texts=texts)
    tok = load_tokenizer(str(workdir / "tok"))
    model = build_model("llama-2-7b", vocab_size=len(tok), seed=0, overrides=dict(
        num_hidden_layers=layers, hidden_size=hidden, intermediate_size=2 * hidden, num_attention_heads=4,
        num_key_value_heads=2, bos_token_id=0, eos_token_id=1, pad_token_id=2, max_position_embeddings=1024,
        tie_word_embeddings=False))
    out = workdir / "model"
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return out


def generate_backends(model_dir: Path, onnx_dir: Path, prompt: str, args) -> dict[str, float]:
    """`llmkit generate --prompt` on each backend (exactly --new-tokens greedy tokens): the median of the decode
    tokens/s its timings report over --rounds, after a warm-up. ONNX Runtime takes its default thread count there
    (the cores), torch --threads: compare them with --threads set to the core count."""
    from llmkit.config import GenerateConfig
    from llmkit.inference.generator import Generator, run_prompt

    speeds: dict[str, float] = {}
    for backend, model in (("torch", model_dir), ("onnxruntime", onnx_dir)):
        cfg = GenerateConfig(model=str(model), backend=backend, prompt=prompt, max_new_tokens=args.new_tokens,
                             min_new_tokens=args.new_tokens, do_sample=False)
        generator = Generator(cfg)
        runs = [run_prompt(cfg, generator).timings.decode_tokens_per_s for _ in range(args.rounds + 1)][1:]
        speeds[backend] = statistics.median(runs)
    return speeds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--hidden", type=int, default=64)
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from llmkit.config import ExportConfig
    from llmkit.export import export_model
    from llmkit.inference.onnx_backend import OnnxGenerator

    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory(prefix="llmkit-onnx-bench-") as tmp:
        workdir = Path(tmp)
        model_dir = build(workdir, args.hidden, args.layers)
        export = export_model(ExportConfig(model=str(model_dir), output_dir=str(workdir / "onnx")))
        model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
        prompt_text = "The for statement is used to iterate over"
        prompt = AutoTokenizer.from_pretrained(model_dir)(prompt_text, return_tensors="pt")["input_ids"]
        generator = OnnxGenerator(workdir / "onnx", threads=args.threads)

        def torch_greedy():
            with torch.no_grad():
                return model.generate(prompt, do_sample=False, max_new_tokens=args.new_tokens,
                                      min_new_tokens=args.new_tokens, pad_token_id=2).numpy()

        def ort_greedy():
            return generator.generate(prompt.numpy(), args.new_tokens, min_new_tokens=args.new_tokens)

        same = torch_greedy().tolist() == ort_greedy().tolist()   # also the warm-up
        seconds: dict[str, list[float]] = {"torch": [], "onnxruntime": []}
        for _ in range(args.rounds):
            for name, run in (("torch", torch_greedy), ("onnxruntime", ort_greedy)):
                started = time.perf_counter()
                run()
                seconds[name].append(time.perf_counter() - started)
        backends = generate_backends(model_dir, workdir / "onnx", prompt_text, args)
    speed = {name: round(args.new_tokens / statistics.median(values), 1) for name, values in seconds.items()}
    json.dump({"hidden": args.hidden, "layers": args.layers, "threads": args.threads, "new_tokens": args.new_tokens,
               "prompt_tokens": int(prompt.shape[1]), "rounds": args.rounds, "tokens_per_s": speed,
               "speedup": round(speed["onnxruntime"] / speed["torch"], 2), "same_tokens": same,
               "export_max_abs_diff": export.max_abs_diff, "export_seconds": export.seconds,
               "llmkit_generate_decode_tokens_per_s": backends,
               "llmkit_generate_speedup": round(backends["onnxruntime"] / backends["torch"], 2)}, sys.stdout)
    print()


if __name__ == "__main__":
    main()
