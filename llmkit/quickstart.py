"""`llmkit quickstart`: the life of a model, stage by stage, on the embedded corpus, in minutes on a CPU.

Stages so far: tokenizer, pretrain, sft, generate. Later stages (adapters, merge, quantize) add themselves here.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

from llmkit import corpus
from llmkit.config import QuickstartConfig, TokenizeTrainConfig
from llmkit.configio import dump_yaml
from llmkit.outputs import check_output_dir
from llmkit.ui import Reporter, SilentReporter


@dataclass
class StageResult:
    name: str
    seconds: float
    summary: dict
    output: str | None = None


@dataclass
class QuickstartResult:
    output_dir: str
    fast: bool
    stages: list[StageResult] = field(default_factory=list)
    seconds: float = 0.0


def run_quickstart(cfg: QuickstartConfig, reporter: Reporter | None = None) -> QuickstartResult:
    reporter = reporter or SilentReporter()
    out = check_output_dir(cfg.output_dir, cfg.overwrite)
    out.mkdir(parents=True, exist_ok=True)
    (out / "resolved_config.yaml").write_text(dump_yaml(cfg), encoding="utf-8")
    started = time.perf_counter()
    result = QuickstartResult(output_dir=str(out), fast=cfg.fast)

    train, held_out = corpus.documents()
    train_path = corpus.write_jsonl(train, out / "data" / "train.jsonl")
    corpus.write_jsonl(held_out, out / "data" / "held_out.jsonl")
    reporter.info(f"corpus: {len(train):,} training and {len(held_out):,} held-out paragraphs of the Python "
                  f"language reference (pydoc_data.topics)")

    result.stages.append(_stage_tokenizer(cfg, out, train_path, train, held_out, reporter))
    pretrained = _stage_pretrain(cfg, out, train_path, out / "data" / "held_out.jsonl", reporter)
    result.stages.append(pretrained)
    result.stages.append(_stage_sft(cfg, out, Path(pretrained.output), reporter))
    result.stages.append(_stage_generate(out, Path(pretrained.output), GENERATE_PROMPTS, reporter))
    result.seconds = round(time.perf_counter() - started, 3)
    return result


def _stage_tokenizer(cfg: QuickstartConfig, out: Path, train_path: Path, train: list[dict], held_out: list[dict],
                     reporter: Reporter) -> StageResult:
    from tokenizers import Tokenizer

    from llmkit.tokenization import tokens_per_word, train_tokenizer

    reporter.info("stage 1/4: train a byte-level BPE tokenizer")
    started = time.perf_counter()
    vocab_size = min(cfg.vocab_size, 1024) if cfg.fast else cfg.vocab_size
    texts = [r["text"] for r in train]
    train_cfg = TokenizeTrainConfig(corpus=(str(train_path),), output_dir=str(out / "tokenizer"), type="bpe",
                                    vocab_size=vocab_size, overwrite=True)
    trained = train_tokenizer(train_cfg, reporter=reporter, texts=texts)
    tokenizer = Tokenizer.from_file(str(out / "tokenizer" / "tokenizer.json"))
    held_texts = [r["text"] for r in held_out]
    sample = next(t for t in held_texts if len(t.split()) > 8)[:120]
    encoding = tokenizer.encode(sample, add_special_tokens=False)
    return StageResult(
        name="tokenizer", seconds=round(time.perf_counter() - started, 3), output=trained.output_dir,
        summary={"type": "byte-level BPE", "vocab_size": trained.vocab_size,
                 "tokens_per_word_train": trained.tokens_per_word,
                 "tokens_per_word_held_out": round(tokens_per_word(tokenizer, held_texts), 4),
                 "lossless_round_trip": tokenizer.decode(encoding.ids) == sample,
                 "sample_text": sample, "sample_tokens": [tokenizer.decode([i]) for i in encoding.ids]})


GENERATE_PROMPTS = ["The for statement", "An exception is raised when", "A class definition"]


def _stage_generate(out_dir: Path, model_dir: Path, prompts: list[str], reporter: Reporter) -> StageResult:
    """Generate from the trained model: greedy, then sampled (seeded), for each prompt."""
    import json

    from llmkit.config import GenerateConfig
    from llmkit.generate import Generator

    reporter.info("stage 4/4: generate from the trained model (greedy and sampled)")
    started = time.perf_counter()
    cfg = GenerateConfig(model=str(model_dir), prompt=prompts[0] if prompts else "", max_new_tokens=40, seed=0,
                         repetition_penalty=1.1)
    generator = Generator(cfg, reporter)
    # a model this small ends early and loops: hold back eos for a few tokens and forbid repeated trigrams
    shared = dict(max_new_tokens=40, min_new_tokens=16, repetition_penalty=1.1, no_repeat_ngram_size=3)
    greedy = generator.generation_config(dict(shared, do_sample=False))
    sampled = generator.generation_config(dict(shared, do_sample=True, temperature=0.8, top_p=0.95))
    samples = []
    for prompt in prompts:
        row = {"prompt": prompt}
        for name, gc in (("greedy", greedy), ("sampled", sampled)):
            result = generator.complete(prompt, gc=gc)
            row[name] = result.text
            row[f"{name}_decode_tokens_per_s"] = result.timings.decode_tokens_per_s
        samples.append(row)
        reporter.info(f"  {prompt!r}\n    greedy:  {row['greedy']!r}\n    sampled: {row['sampled']!r}")
    (out_dir / "generations.json").write_text(json.dumps(samples, ensure_ascii=False, indent=2) + "\n",
                                              encoding="utf-8")
    return StageResult(name="generate", seconds=round(time.perf_counter() - started, 3),
                       output=str(out_dir / "generations.json"),
                       summary={"samples": samples, "greedy": Generator.params_of(greedy),
                                "sampled": Generator.params_of(sampled)})


# The fast pipeline's model: a 2-layer LLaMA of ~0.5M parameters (the full one is presets/models/tiny-llama.yaml).
FAST_LLAMA = dict(model_type="llama", hidden_size=128, intermediate_size=352, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=512, tie_word_embeddings=False)


def _stage_pretrain(cfg: QuickstartConfig, out: Path, train_path: Path, held_out_path: Path,
                    reporter: Reporter) -> StageResult:
    """A tiny LLaMA from scratch on packed blocks of the corpus; held-out perplexity before and after."""
    import json

    from llmkit.config import PretrainConfig
    from llmkit.training.pretrain import run_pretrain

    reporter.info("stage 2/4: pretrain a tiny LLaMA-shaped causal LM from scratch")
    started = time.perf_counter()
    model = "tiny-llama"
    if cfg.fast:
        model_file = out / "fast-llama.json"
        model_file.write_text(json.dumps(FAST_LLAMA), encoding="utf-8")
        model = str(model_file)
    pretrain_cfg = PretrainConfig(
        model=model, from_scratch=True, tokenizer=str(out / "tokenizer"), data=str(train_path),
        eval_data=str(held_out_path), objective="causal-lm", pack=True, seq_len=64 if cfg.fast else 128,
        batch_size=16, lr=6e-3 if cfg.fast else 2e-3, warmup_ratio=0.05, scheduler="cosine",
        max_steps=160 if cfg.fast else 150,
        logging_steps=10, save_steps=1000, seed=cfg.seed, output_dir=str(out / "pretrain"), overwrite=True)
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)   # tiny matrices: one thread is as fast on an idle box and ~10x faster on a busy one
    try:
        trained = run_pretrain(pretrain_cfg, reporter=reporter)
    finally:
        torch.set_num_threads(threads)
    return StageResult(
        name="pretrain", seconds=round(time.perf_counter() - started, 3), output=trained.model_dir,
        summary={"model": "LLaMA-shaped causal LM", "parameters": trained.parameters, "steps": trained.steps,
                 "tokens_per_second": trained.tokens_per_second,
                 "held_out_perplexity_before": trained.initial_perplexity,
                 "held_out_perplexity_after": trained.perplexity,
                 "perplexity_fall": round(trained.initial_perplexity / trained.perplexity, 2),
                 "sparkline": trained.sparkline})


# SFT: question/answer pairs from the reference's statement topics. The fast pipeline trains the first 8 and the
# full one all of them; both ask the first 5 before and after.
SFT_ORDER = ["global", "pass", "return", "try", "while", "if", "for", "with"]
SFT_ASKED = 5


def _stage_sft(cfg: QuickstartConfig, out: Path, model_dir: Path, reporter: Reporter) -> StageResult:
    """`llmkit sft` of the pretrained model on question/answer pairs in ChatML; greedy answers before and after."""
    import json

    from llmkit.config import GenerateConfig, SFTConfig
    from llmkit.data.sft import builtin_template
    from llmkit.generate import Generator
    from llmkit.training.sft import run_sft

    reporter.info("stage 3/4: instruction-tune it on question/answer pairs (llmkit sft, ChatML, loss on answers)")
    started = time.perf_counter()
    pairs = {p["topic"]: p for p in corpus.qa_pairs()}
    order = [t for t in SFT_ORDER if t in pairs] + sorted(t for t in pairs if t not in SFT_ORDER)
    chosen = [pairs[t] for t in (order[:len(SFT_ORDER)] if cfg.fast else order)]
    data = out / "data" / "qa.jsonl"
    corpus.write_jsonl([{"messages": [{"role": "user", "content": p["question"]},
                                      {"role": "assistant", "content": p["answer"]}]} for p in chosen], data)
    template = out / "data" / "chatml.jinja"
    template.write_text(builtin_template("chatml"), encoding="utf-8")
    asked = chosen[:SFT_ASKED]

    def answers(model: Path) -> list[str]:
        generator = Generator(GenerateConfig(model=str(model), message="?", chat_template=str(template),
                                             max_new_tokens=64), reporter)
        gc = generator.generation_config(dict(do_sample=False, max_new_tokens=64), warn=False)
        return [generator.complete(generator.render_messages([{"role": "user", "content": p["question"]}]),
                                   chat=True, gc=gc).text.strip() for p in asked]

    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        before = answers(model_dir)
        sft_cfg = SFTConfig(model=str(model_dir), data=str(data), template="chatml", seq_len=128, batch_size=8,
                            lr=5e-3 if cfg.fast else 2e-3, max_steps=80 if cfg.fast else 200, warmup_ratio=0.05, scheduler="cosine",
                            logging_steps=10, save_steps=1000, seed=cfg.seed, output_dir=str(out / "sft"),
                            overwrite=True)
        trained = run_sft(sft_cfg, reporter=reporter)
        after = answers(Path(trained.model_dir))
    finally:
        torch.set_num_threads(threads)
    samples = [{"question": p["question"], "reference": p["answer"], "before": b, "after": a,
                "reproduced": a.startswith(p["answer"])} for p, b, a in zip(asked, before, after)]
    for s in samples:
        reporter.info(f"  {s['question']}\n    before: {s['before'][:80]!r}\n    after:  {s['after'][:80]!r}"
                      f"  ({'reproduces the reference' if s['reproduced'] else 'differs from the reference'})")
    (out / "sft_answers.json").write_text(json.dumps(samples, ensure_ascii=False, indent=2) + "\n", encoding="utf-8")
    return StageResult(
        name="sft", seconds=round(time.perf_counter() - started, 3), output=trained.model_dir,
        summary={"pairs": len(chosen), "template": "chatml", "steps": trained.steps,
                 "trained_tokens": trained.trained_tokens, "train_loss": trained.train_loss,
                 "reproduced": sum(s["reproduced"] for s in samples), "asked": len(samples),
                 "sparkline": trained.sparkline, "samples": samples})
