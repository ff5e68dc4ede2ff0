"""`llmkit quickstart`: the life of a model, stage by stage, on the embedded corpus, in minutes on a CPU.

Stages: tokenizer, pretrain, sft (a LoRA adapter), merge (verified), quantize (nf4), generate.
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


QUICKSTART_MARK = ".llmkit-quickstart"


@dataclass
class QuickstartResult:
    output_dir: str
    fast: bool
    stages: list[StageResult] = field(default_factory=list)
    seconds: float = 0.0


def run_quickstart(cfg: QuickstartConfig, reporter: Reporter | None = None) -> QuickstartResult:
    reporter = reporter or SilentReporter()
    out = Path(cfg.output_dir).expanduser()
    # rerunning the quickstart replaces its own earlier output; any other non-empty dir needs --overwrite
    check_output_dir(out, cfg.overwrite or (out / QUICKSTART_MARK).is_file())
    out.mkdir(parents=True, exist_ok=True)
    (out / QUICKSTART_MARK).write_text("written by llmkit quickstart\n", encoding="utf-8")
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
    tuned = _stage_sft(cfg, out, Path(pretrained.output), reporter)
    result.stages.append(tuned)
    merged = _stage_merge(out, Path(tuned.output), reporter)
    result.stages.append(merged)
    result.stages.append(_stage_quantize(out, Path(merged.output), _chat_texts(out, Path(tuned.output)), reporter))
    result.stages.append(_stage_generate(out, Path(pretrained.output), GENERATE_PROMPTS, reporter))
    result.seconds = round(time.perf_counter() - started, 3)
    return result


def _stage_tokenizer(cfg: QuickstartConfig, out: Path, train_path: Path, train: list[dict], held_out: list[dict],
                     reporter: Reporter) -> StageResult:
    from tokenizers import Tokenizer

    from llmkit.tokenization import tokens_per_word, train_tokenizer

    reporter.info("stage 1/6: train a byte-level BPE tokenizer")
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
    from llmkit.inference.generator import Generator

    reporter.info("stage 6/6: generate from the trained model (greedy and sampled)")
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


# The fast pipeline's model: a 2-layer LLaMA of ~0.5M parameters (the full one is presets/models/tiny-llama.yaml);
# every linear layer's input is a multiple of 64, which bitsandbytes' CPU 4-bit kernels need (quantize stage).
FAST_LLAMA = dict(model_type="llama", hidden_size=128, intermediate_size=384, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=512, tie_word_embeddings=False)


def _stage_pretrain(cfg: QuickstartConfig, out: Path, train_path: Path, held_out_path: Path,
                    reporter: Reporter) -> StageResult:
    """A tiny LLaMA from scratch on packed blocks of the corpus; held-out perplexity before and after."""
    import json

    from llmkit.config import PretrainConfig
    from llmkit.training.pretrain import run_pretrain

    reporter.info("stage 2/6: pretrain a tiny LLaMA-shaped causal LM from scratch")
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
    """`llmkit peft --method lora` on question/answer pairs (loss on the answers only); greedy answers before and
    after, and the adapter's size against the full model's."""
    import json

    from llmkit.config import GenerateConfig, PeftConfig
    from llmkit.data.sft import builtin_template
    from llmkit.inference.generator import Generator
    from llmkit.training.peft import run_peft

    reporter.info("stage 3/6: instruction-tune it with a LoRA adapter on question/answer pairs (llmkit peft, "
                  "loss on the answers)")
    started = time.perf_counter()
    pairs = {p["topic"]: p for p in corpus.qa_pairs()}
    order = [t for t in SFT_ORDER if t in pairs] + sorted(t for t in pairs if t not in SFT_ORDER)
    chosen = [pairs[t] for t in (order[:len(SFT_ORDER)] if cfg.fast else order)]
    data = out / "data" / "qa.jsonl"
    corpus.write_jsonl([{"messages": [{"role": "user", "content": p["question"]},
                                      {"role": "assistant", "content": p["answer"]}]} for p in chosen], data)
    # the plain template ends answers with eos, a token the pretrained model knows (ChatML's would be new tokens,
    # which an adapter cannot add to a frozen vocabulary)
    template = out / "data" / "plain.jinja"
    template.write_text(builtin_template("plain"), encoding="utf-8")
    asked = chosen[:SFT_ASKED]

    def answers(adapter: Path | None) -> list[str]:
        generator = Generator(GenerateConfig(model=str(model_dir), adapter=str(adapter) if adapter else None,
                                             message="?", chat_template=str(template), max_new_tokens=64), reporter)
        gc = generator.generation_config(dict(do_sample=False, max_new_tokens=64), warn=False)
        return [generator.complete(generator.render_messages([{"role": "user", "content": p["question"]}]),
                                   chat=True, gc=gc).text.strip() for p in asked]

    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        before = answers(None)
        # a model this small cannot learn new answers through its frozen output head: LoRA on every linear layer,
        # and the head itself trained and saved with the adapter (peft's modules_to_save)
        peft_cfg = PeftConfig(model=str(model_dir), data=str(data), template="plain", method="lora", lora_rank=16,
                              lora_alpha=32, lora_dropout=0.0, lora_targets=("all-linear",),
                              modules_to_save=("lm_head",), seq_len=128,
                              batch_size=8, lr=1e-2 if cfg.fast else 5e-3, max_steps=80 if cfg.fast else 200,
                              warmup_ratio=0.05, scheduler="cosine", logging_steps=10, save_steps=1000,
                              seed=cfg.seed, output_dir=str(out / "sft"), overwrite=True)
        trained = run_peft(peft_cfg, reporter=reporter)
        after = answers(Path(trained.adapter_dir))
    finally:
        torch.set_num_threads(threads)
    samples = [{"question": p["question"], "reference": p["answer"], "before": b, "after": a,
                "reproduced": a.startswith(p["answer"])} for p, b, a in zip(asked, before, after)]
    for s in samples:
        reporter.info(f"  {s['question']}\n    before: {s['before'][:80]!r}\n    after:  {s['after'][:80]!r}"
                      f"  ({'reproduces the reference' if s['reproduced'] else 'differs from the reference'})")
    model_bytes = sum(f.stat().st_size for f in model_dir.glob("*.safetensors"))
    reporter.info(f"  adapter (with the output head) {trained.adapter_bytes:,} bytes on disk against the full "
                  f"model's {model_bytes:,} "
                  f"({trained.adapter_bytes / model_bytes:.1%}); {trained.trainable_parameters:,} of "
                  f"{trained.parameters:,} parameters trained ({trained.trainable_share:.1%})")
    (out / "sft_answers.json").write_text(json.dumps(samples, ensure_ascii=False, indent=2) + "\n", encoding="utf-8")
    training = trained.training
    return StageResult(
        name="sft", seconds=round(time.perf_counter() - started, 3), output=trained.adapter_dir,
        summary={"method": "lora", "targets": trained.targets, "pairs": len(chosen), "template": "plain",
                 "steps": training.steps, "trained_tokens": training.trained_tokens, "train_loss": training.train_loss,
                 "trainable_parameters": trained.trainable_parameters, "parameters": trained.parameters,
                 "adapter_bytes": trained.adapter_bytes, "model_bytes": model_bytes,
                 "reproduced": sum(s["reproduced"] for s in samples), "asked": len(samples),
                 "sparkline": training.sparkline, "samples": samples})


def _stage_merge(out: Path, adapter: Path, reporter: Reporter) -> StageResult:
    """`llmkit merge`: fold the LoRA adapter (and its trained head) into the base; verified on probe prompts."""
    from llmkit.config import MergeConfig
    from llmkit.merge import merge_adapter

    reporter.info("stage 4/6: merge the adapter into the base model and check they agree (llmkit merge)")
    started = time.perf_counter()
    merged = merge_adapter(MergeConfig(adapter=str(adapter), output_dir=str(out / "merged"), overwrite=True),
                           reporter)
    check = merged.verification
    reporter.info(f"  {merged.merged_modules} layers folded; base + adapter vs merged model on {check.probes} probe "
                  f"prompts: max |Δlogit| {check.max_abs_logit_diff:.2e}, KL {check.kl_mean:.2e}")
    return StageResult(name="merge", seconds=round(time.perf_counter() - started, 3), output=merged.output_dir,
                       summary={"method": merged.method, "merged_modules": merged.merged_modules,
                                "probes": check.probes, "max_abs_logit_diff": check.max_abs_logit_diff,
                                "kl_mean": check.kl_mean, "tolerance": merged.tolerance})


def _chat_texts(out: Path, adapter: Path) -> Path:
    """The question/answer chats rendered with the template they were trained in: the text the merged model is
    for (on prose its perplexity is huge: it was tuned into a memoriser of these answers)."""
    import json

    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(adapter)
    rows = [json.loads(line) for line in (out / "data" / "qa.jsonl").read_text(encoding="utf-8").splitlines()]
    texts = [{"text": tokenizer.apply_chat_template(r["messages"], tokenize=False)} for r in rows]
    return corpus.write_jsonl(texts, out / "data" / "qa_text.jsonl")


def _stage_quantize(out: Path, model_dir: Path, eval_text: Path, reporter: Reporter) -> StageResult:
    """`llmkit quantize model`: the merged model in NF4 with double quantization; size, and perplexity on the
    question/answer chats it was tuned on, before and after."""
    from llmkit.config import QuantizeModelConfig
    from llmkit.quantize_model import quantize_model

    reporter.info("stage 5/6: quantize the merged model to NF4 + double quantization (llmkit quantize model)")
    started = time.perf_counter()
    done = quantize_model(QuantizeModelConfig(model=str(model_dir), method="nf4", double_quant=True,
                                              output_dir=str(out / "quantized"), eval_data=str(eval_text),
                                              overwrite=True), reporter)
    report = done.report
    size, ppl = report.size, report.perplexity
    reporter.info(f"  on disk {size['disk_before']:,} -> {size['disk_after']:,} bytes; perplexity on the chats "
                  f"{ppl['before']:,.2f} -> {ppl['after']:,.2f} ({ppl['change_pct']:+.2f} %); "
                  f"{report.bits_per_param['achieved']:.3f} bits per quantized weight")
    return StageResult(name="quantize", seconds=round(time.perf_counter() - started, 3), output=done.output_dir,
                       summary={"method": "nf4+double-quant", "disk_before": size["disk_before"],
                                "disk_after": size["disk_after"], "memory_before": size["memory_before"],
                                "memory_after": size["memory_after"], "perplexity_before": ppl["before"],
                                "perplexity_after": ppl["after"], "perplexity_change_pct": ppl["change_pct"],
                                "bits_per_param": report.bits_per_param["achieved"]})
