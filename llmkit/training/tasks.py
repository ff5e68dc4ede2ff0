"""`llmkit sft --task seq-cls|token-cls|extractive-qa`: classification, NER and extractive QA heads, trained with
the shared training core (run dir, memory levers, checkpoints, Ctrl-C, the final save through
`trainer.model.save_pretrained`, so a PEFT-wrapped model saves its adapter).

Evaluation runs before training, every --eval-steps, and after training; its rows in metrics.jsonl carry the loss
and the task's metrics: accuracy and macro-F1 (seq-cls; MSE and MAE for a regression), entity-level precision,
recall and F1 plus token accuracy (token-cls), exact match and F1 in % (extractive-qa).
"""

from __future__ import annotations

import contextlib
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch

from llmkit.config import SFTConfig
from llmkit.configio import dump_yaml
from llmkit.data import tasks as taskdata
from llmkit.errors import ConfigError
from llmkit.training.objectives import NUM_TOKENS, BatchCollator
from llmkit.training.trainer import LlmkitTrainer
from llmkit.ui import Reporter, SilentReporter

MODEL_KEYS = ("input_ids", "attention_mask", "token_type_ids", "labels", "start_positions", "end_positions")
HEADLINE = {"seq-cls": "accuracy", "token-cls": "f1", "extractive-qa": "f1"}


@dataclass
class TaskResult:
    output_dir: str
    model_dir: str | None
    status: str
    task: str
    steps: int
    epochs: float
    examples: int
    eval_examples: int
    train_rows: int                     # extractive-qa: windows (a long context gives several)
    eval_rows: int
    labels: list[str]                   # id order (saved as id2label); empty for a regression and for QA
    regression: bool
    parameters: int
    trainable_parameters: int
    train_loss: float | None
    eval_loss: float | None
    initial_eval_loss: float | None
    metrics: dict[str, float]           # after training (eval set)
    initial_metrics: dict[str, float]   # before training
    tokens: int
    tokens_per_second: float
    seconds: float
    resumed_from: str | None
    checkpoint: str | None
    loss_curve: list[float] = field(default_factory=list)
    sparkline: str = ""
    files: dict[str, str] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)


class TaskCollator(BatchCollator):
    """Right padding of the model inputs; token labels padded with -100; float labels for a regression."""

    def __init__(self, pad_id: int, regression: bool = False):
        super().__init__(pad_id)
        self.regression = regression

    def __call__(self, features: list[dict]) -> dict:
        ids = [list(f["input_ids"]) for f in features]
        batch = {"input_ids": self._pad(ids, self.pad_id), "attention_mask": self._pad([[1] * len(s) for s in ids], 0)}
        if "token_type_ids" in features[0]:
            batch["token_type_ids"] = self._pad([list(f["token_type_ids"]) for f in features], 0)
        if "labels" in features[0]:
            if isinstance(features[0]["labels"], list):
                batch["labels"] = self._pad([list(f["labels"]) for f in features], taskdata.IGNORE)
            else:
                batch["labels"] = torch.tensor([f["labels"] for f in features],
                                               dtype=torch.float if self.regression else torch.long)
        for key in ("start_positions", "end_positions"):
            if key in features[0]:
                batch[key] = torch.tensor([f[key] for f in features], dtype=torch.long)
        batch[NUM_TOKENS] = int(batch["attention_mask"].sum())
        return batch


# ------------------------------------------------------------------------------------------------ evaluation

@torch.no_grad()
def evaluate_task(model, rows: list[dict], collator: TaskCollator, batch_size: int, device, task: str,
                  space: taskdata.LabelSpace | None, qa_examples: list | None = None,
                  max_answer_length: int = 30) -> dict[str, float]:
    """Loss and the task's metrics over `rows` (model in eval mode; its mode is restored)."""
    was_training = model.training
    model.eval()
    loss_sum, weight = 0.0, 0
    predictions, golds = [], []
    qa_logits: dict[int, list] = {}
    for start in range(0, len(rows), batch_size):
        chunk = rows[start:start + batch_size]
        batch = collator(chunk)
        batch.pop(NUM_TOKENS)
        batch = {k: v.to(device) for k, v in batch.items()}
        out = model(**batch)
        if task == "token-cls":
            n = int(batch["labels"].ne(taskdata.IGNORE).sum())
        else:
            n = len(chunk)
        if n:
            loss_sum += float(out.loss) * n
            weight += n
        if task == "seq-cls":
            logits = out.logits.float().cpu()
            if space.regression:
                predictions += logits[:, 0].tolist()
            else:
                predictions += logits.argmax(-1).tolist()
            golds += [r["labels"] for r in chunk]
        elif task == "token-cls":
            best = out.logits.argmax(-1).cpu().tolist()
            for row, pred in zip(chunk, best):
                keep = [i for i, y in enumerate(row["labels"]) if y != taskdata.IGNORE]
                predictions.append([space.names[pred[i]] for i in keep])
                golds.append([space.names[row["labels"][i]] for i in keep])
        else:
            for row, s, e in zip(chunk, out.start_logits.float().cpu().numpy(), out.end_logits.float().cpu().numpy()):
                width = len(row["input_ids"])
                qa_logits.setdefault(row["example"], []).append((s[:width], e[:width], row["offsets"]))
    model.train(was_training)
    metrics = {"loss": loss_sum / weight if weight else float("nan")}
    if task == "seq-cls":
        if space.regression:
            metrics.update(taskdata.regression_metrics(predictions, golds))
        else:
            metrics.update(taskdata.classification_metrics(predictions, golds, space.num_labels))
    elif task == "token-cls":
        metrics.update(taskdata.entity_metrics(predictions, golds))
        tokens = sum(len(g) for g in golds)
        metrics["token_accuracy"] = sum(p == g for ps, gs in zip(predictions, golds) for p, g in zip(ps, gs)) \
            / tokens if tokens else 0.0
    else:
        texts, truths = [], []
        for n, ex in enumerate(qa_examples or []):
            best = taskdata.decode_answers(qa_logits.get(n, []), ex.context, max_answer_length, top_k=1)
            texts.append(best[0]["answer"] if best else "")
            truths.append(ex.answers)
        metrics.update(taskdata.squad_metrics(texts, truths))
    return metrics


class TaskTrainer(LlmkitTrainer):
    """LlmkitTrainer whose evaluation reports the task's metrics (and writes them to metrics.jsonl)."""

    def __init__(self, *args, task_eval: Callable[[], dict], metrics_file: Path, reporter: Reporter, **kwargs):
        super().__init__(*args, objective="masked-lm", **kwargs)   # unshifted; the model computes its own loss
        self.task_eval = task_eval
        self.metrics_file = metrics_file
        self.reporter = reporter

    def evaluate(self, eval_dataset=None, ignore_keys=None, metric_key_prefix: str = "eval") -> dict[str, float]:
        from llmkit.training import rundir

        values = self.task_eval()
        metrics = {f"{metric_key_prefix}_{k}": v for k, v in values.items()}
        rundir.append_metrics(self.metrics_file, {"step": self.state.global_step,
                                                  **{k: round(float(v), 6) for k, v in metrics.items()}})
        self.reporter.info(f"step {self.state.global_step}  " + "  ".join(f"{k} {v:.4f}" for k, v in values.items()))
        self.control = self.callback_handler.on_evaluate(self.args, self.state, self.control, metrics)
        return metrics


# ------------------------------------------------------------------------------------------------------ model

def _model_labels(cfg: SFTConfig) -> tuple[str, ...]:
    """The label names of a model dir that already has this task's head (continued training keeps its ids)."""
    path = Path(cfg.model).expanduser()
    if cfg.from_scratch or not (path / "config.json").is_file():
        return ()
    import json

    config = json.loads((path / "config.json").read_text(encoding="utf-8"))
    suffix = {"seq-cls": "ForSequenceClassification", "token-cls": "ForTokenClassification"}.get(cfg.task)
    if not suffix or not any(a.endswith(suffix) for a in config.get("architectures") or []):
        return ()
    id2label = config.get("id2label") or {}
    names = [id2label[k] for k in sorted(id2label, key=int)]
    return () if all(n == f"LABEL_{i}" for i, n in enumerate(names)) else tuple(names)


def _build_or_load(cfg: SFTConfig, tokenizer, scratch: bool, fields: dict | None,
                   space: taskdata.LabelSpace | None, quantization_config=None, dtype: str | None = "fp32"):
    """The model with its head: num_labels, id2label/label2id (or problem_type regression) and pad_token_id set.
    `quantization_config`/`dtype` are `llmkit peft`'s load options (QLoRA; a frozen base kept in bf16)."""
    from llmkit.modeling import build_model, load_model
    from llmkit.training.pretrain import load_device, scratch_fields

    head: dict = {}
    if space is not None:
        head = {"num_labels": space.num_labels}
        if space.regression:
            head["problem_type"] = "regression"
        else:
            head.update(id2label=space.id2label, label2id=space.label2id)
    if tokenizer.pad_token_id is not None:
        head["pad_token_id"] = tokenizer.pad_token_id
    if scratch:
        fields = {k: v for k, v in scratch_fields(cfg, fields).items()
                  if k not in ("id2label", "label2id", "num_labels")}
        return build_model(fields, cfg.task, vocab_size=len(tokenizer), overrides=head, seed=cfg.seed)
    return load_model(cfg.model, cfg.task, dtype=dtype or "fp32", trust_remote_code=cfg.trust_remote_code,
                      quantization_config=quantization_config, device=load_device(quantization_config),
                      ignore_mismatched_sizes=True, **head)


# --------------------------------------------------------------------------------------------------------- run

def run_task(cfg: SFTConfig, reporter: Reporter | None = None, callbacks: list | None = None,
             adapt_model: Callable | None = None) -> TaskResult:
    """Train a task head. `adapt_model(model) -> model` runs right after the model (with its head and label map)
    is loaded or built, before parameters are counted or frozen (`llmkit peft` wraps it there); its optional
    `load_options` (quantization_config, dtype) say how to load a pretrained base."""
    with contextlib.redirect_stdout(sys.stderr):
        return _run_task(cfg, reporter or SilentReporter(), callbacks, adapt_model)


def _encode(cfg: SFTConfig, records: list[dict], tokenizer, space, source: str, eval_set: bool):
    if cfg.task == "seq-cls":
        return taskdata.encode_seq_cls(records, cfg, tokenizer, space, source, eval_set)
    if cfg.task == "token-cls":
        return taskdata.encode_token_cls(taskdata.read_token_examples(records, cfg, source), cfg, tokenizer, space,
                                         source, eval_set)
    return taskdata.encode_qa(taskdata.read_qa_examples(records, cfg, source), cfg, tokenizer, source)


def _label_values(cfg: SFTConfig, records: list[dict], source: str) -> list:
    if cfg.task == "seq-cls":
        return [taskdata._get(r, cfg.label_field, "--label-field", source, i) for i, r in enumerate(records)]
    return [t for _, tags in taskdata.read_token_examples(records, cfg, source) for t in tags]


def _run_task(cfg: SFTConfig, reporter: Reporter, callbacks: list | None, adapt_model) -> TaskResult:
    started = time.perf_counter()
    warnings: list[str] = []
    from llmkit.training import integrations, rundir
    from llmkit.training import trainer as t
    from llmkit.training.data import RowDataset, split_eval
    from llmkit.training.pretrain import (TrainingInterrupted, load_source_tokenizer, memory_forecast, open_run,
                                          record_run)

    ds_config, run, resume_from = open_run(cfg, reporter)
    tokenizer, scratch, fields = load_source_tokenizer(cfg)

    records = taskdata.read_records(cfg.data)
    eval_records, eval_source = None, cfg.eval_data
    if cfg.eval_split is not None:
        records, eval_records = split_eval(records, cfg.eval_split, cfg.seed)
        eval_source = f"{cfg.data} (eval split)"
    elif cfg.eval_data:
        eval_records = taskdata.read_records(cfg.eval_data)
    space = None
    if cfg.task in ("seq-cls", "token-cls"):
        space = taskdata.label_space(_label_values(cfg, records, cfg.data), cfg.labels or _model_labels(cfg),
                                     "labels" if cfg.task == "seq-cls" else "tags", cfg.data,
                                     bio=cfg.task == "token-cls")
    train = _encode(cfg, records, tokenizer, space, cfg.data, False)
    warnings.extend(train.warnings)
    evaluation = None
    if eval_records:
        evaluation = _encode(cfg, eval_records, tokenizer, space, eval_source, True)
        warnings.extend(evaluation.warnings)

    load_options = dict(getattr(adapt_model, "load_options", None) or {})
    model = _build_or_load(cfg, tokenizer, scratch, fields, space, **load_options)
    if adapt_model is not None:
        model = adapt_model(model)
    if cfg.grad_checkpointing and not getattr(model, "supports_gradient_checkpointing", True):
        raise ConfigError(f"{type(model).__name__} does not support --grad-checkpointing",
                          hint="drop --grad-checkpointing")
    total, trainable = t.freeze_and_count(model, cfg.freeze_base, cfg.trainable_layers)

    # every input problem has been reported: only now touch the run directory
    metrics_file = rundir.start(run, dump_yaml(cfg), cfg.overwrite, resume_from)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    collator = TaskCollator(pad, regression=bool(space and space.regression))
    train_set = RowDataset(train.rows)
    eval_set = RowDataset(evaluation.rows) if evaluation else None
    if ds_config is not None:
        from llmkit.runtime import quiet_deepspeed_notices

        quiet_deepspeed_notices()
        world = integrations.ensure_single_process_env()
        if world:
            reporter.info(world)
    args = t.training_arguments(cfg, run / rundir.CHECKPOINTS, eval_set is not None)
    labels_text = "" if space is None else (" (regression)" if space.regression else
                                            f", {space.num_labels} labels: {', '.join(space.names[:12])}"
                                            + (" ..." if space.num_labels > 12 else ""))
    reporter.info(f"sft --task {cfg.task}: {type(model).__name__} with {total:,} parameters ({trainable:,} "
                  f"trainable); {train.examples:,} examples in {len(train_set):,} rows{labels_text}"
                  + (f"; {evaluation.examples:,} eval examples" if evaluation else ""))
    forecast = memory_forecast(cfg, model, ds_config, args.device.type == "cuda", reporter)

    holder: dict = {}

    def task_eval() -> dict:
        trainer = holder["trainer"]
        return evaluate_task(trainer.model, evaluation.rows, collator, cfg.batch_size, trainer.args.device,
                             cfg.task, space, evaluation.qa, cfg.max_answer_length)

    trainer = TaskTrainer(model=model, args=args, train_dataset=train_set, eval_dataset=eval_set,
                          data_collator=collator, processing_class=tokenizer, task_eval=task_eval,
                          metrics_file=metrics_file, reporter=reporter)
    holder["trainer"] = trainer
    initial_metrics: dict = {}
    if eval_set is not None and resume_from is None:
        initial_metrics = task_eval()
        rundir.append_metrics(metrics_file, {"step": 0, **{f"eval_{k}": round(float(v), 6)
                                                           for k, v in initial_metrics.items()}})
        reporter.info("before training: " + "  ".join(f"{k} {v:.4f}" for k, v in initial_metrics.items()))
    final: dict = {}

    def keep_final(trainer) -> None:
        rows = [r for r in rundir.read_metrics(metrics_file) if "eval_loss" in r]
        if rows and eval_set is not None:
            final.update({k[5:]: v for k, v in rows[-1].items() if k.startswith("eval_")})

    outcome = t.train_and_save(trainer, run=run, collator=collator, tokenizer=tokenizer, reporter=reporter,
                               metrics_file=metrics_file, resume_from=resume_from, report_to=cfg.report_to,
                               eval_before=False, callbacks=callbacks, before_save=keep_final)
    seconds, files = record_run(
        f"llmkit sft --task {cfg.task}", run, trainer, outcome, parameters=(total, trainable), forecast=forecast,
        ds_config=ds_config, deepspeed=cfg.deepspeed, resume_from=resume_from, started=started,
        data={"source": cfg.data, "fingerprint": rundir.fingerprint(cfg.data), "examples": train.examples,
              "train_rows": len(train_set), "truncated": train.truncated,
              "eval_source": cfg.eval_data or (f"{cfg.eval_split:g} of --data" if cfg.eval_split else None),
              "eval_examples": evaluation.examples if evaluation else 0},
        extra={"labels": [] if space is None else space.names, "metrics": final, "initial_metrics": initial_metrics})
    losses = outcome.losses
    result = TaskResult(
        output_dir=str(run), model_dir=str(outcome.model_dir) if outcome.model_dir else None, status=outcome.status,
        task=cfg.task, steps=trainer.state.global_step, epochs=round(float(trainer.state.epoch or 0.0), 4),
        examples=train.examples, eval_examples=evaluation.examples if evaluation else 0, train_rows=len(train_set),
        eval_rows=len(eval_set) if eval_set else 0, labels=[] if space is None else space.names,
        regression=bool(space and space.regression), parameters=total, trainable_parameters=trainable,
        train_loss=losses[-1] if losses else None,
        eval_loss=None if outcome.final_eval is None else round(outcome.final_eval, 6),
        initial_eval_loss=round(initial_metrics["loss"], 6) if initial_metrics else None,
        metrics={k: round(float(v), 6) for k, v in final.items()},
        initial_metrics={k: round(float(v), 6) for k, v in initial_metrics.items()},
        tokens=outcome.tokens, tokens_per_second=round(outcome.tokens_per_second, 1), seconds=round(seconds, 3),
        resumed_from=str(resume_from) if resume_from else None,
        checkpoint=str(outcome.checkpoint) if outcome.checkpoint else None, loss_curve=losses,
        sparkline=rundir.sparkline(losses), files=files, warnings=warnings)
    if outcome.interrupted:
        raise TrainingInterrupted(result, outcome.callback.stop_signal)
    return result
