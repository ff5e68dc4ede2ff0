"""`llmkit eval`: one model llmkit can load, measured on a dataset.

- perplexity (causal LMs): the documents tokenized as `pretrain` does (no special tokens, eos after each) and
  either cut into --seq-len blocks, exactly the rows of `pretrain --pack` (the tail that fills no block is left
  out), or scored with a sliding window (--stride, transformers' perplexity guide): windows of --seq-len tokens
  that start --stride tokens apart, each token scored once, by the first window that reaches it, with up to
  --seq-len minus --stride tokens of context before it;
- task heads: the data encoded and scored by the code `llmkit sft --task` evaluates with, so the numbers are those
  of the training run's own evaluation on the same rows;
- generation metrics (ROUGE, BLEU, chrF, exact match, from llmkit.text_metrics): the prompts generated with the
  decoding of `llmkit generate` (the same Generator and flags), the chat template applied where the model has one;
- --harness: EleutherAI's lm-eval on the same loaded model.

The model is loaded by generate's loaders (llmkit.inference): a dir, a hub id, --adapter, --load-in-4bit/8bit,
`llmkit merge` and `llmkit quantize model` outputs. Heavy module: reached only from inside the command. Never
prints.
"""

from __future__ import annotations

import dataclasses
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from llmkit.config import ANALYSIS_TASKS, EVAL_METRICS, GENERATION_METRICS, EvalConfig
from llmkit.errors import ConfigError, DataError
from llmkit.ui import Reporter, SilentReporter

DEFAULT_MAX_SEQ_LEN = 1024      # perplexity windows: the model's context, at most this
DEFAULT_HEAD_SEQ_LEN = 512      # sft's --seq-len default: task-head inputs are cut where training cut them
HEAD_TASKS = {"text-classification": "seq-cls", "token-classification": "token-cls",
              "question-answering": "extractive-qa"}
METRIC_PACKAGES = {"rouge": ("rouge_score", "rouge-score"), "bleu": ("sacrebleu", "sacrebleu"),
                   "chrf": ("sacrebleu", "sacrebleu")}


@dataclass
class EvalResult:
    model: str
    adapter: str | None
    task: str                         # generate's task name of the model (text-generation, text-classification...)
    metrics: dict[str, float]         # perplexity: loss, perplexity; heads: loss and the task's; generation: scores
    examples: int                     # documents, rows or prompts evaluated
    seconds: float
    details: dict[str, Any] = field(default_factory=dict)   # perplexity: tokens, windows, mode, tokens_per_s...
    harness: dict[str, Any] | None = None
    warnings: list[str] = field(default_factory=list)


@dataclass
class CompareResult:
    a: EvalResult
    b: EvalResult
    delta: dict[str, float]           # b - a, for every metric both have

    def to_json(self) -> dict:
        return {"models": [self.a.model, self.b.model], "a": self.a, "b": self.b, "delta": self.delta}


def run_eval(cfg: EvalConfig, reporter: Reporter | None = None) -> EvalResult | CompareResult:
    reporter = reporter or SilentReporter()
    if cfg.harness:
        _require_harness()
    if not cfg.compare:
        return evaluate_model(cfg, reporter)
    a, b = (evaluate_model(side_config(cfg, name), reporter) for name in cfg.models)
    delta = {k: round(b.metrics[k] - a.metrics[k], 6) for k in a.metrics if k in b.metrics}
    return CompareResult(a=a, b=b, delta=delta)


def side_config(cfg: EvalConfig, name: str) -> EvalConfig:
    """One model of --compare: an adapter dir (base from its record), or a model dir / hub id."""
    is_adapter = (Path(name).expanduser() / "adapter_config.json").is_file()
    return dataclasses.replace(cfg, compare=False, models=(), model="" if is_adapter else name,
                               adapter=name if is_adapter else None)


# ------------------------------------------------------------------------------------------ what to measure

def model_task(cfg: EvalConfig) -> str:
    """The generate task of the model, from its config alone: its head's, or its generation family's."""
    from llmkit.inference.heads import detect_task
    from llmkit.inference.loading import load_model_config
    from llmkit.inference.tasks import infer_task
    from llmkit.modeling import adapter_base

    name = adapter_base(cfg.adapter, cfg.model) if cfg.adapter else cfg.model
    task = detect_task(dataclasses.replace(cfg, model=name)).task
    if task is None:
        task = infer_task(load_model_config(name, cfg.trust_remote_code), None, name)
    return task


def chosen_metrics(cfg: EvalConfig, task: str) -> tuple[str, ...]:
    """--metric, checked against the model, or the model's default metric."""
    if not cfg.metric:
        if task in ("summarization", "translation"):
            return ("rouge",) if task == "summarization" else ("bleu",)
        default = next((m for m, tasks in EVAL_METRICS.items() if tasks[0] == task), None)
        if default is None:
            raise ConfigError(f"llmkit eval has no metric for a {task} model",
                              hint="evaluate a causal LM (perplexity), a classifier, NER or QA model (their "
                                   "metrics), or an encoder-decoder (rouge, bleu)")
        return (default,)
    for metric in cfg.metric:
        if task not in EVAL_METRICS[metric]:
            fits = [m for m, tasks in EVAL_METRICS.items() if task in tasks]
            raise ConfigError(f"--metric {metric} does not fit this model: it is a {task} model",
                              hint=f"--metric {metric} needs a {' or '.join(EVAL_METRICS[metric])} model; this one "
                                   f"fits {', '.join(fits) if fits else 'none of them'}")
    kinds = {"perplexity" if m == "perplexity" else "generation" if m in GENERATION_METRICS else "head"
             for m in cfg.metric}
    if len(kinds) > 1:
        raise ConfigError(f"--metric {','.join(cfg.metric)} mixes perplexity and generation metrics",
                          hint="run llmkit eval once per kind: --metric perplexity, then --metric rouge,...")
    return cfg.metric


def require_metric_packages(metrics: tuple[str, ...]) -> None:
    """The packages the generation metrics need, checked before the model loads."""
    import importlib

    for metric in metrics:
        if metric not in METRIC_PACKAGES:
            continue
        module, package = METRIC_PACKAGES[metric]
        try:
            importlib.import_module(module)
        except ImportError:
            raise ConfigError(f"--metric {metric} needs the {package} package, which is not installed",
                              hint=f"pip install {package}") from None


def _require_harness():
    try:
        import lm_eval
    except ImportError:
        raise ConfigError("--harness needs EleutherAI's lm-eval harness, which is not installed",
                          hint="pip install lm-eval (then: llmkit eval -m MODEL --harness hellaswag,arc_easy)") \
            from None
    return lm_eval


# --------------------------------------------------------------------------------------------- one model

def evaluate_model(cfg: EvalConfig, reporter: Reporter) -> EvalResult:
    task = model_task(cfg)
    cfg = dataclasses.replace(cfg, task=task)
    metrics = chosen_metrics(cfg, task) if cfg.data else ()
    require_metric_packages(metrics)
    started = time.perf_counter()
    if task in ANALYSIS_TASKS:
        from llmkit.inference.heads import TaskModel

        loaded = TaskModel(cfg, reporter)
    else:
        from llmkit.inference.generator import Generator

        loaded = Generator(cfg, reporter)
    model, tokenizer, name = loaded.model, loaded.tokenizer, loaded.name
    reporter.info(f"loaded {name}" + (f" + {cfg.adapter}" if cfg.adapter else "") + f" ({task}) in "
                  f"{time.perf_counter() - started:.1f} s")
    result = EvalResult(model=name, adapter=cfg.adapter, task=task, metrics={}, examples=0, seconds=0.0)
    started = time.perf_counter()
    if "perplexity" in metrics:
        score_perplexity(cfg, model, tokenizer, result, reporter)
    elif task in ANALYSIS_TASKS and metrics:
        score_head(cfg, model, tokenizer, result)
    elif metrics:
        score_generation(cfg, loaded, metrics, result, reporter)
    if cfg.harness:
        result.harness = run_harness(cfg, model, tokenizer)
    result.seconds = round(time.perf_counter() - started, 3)
    return result


# ----------------------------------------------------------------------------------------------- perplexity

def perplexity_windows(ids: list[int], seq_len: int, stride: int | None) -> tuple[list[tuple[int, int, int]], int]:
    """The windows that score the token stream `ids`: (begin, end, first scored position in the window), and the
    tokens left unscored at the tail. Packed (stride None): consecutive --seq-len blocks, the tail that fills no
    block dropped, every token but a block's first scored. Sliding: windows --stride apart, a token scored by the
    first window that holds it."""
    if stride is None:
        blocks = len(ids) // seq_len
        return [(i * seq_len, (i + 1) * seq_len, 1) for i in range(blocks)], len(ids) - blocks * seq_len
    windows, previous_end = [], 0
    for begin in range(0, len(ids), stride):
        end = min(begin + seq_len, len(ids))
        windows.append((begin, end, max(1, previous_end - begin)))
        previous_end = end
        if end == len(ids):
            break
    return windows, 0


def score_windows(model, ids, windows: list[tuple[int, int, int]], batch_size: int,
                  advance=lambda n: None) -> tuple[float, int]:
    """(summed next-token NLL, tokens scored) over the windows; windows of one length share a forward pass."""
    import torch

    from llmkit.runtime import quiet_quantization

    device = next(model.parameters()).device
    stream = torch.as_tensor(ids, dtype=torch.long)
    nll, scored = 0.0, 0
    groups: list[list[tuple[int, int, int]]] = []
    for window in windows:
        if groups and len(groups[-1]) < batch_size and groups[-1][0][1] - groups[-1][0][0] == window[1] - window[0]:
            groups[-1].append(window)
        else:
            groups.append([window])
    with torch.inference_mode(), quiet_quantization():
        for group in groups:
            batch = torch.stack([stream[begin:end] for begin, end, _ in group]).to(device)
            logits = model(input_ids=batch).logits.float()
            logprobs = torch.log_softmax(logits[:, :-1], dim=-1)
            token_nll = -logprobs.gather(-1, batch[:, 1:, None])[..., 0].double()
            for row, (_, _, first) in enumerate(group):
                nll += float(token_nll[row, first - 1:].sum())
                scored += token_nll.shape[1] - (first - 1)
            advance(len(group))
    return nll, scored


def score_perplexity(cfg: EvalConfig, model, tokenizer, result: EvalResult, reporter: Reporter) -> None:
    import numpy as np

    from llmkit.inference.loading import context_length
    from llmkit.training.data import read_documents

    context = context_length(model.config)
    seq_len = cfg.seq_len or min(context or DEFAULT_MAX_SEQ_LEN, DEFAULT_MAX_SEQ_LEN)
    if context is not None and seq_len > context:
        raise ConfigError(f"--seq-len {seq_len} is more than the model's context of {context} tokens",
                          hint=f"use --seq-len {context} or less")
    documents = read_documents(cfg.data, cfg.text_field, tokenizer, add_special_tokens=False, append_eos=True,
                               revision=None, seed=cfg.seed or 0)
    docs = documents.docs
    if cfg.limit is not None and cfg.limit < len(docs):
        docs = docs.subset(np.arange(cfg.limit))
    ids = np.concatenate([docs.piece(i, 0, int(docs.length[i])) for i in range(len(docs))]).tolist()
    windows, dropped = perplexity_windows(ids, seq_len, cfg.stride)
    if not windows or len(ids) < 2:
        raise DataError(f"{cfg.data}: the documents hold {len(ids):,} tokens (eos included), fewer than one "
                        f"--seq-len {seq_len} block", hint="lower --seq-len, add data, or slide with --stride")
    if dropped:
        result.warnings.append(f"{cfg.data}: the last {dropped:,} tokens do not fill a block of {seq_len} and were not "
                      "scored (as pretrain --pack); --stride scores every token")
    started = time.perf_counter()
    with reporter.progress("perplexity", total=len(windows)) as advance:
        nll, scored = score_windows(model, ids, windows, cfg.batch_size, advance)
    seconds = time.perf_counter() - started
    loss = nll / scored
    result.metrics = {"loss": round(loss, 6), "perplexity": round(math.exp(loss), 6)}
    result.examples = len(docs)
    result.details = {"mode": "packed" if cfg.stride is None else "sliding", "seq_len": seq_len,
                      "stride": cfg.stride, "tokens": scored, "windows": len(windows), "dropped_tokens": dropped,
                      "tokens_per_s": round(scored / seconds, 1) if seconds > 0 else None}


# ----------------------------------------------------------------------------------------------- task heads

def head_label_space(model_config, values: list, task: str):
    """The label space of a trained head, from its config: id2label in id order (or a regression); labels written
    as class ids in the data are read as ids."""
    from llmkit.data import tasks as taskdata

    if task == "extractive-qa":
        return None
    if getattr(model_config, "problem_type", None) == "regression":
        return taskdata.LabelSpace(names=[], regression=True)
    id2label = model_config.id2label
    names = [id2label[i] for i in sorted(id2label)]
    as_ids = bool(values) and all(isinstance(v, int) and not isinstance(v, bool) for v in values)
    return taskdata.LabelSpace(names=names, given_as_ids=as_ids)


def score_head(cfg: EvalConfig, model, tokenizer, result: EvalResult) -> None:
    """The metrics `llmkit sft --task` reports on its eval set, computed by the same code on these rows."""
    from llmkit.data import tasks as taskdata
    from llmkit.training.tasks import TaskCollator, evaluate_task

    task = HEAD_TASKS[cfg.task]
    cfg = dataclasses.replace(cfg, seq_len=cfg.seq_len or DEFAULT_HEAD_SEQ_LEN)
    records = taskdata.read_records(cfg.data, None, cfg.seed or 0)[:cfg.limit]
    if task == "seq-cls":
        space = head_label_space(model.config, [r.get(cfg.label_field) for r in records], task)
        encoded = taskdata.encode_seq_cls(records, cfg, tokenizer, space, cfg.data, eval_set=True)
    elif task == "token-cls":
        examples = taskdata.read_token_examples(records, cfg, cfg.data)
        space = head_label_space(model.config, [t for _, tags in examples for t in tags], task)
        encoded = taskdata.encode_token_cls(examples, cfg, tokenizer, space, cfg.data, eval_set=True)
    else:
        space = None
        encoded = taskdata.encode_qa(taskdata.read_qa_examples(records, cfg, cfg.data), cfg, tokenizer, cfg.data)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    collator = TaskCollator(pad, regression=bool(space and space.regression))
    device = next(model.parameters()).device
    metrics = evaluate_task(model, encoded.rows, collator, cfg.batch_size, device, task, space, encoded.qa,
                            cfg.max_answer_length)
    result.metrics = {k: round(float(v), 6) for k, v in metrics.items()}
    result.examples = encoded.examples
    result.details = {"seq_len": cfg.seq_len, "rows": len(encoded.rows)}
    result.warnings.extend(encoded.warnings)


# ----------------------------------------------------------------------------------------------- generation

def score_generation(cfg: EvalConfig, generator, metrics: tuple[str, ...], result: EvalResult,
                     reporter: Reporter) -> None:
    """Each prompt generated as `llmkit generate` would (--message through the chat template where the model has
    one, else the prompt as it is), then scored against its reference."""
    from llmkit import text_metrics
    from llmkit.data.loading import read_records

    records = read_records(cfg.data)[:cfg.limit]
    if not records:
        raise DataError(f"{cfg.data} holds no records", hint="give a file with at least one record")
    prompts, references = [], []
    for number, row in enumerate(records, start=1):
        for name, flag in ((cfg.prompt_field, "--prompt-field"), (cfg.completion_field, "--completion-field")):
            if not isinstance(row.get(name), str):
                raise DataError(f"{cfg.data}: record {number} has no text field '{name}' (fields: "
                                f"{', '.join(sorted(row)) or 'none'})", hint=f"choose the field with {flag}")
        prompts.append(row[cfg.prompt_field])
        references.append(row[cfg.completion_field])
    chat = generator.task == "text-generation" and generator.chat_template is not None
    if chat:
        prompts = [generator.render_messages(generator.with_system([{"role": "user", "content": p}], cfg.system))
                   for p in prompts]
    gc = generator.generation_config()
    encoded = generator.encode(prompts, chat)[0]
    predictions: list[str] = []
    generated = 0
    started = time.perf_counter()
    generator.seed_sampling(gc)
    with reporter.progress("generating", total=len(encoded)) as advance:
        for start in range(0, len(encoded), cfg.batch_size):
            batch = [generator.fit_context(ids, gc)[0] for ids in encoded[start:start + cfg.batch_size]]
            sequences, _ = generator.generate_ids(batch, gc)
            predictions += [group[0].text for group in sequences]
            generated += sum(group[0].completion_tokens for group in sequences)
            advance(len(batch))
    seconds = time.perf_counter() - started
    scores: dict[str, float] = {}
    for metric in metrics:
        if metric == "rouge":
            scores.update(text_metrics.rouge(predictions, references))
        elif metric == "bleu":
            scores["bleu"] = text_metrics.bleu(predictions, references)
        elif metric == "chrf":
            scores["chrf"] = text_metrics.chrf(predictions, references)
        else:
            scores["exact_match"] = text_metrics.exact_match(predictions, references)
    result.metrics = {k: round(float(v), 6) for k, v in scores.items()}
    result.examples = len(records)
    result.details = {"chat_template": chat, "params": generator.params_of(gc), "generated_tokens": generated,
                      "tokens_per_s": round(generated / seconds, 1) if seconds > 0 else None,
                      "predictions": predictions}


# ---------------------------------------------------------------------------------------------------- harness

def run_harness(cfg: EvalConfig, model, tokenizer) -> dict:
    """lm-eval's tasks on the model already loaded (its HFLM wraps a model object as it is)."""
    lm_eval = _require_harness()
    from lm_eval.models.huggingface import HFLM

    lm = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=cfg.batch_size)
    try:
        output = lm_eval.simple_evaluate(model=lm, tasks=list(cfg.harness), limit=cfg.limit)
    except KeyError as exc:
        raise ConfigError(f"--harness: lm-eval does not know the task {exc}",
                          hint="list them with `lm-eval ls tasks`") from None
    return output.get("results", {}) if output else {}
