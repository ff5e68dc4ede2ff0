"""`llmkit generate --task text-classification|token-classification|question-answering|feature-extraction`.

The outputs are those of transformers' own pipelines on the same model: text-classification's label and score
(softmax, sigmoid for one label or multi-label, raw for a regression), token-classification's entity groups
(aggregation "simple" or "first", offsets into the input text, scores averaged over the group's tokens),
feature-extraction's hidden states pooled by hand (mean over the attention mask, or the first token). transformers 5
dropped the question-answering pipeline; its algorithm is kept here (`llmkit.data.tasks.best_spans`): windows of
the context that overlap by --doc-stride tokens, start x end probabilities over the context tokens, answers at most
--max-answer-length tokens long, the best over all windows.

Heavy module: imported only from inside `llmkit generate`'s body. Never prints.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from llmkit.config import GenerateConfig
from llmkit.data import tasks as taskdata
from llmkit.errors import ConfigError
from llmkit.inference.batch import BadLine, BatchOutput, job_settings, read_records, write_job
from llmkit.inference.tasks import head_task
from llmkit.ui import Reporter, SilentReporter

TASK_AUTO = {"text-classification": "seq-cls", "token-classification": "token-cls",
             "question-answering": "extractive-qa", "feature-extraction": "feature-extraction"}
HEAD_WORDS = {"text-classification": "a sequence-classification head", "token-classification":
              "a token-classification (NER) head", "question-answering": "an extractive question-answering head"}
QA_MAX_LENGTH = 384                     # transformers 4's question-answering pipeline defaults
QA_DOC_STRIDE = 128
QA_MAX_ANSWER = 15


def check_head(model_config, task: str, name: str) -> None:
    """A head that does not fit --task: say what the model is and which task it fits."""
    if task == "feature-extraction":
        return          # every model has hidden states to pool
    fits = head_task(model_config)
    if fits == task:
        return
    archs = getattr(model_config, "architectures", None) or []
    what = archs[0] if archs else f"a {getattr(model_config, 'model_type', '?')} model"
    if fits is not None:
        raise ConfigError(f"--task {task} does not fit {name}: it is {what}, with {HEAD_WORDS[fits]}",
                          hint=f"use --task {fits} (or --task feature-extraction for its embeddings), or train "
                               f"{HEAD_WORDS[task]} with `llmkit sft --task {TASK_AUTO[task]}`")
    raise ConfigError(f"--task {task} needs a model with {HEAD_WORDS[task]}, but {name} is {what}, which has none",
                      hint=f"train one with `llmkit sft --task {TASK_AUTO[task]} -m {name} ...`; this model fits "
                           "--task feature-extraction (and its own generation or fill-mask task)")


# ------------------------------------------------------------------------------------------------------ model

class TaskModel:
    """A loaded model and tokenizer for one of the four tasks, and the calls that run them on batches."""

    def __init__(self, cfg: GenerateConfig, reporter: Reporter | None = None, *, model=None, tokenizer=None):
        self.cfg = cfg
        self.reporter = reporter or SilentReporter()
        self.task = cfg.task
        self.name = cfg.model
        if model is not None:
            self.model, self.tokenizer = model, tokenizer
            if not getattr(model.config, "architectures", None):    # a model built in memory: its class says it
                model.config.architectures = [type(model).__name__]
            check_head(model.config, self.task, self.name or "the model")
        else:
            self.model, self.tokenizer = self._load()
        self.model.eval()
        if self.tokenizer.pad_token is None and self.tokenizer.eos_token is not None:
            self.tokenizer.pad_token = self.tokenizer.eos_token     # batches are padded (and masked)
        self.device = next(self.model.parameters()).device
        context = _context(self.model.config, self.tokenizer)
        self.max_length = cfg.max_length or (min(QA_MAX_LENGTH, context) if self.task == "question-answering"
                                             else context)
        if context and self.max_length > context:
            raise ConfigError(f"--max-length {self.max_length} is more than the model's {context} positions",
                              hint=f"use --max-length {context} or less")
        self.truncated = 0

    def _load(self):
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
        hf_logging.set_verbosity_error()
        from llmkit.inference.loading import attach_adapter, has_tokenizer, load_model_config, select_device
        from llmkit.modeling import adapter_base, load_model, load_tokenizer

        cfg = self.cfg
        if cfg.adapter:
            self.name = adapter_base(cfg.adapter, self.name)
        model_config = load_model_config(self.name, cfg.trust_remote_code)
        check_head(model_config, self.task, self.name)
        if cfg.load_in_8bit or cfg.load_in_4bit:
            raise ConfigError(f"--load-in-8bit/--load-in-4bit apply to the generation tasks, not {self.task}",
                              hint="drop the flag (these models are small enough to run unquantized)")
        device = select_device(cfg.device)
        dtype = None if cfg.dtype == "auto" else cfg.dtype
        source = cfg.adapter if cfg.adapter and has_tokenizer(cfg.adapter) else self.name
        tokenizer = load_tokenizer(source, trust_remote_code=cfg.trust_remote_code)
        model = load_model(self.name, TASK_AUTO[self.task], dtype=dtype, device=device,
                           trust_remote_code=cfg.trust_remote_code)
        if cfg.adapter:
            model = attach_adapter(model, cfg.adapter)
        return model, tokenizer

    # -- shared
    def _encode(self, texts: list[str], pairs: list[str | None] | None = None, **extra):
        pairs = pairs if pairs and any(p is not None for p in pairs) else None
        full = self.tokenizer(texts, pairs, truncation=False)["input_ids"]
        enc = self.tokenizer(texts, pairs, truncation=True, max_length=self.max_length, padding=True,
                             return_tensors="pt", **extra)
        self.truncated += sum(len(f) > self.max_length for f in full)
        return enc

    def _forward(self, enc):
        keep = {k: v.to(self.device) for k, v in enc.items()
                if k in ("input_ids", "attention_mask", "token_type_ids")}
        with torch.no_grad():
            return self.model(**keep)

    # -- text-classification
    def classify(self, texts: list[str], pairs: list[str | None] | None = None, top_k: int | None = None) -> list[dict]:
        out = self._forward(self._encode(texts, pairs))
        logits = out.logits.float().cpu().numpy().astype(np.float64)
        config = self.model.config
        if config.problem_type == "regression":
            scores = logits
        elif config.problem_type == "multi_label_classification" or config.num_labels == 1:
            scores = 1.0 / (1.0 + np.exp(-logits))
        else:
            shifted = np.exp(logits - logits.max(-1, keepdims=True))
            scores = shifted / shifted.sum(-1, keepdims=True)
        results = []
        for row in scores:
            order = sorted(range(len(row)), key=lambda i: -row[i])
            ranked = [{"label": config.id2label[i], "score": float(row[i])} for i in order]
            result = {"label": ranked[0]["label"], "score": ranked[0]["score"]}
            if top_k is not None:
                result["scores"] = ranked[:top_k]
            results.append(result)
        return results

    # -- token-classification
    def entities(self, texts: list[str], aggregation: str = "simple") -> list[list[dict]]:
        if not getattr(self.tokenizer, "is_fast", False):
            raise ConfigError("--task token-classification needs a fast tokenizer (character offsets)",
                              hint="use a tokenizer with a tokenizer.json")
        enc = self._encode(texts, return_offsets_mapping=True, return_special_tokens_mask=True)
        out = self._forward(enc)
        logits = out.logits.float().cpu().numpy()
        results = []
        for b, text in enumerate(texts):
            row = logits[b]
            shifted = np.exp(row - row.max(-1, keepdims=True))
            scores = shifted / shifted.sum(-1, keepdims=True)
            pre = self._pre_entities(text, enc["input_ids"][b].tolist(), scores, enc["offset_mapping"][b].tolist(),
                                     enc["special_tokens_mask"][b].tolist(), aggregation)
            words = pre if aggregation == "simple" else self._words(pre)
            results.append([_entity(group, text) for group in _group(words, self.model.config.id2label)
                             if _tag(group[0]["entity"])[1] is not None])
        return results

    def _pre_entities(self, text, ids, scores, offsets, special, aggregation) -> list[dict]:
        prefix = getattr(getattr(getattr(self.tokenizer, "_tokenizer", None), "model", None),
                         "continuing_subword_prefix", None)
        pre = []
        for idx, token_scores in enumerate(scores):
            if special[idx]:
                continue
            word = self.tokenizer.convert_ids_to_tokens(ids[idx])
            start, end = offsets[idx]
            ref = text[start:end]
            if prefix:
                is_subword = len(word) != len(ref)
            else:
                is_subword = start > 0 and " " not in text[start - 1:start + 1]
            if ids[idx] == self.tokenizer.unk_token_id:
                word, is_subword = ref, False
            pre.append({"word": word, "scores": token_scores, "start": start, "end": end, "is_subword": is_subword})
        if aggregation == "simple":
            for p in pre:
                best = int(p["scores"].argmax())
                p["entity"], p["score"] = self.model.config.id2label[best], float(p["scores"][best])
        return pre

    def _words(self, pre: list[dict]) -> list[dict]:
        """Aggregation "first": a word takes the label (and score) of its first sub-token."""
        words, group = [], []
        for p in pre + [None]:
            if group and (p is None or not p["is_subword"]):
                best = int(group[0]["scores"].argmax())
                words.append({"entity": self.model.config.id2label[best], "score": float(group[0]["scores"][best]),
                              "start": group[0]["start"], "end": group[-1]["end"]})
                group = []
            if p is not None:
                group.append(p)
        return words

    # -- question-answering
    def answer(self, question: str, context: str, top_k: int = 1) -> list[dict]:
        cfg = self.cfg
        stride = cfg.doc_stride if cfg.doc_stride is not None else min(QA_DOC_STRIDE, self.max_length // 2)
        enc = taskdata.qa_windows(self.tokenizer, question, context, self.max_length, stride)
        windows = len(enc["input_ids"])
        width = max(len(ids) for ids in enc["input_ids"])
        pad = self.tokenizer.pad_token_id or 0
        batch = {"input_ids": torch.tensor([ids + [pad] * (width - len(ids)) for ids in enc["input_ids"]]),
                 "attention_mask": torch.tensor([m + [0] * (width - len(m)) for m in enc["attention_mask"]])}
        if "token_type_ids" in enc:
            batch["token_type_ids"] = torch.tensor([t + [0] * (width - len(t)) for t in enc["token_type_ids"]])
        out = self._forward(batch)
        parts = []
        for w in range(windows):
            n = len(enc["input_ids"][w])
            offsets = [tuple(o) if s == 1 else None for o, s in zip(enc["offset_mapping"][w], enc.sequence_ids(w))]
            parts.append((out.start_logits[w, :n].float().cpu().numpy(), out.end_logits[w, :n].float().cpu().numpy(),
                          offsets))
        max_answer = cfg.max_answer_length if cfg.max_answer_length is not None else QA_MAX_ANSWER
        return taskdata.decode_answers(parts, context, max_answer, top_k, handle_impossible=cfg.allow_no_answer)

    # -- feature-extraction
    def embed(self, texts: list[str]) -> np.ndarray:
        enc = self._encode(texts)
        keep = {k: v.to(self.device) for k, v in enc.items() if k in ("input_ids", "attention_mask", "token_type_ids")}
        with torch.no_grad():
            out = self.model(**keep, output_hidden_states=True)
        hidden = getattr(out, "last_hidden_state", None)
        if hidden is None:
            hidden = out.hidden_states[-1]
        hidden = hidden.float()
        mask = keep["attention_mask"].unsqueeze(-1).to(hidden.dtype)
        if self.cfg.pooling == "cls":
            pooled = hidden[:, 0]
        else:
            pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1.0)
        if self.cfg.normalize:
            pooled = torch.nn.functional.normalize(pooled, p=2, dim=-1)
        return pooled.cpu().numpy()


def _context(model_config, tokenizer) -> int:
    from llmkit.inference.loading import context_length

    context = context_length(model_config) or 512
    limit = getattr(tokenizer, "model_max_length", None)
    if isinstance(limit, int) and 0 < limit < context:
        context = limit
    if getattr(model_config, "model_type", None) in ("roberta", "xlm-roberta", "camembert"):
        context -= 2      # their position ids start after the padding index
    return context


def _tag(label: str) -> tuple[str, str | None]:
    """(B or I, entity type) as transformers' pipeline reads a label; O has no type."""
    if label == "O":
        return "I", None
    if label.startswith(("B-", "I-")):
        return label[0], label[2:]
    return "I", label


def _group(tokens: list[dict], id2label) -> list[list[dict]]:
    """Adjacent tokens (or words) with the same entity type, a B- starting a new group (the pipeline's rule)."""
    groups: list[list[dict]] = []
    for token in tokens:
        bi, typ = _tag(token["entity"])
        if groups and bi != "B" and _tag(groups[-1][-1]["entity"])[1] == typ:
            groups[-1].append(token)
        else:
            groups.append([token])
    return groups


def _entity(group: list[dict], text: str) -> dict:
    start, end = group[0]["start"], group[-1]["end"]
    return {"type": _tag(group[0]["entity"])[1], "text": text[start:end], "start": start, "end": end,
            "score": float(np.mean([t["score"] for t in group]))}


# ----------------------------------------------------------------------------------------------------- runs

@dataclass
class TaskOutput:
    model: str
    task: str
    result: dict[str, Any]
    seconds: float
    warnings: list[str] = field(default_factory=list)


def _one(tm: TaskModel, record: dict) -> dict:
    cfg = tm.cfg
    if tm.task == "text-classification":
        return tm.classify([record["text"]], [record.get("text_pair")], cfg.top_k)[0]
    if tm.task == "token-classification":
        return {"entities": tm.entities([record["text"]], cfg.aggregation)[0]}
    if tm.task == "question-answering":
        answers = tm.answer(record["question"], record["context"], cfg.top_k or 1)
        best = answers[0] if answers else {"answer": "", "start": 0, "end": 0, "score": 0.0}
        result = dict(best)
        if cfg.top_k is not None:
            result["answers"] = answers
        return result
    vector = tm.embed([record["text"]])[0]
    return {"embedding": [float(v) for v in vector], "dimensions": int(vector.shape[0]), "pooling": cfg.pooling,
            "normalized": cfg.normalize}


def run_task_prompt(cfg: GenerateConfig, reporter: Reporter | None = None, task_model: TaskModel | None = None
                    ) -> TaskOutput:
    started = time.perf_counter()
    tm = task_model or TaskModel(cfg, reporter)
    if tm.task == "question-answering":
        record = {"question": cfg.question, "context": cfg.context}
    else:
        record = {"text": cfg.prompt, "text_pair": cfg.text_pair}
    result = _one(tm, record)
    warnings = _truncation_warning(tm)
    return TaskOutput(model=tm.name, task=tm.task, result=result, seconds=round(time.perf_counter() - started, 3),
                      warnings=warnings)


def _truncation_warning(tm: TaskModel) -> list[str]:
    if not tm.truncated:
        return []
    return [f"{tm.truncated} input(s) longer than {tm.max_length} tokens were truncated (--max-length; "
            "question-answering splits a long context into windows instead)"]


@dataclass
class TaskBatchResult:
    input: str
    output: str
    task: str
    lines: int
    written: int
    skipped: int
    seconds: float
    per_second: float
    warnings: list[str] = field(default_factory=list)


@dataclass
class _TaskInput:
    line: int
    row: dict
    id: Any = None


def _task_input_of(task: str):
    needs = ("question", "context") if task == "question-answering" else ("text",)

    def task_input(number: int, row: dict) -> _TaskInput:
        if "text" not in row and isinstance(row.get("prompt"), str):
            row = {**row, "text": row["prompt"]}
        if not all(isinstance(row.get(k), str) for k in needs):
            raise BadLine(f"{task} needs " + " and ".join(f"a `{k}` string" for k in needs)
                          + f" (keys: {', '.join(sorted(row)) or 'none'})")
        empty = [f"`{k}`" for k in needs if not row[k].strip()]
        if empty:
            raise BadLine(f"{task} needs text to read: {' and '.join(empty)} "
                          f"{'is' if len(empty) == 1 else 'are'} empty")
        if row.get("text_pair") is not None and not isinstance(row["text_pair"], str):
            raise BadLine("`text_pair` must be a string")
        return _TaskInput(number, row, row.get("id"))

    return task_input


def run_task_batch(cfg: GenerateConfig, reporter: Reporter | None = None,
                   task_model: TaskModel | None = None) -> TaskBatchResult | None:
    """--input JSONL -> --output JSONL (resumable: lines already there are skipped), or, for feature-extraction,
    an `.npy` array with one row per input line (written whole). The output is guarded as every batch job's is
    (batch.BatchOutput: never the input, never another job's, one writer at a time). Under a launcher the ranks
    share a JSONL job (batch.write_job): RANK 0 returns its result, the other ranks None."""
    reporter = reporter or SilentReporter()
    tm = task_model or TaskModel(cfg, reporter)
    started = time.perf_counter()
    source, target = Path(cfg.input).expanduser(), Path(cfg.output).expanduser()
    records, error = read_records(source, _task_input_of(tm.task))
    settings = job_settings(cfg, task=tm.task)
    if target.suffix == ".npy":
        with BatchOutput(source, target, settings, cfg.overwrite) as out:
            if error is not None:
                raise error
            vectors = []
            with reporter.progress("embedding", total=len(records)) as advance:
                for start in range(0, len(records), cfg.batch_size):
                    chunk = records[start:start + cfg.batch_size]
                    vectors.append(tm.embed([r.row["text"] for r in chunk]))
                    advance(len(chunk))
            out.write_array(np.concatenate(vectors).astype(np.float32) if vectors else np.zeros((0, 0), np.float32))
        written, skipped = len(records), 0
    else:
        def rows_of(chunk: list[_TaskInput]) -> list[dict]:
            results = _batch_results(tm, [r.row for r in chunk])
            return [{"line": r.line, **result} for r, result in zip(chunk, results)]

        job = write_job(source, target, settings, cfg.overwrite, records, cfg.batch_size, reporter, tm.task, rows_of,
                        {})
        if job is None:
            return None
        if error is not None:
            raise error
        written, skipped = job.written, job.skipped
    seconds = time.perf_counter() - started
    return TaskBatchResult(input=str(source), output=str(target), task=tm.task, lines=len(records),
                           written=written, skipped=skipped, seconds=round(seconds, 3),
                           per_second=round(written / seconds, 1) if seconds > 0 else 0.0,
                           warnings=_truncation_warning(tm))


def _batch_results(tm: TaskModel, records: list[dict]) -> list[dict]:
    cfg = tm.cfg
    if tm.task == "text-classification":
        return tm.classify([r["text"] for r in records], [r.get("text_pair") for r in records], cfg.top_k)
    if tm.task == "token-classification":
        return [{"entities": e} for e in tm.entities([r["text"] for r in records], cfg.aggregation)]
    if tm.task == "feature-extraction":
        vectors = tm.embed([r["text"] for r in records])
        return [{"embedding": [float(v) for v in vec]} for vec in vectors]
    return [_one(tm, r) for r in records]


def detect_task(cfg: GenerateConfig) -> GenerateConfig:
    """Without --task, a checkpoint with a classification, NER or QA head runs its own task; other models keep
    generate's inference (text-generation, summarization, fill-mask). Returns the config, with the task set."""
    import dataclasses

    if cfg.task is not None or not cfg.model:
        return cfg
    from llmkit.inference.loading import load_model_config

    task = head_task(load_model_config(cfg.model, cfg.trust_remote_code))
    return cfg if task is None else dataclasses.replace(cfg, task=task)
