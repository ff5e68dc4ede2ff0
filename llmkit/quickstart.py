"""`llmkit quickstart`: the life of a model, stage by stage, on the embedded corpus, in minutes on a CPU.

Stages so far: tokenizer. Later stages (pretrain, sft, adapters, merge, quantize, generate) add themselves here.
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
    result.seconds = round(time.perf_counter() - started, 3)
    return result


def _stage_tokenizer(cfg: QuickstartConfig, out: Path, train_path: Path, train: list[dict], held_out: list[dict],
                     reporter: Reporter) -> StageResult:
    from tokenizers import Tokenizer

    from llmkit.tokenization import tokens_per_word, train_tokenizer

    reporter.info("stage 1/1: train a byte-level BPE tokenizer")
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
