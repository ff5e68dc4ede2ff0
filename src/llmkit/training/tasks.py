"""`llmkit sft --task seq-cls|token-cls|extractive-qa|seq2seq`: classification, NER and extractive QA heads, and
source -> target fine-tuning of an encoder-decoder (llmkit.training.seq2seq), trained with
the shared training core (run dir, memory levers, checkpoints, Ctrl-C, the final save through
`trainer.model.save_pretrained`, so a PEFT-wrapped model saves its adapter).

Evaluation runs before training, every --eval-steps, and after training; its rows in metrics.jsonl carry the loss
and the task's metrics: accuracy and macro-F1 (seq-cls; MSE and MAE for a regression), entity-level precision,
recall and F1 plus token accuracy (token-cls), exact match and F1 in % (extractive-qa), ROUGE, BLEU and chrF of
the generated targets (seq2seq).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

from llmkit.config import SFTConfig
from llmkit.data import tasks as taskdata
from llmkit.training import rundir, seq2seq
from llmkit.training.data import RowDataset, split_eval
from llmkit.training.models import load_device, load_source_tokenizer, scratch_fields
from llmkit.training.objectives import NUM_TOKENS, BatchCollator, make_loss
from llmkit.training.run import ModelAdapter, Run, RunResult
from llmkit.training.trainer import LlmkitTrainer
from llmkit.ui import Reporter

MODEL_KEYS = ("input_ids", "attention_mask", "token_type_ids", "labels", "start_positions", "end_positions")
HEADLINE = {"seq-cls": "accuracy", "token-cls": "f1", "extractive-qa": "f1"}


@dataclass(kw_only=True)
class TaskResult(RunResult):
    task: str
    examples: int
    eval_examples: int
    labels: list[str]                   # id order (saved as id2label); empty for a regression and for QA
    regression: bool
    metrics: dict[str, float]           # after training (eval set)
    initial_metrics: dict[str, float]   # before training


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
    from llmkit.modeling import attention_option, build_model, load_model

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
        if fields.get("is_encoder_decoder"):   # the decoder starts from pad, as T5's does
            head["decoder_start_token_id"] = tokenizer.pad_token_id
        return build_model(fields, cfg.task, vocab_size=len(tokenizer), overrides=head, seed=cfg.seed,
                           attention=cfg.attention)
    return load_model(cfg.model, cfg.task, dtype=dtype or "fp32", trust_remote_code=cfg.trust_remote_code,
                      quantization_config=quantization_config, device=load_device(quantization_config),
                      **attention_option(cfg.attention),
                      ignore_mismatched_sizes=True, **head)


# --------------------------------------------------------------------------------------------------------- run

def run_task(cfg: SFTConfig, reporter: Reporter | None = None, callbacks: list | None = None,
             adapt_model: ModelAdapter | Callable | None = None) -> TaskResult:
    """Train a task head. `adapt_model(model) -> model` runs right after the model (with its head and label map)
    is loaded or built, before parameters are counted or frozen (`llmkit peft` wraps it there); its optional
    `load_options` (quantization_config, dtype) say how to load a pretrained base."""
    with Run(cfg, f"llmkit sft --task {cfg.task}", reporter, callbacks, adapt_model) as run:
        return train_task(run)


def _encode(cfg: SFTConfig, records: list[dict], tokenizer, space, source: str, eval_set: bool):
    if cfg.task == "seq-cls":
        return taskdata.encode_seq_cls(records, cfg, tokenizer, space, source, eval_set)
    if cfg.task == "seq2seq":
        return taskdata.encode_seq2seq(taskdata.read_pairs(records, cfg, source), cfg, tokenizer, source)
    if cfg.task == "token-cls":
        return taskdata.encode_token_cls(taskdata.read_token_examples(records, cfg, source), cfg, tokenizer, space,
                                         source, eval_set)
    return taskdata.encode_qa(taskdata.read_qa_examples(records, cfg, source), cfg, tokenizer, source)


def _label_values(cfg: SFTConfig, records: list[dict], source: str) -> list:
    if cfg.task == "seq-cls":
        return [taskdata._get(r, cfg.label_field, "--label-field", source, i) for i, r in enumerate(records)]
    return [t for _, tags in taskdata.read_token_examples(records, cfg, source) for t in tags]


def train_task(run: Run) -> TaskResult:
    """The recipe: tokenizer, records and their label space, the encoded rows, the model with its head checked and
    adapted; then the run directory, an evaluation before training, training, the record."""
    cfg = run.cfg
    tokenizer, scratch, fields = load_source_tokenizer(cfg)
    if cfg.task == "seq2seq":
        seq2seq.check_encoder_decoder(cfg, scratch_fields(cfg, fields) if scratch else None)

    records = taskdata.read_records(cfg.data, cfg.data_revision, cfg.seed)
    eval_records, eval_source = None, cfg.eval_data
    if cfg.eval_split is not None:
        records, eval_records = split_eval(records, cfg.eval_split, cfg.seed)
        eval_source = f"{cfg.data} (eval split)"
    elif cfg.eval_data:
        eval_records = taskdata.read_records(cfg.eval_data, cfg.data_revision, cfg.seed)
    space = None
    if cfg.task in ("seq-cls", "token-cls"):
        space = taskdata.label_space(_label_values(cfg, records, cfg.data), cfg.labels or _model_labels(cfg),
                                     "labels" if cfg.task == "seq-cls" else "tags", cfg.data,
                                     bio=cfg.task == "token-cls")
    train = _encode(cfg, records, tokenizer, space, cfg.data, False)
    run.warnings.extend(train.warnings)
    evaluation = None
    if eval_records:
        evaluation = _encode(cfg, eval_records, tokenizer, space, eval_source, True)
        run.warnings.extend(evaluation.warnings)
        if cfg.task == "seq2seq":
            from llmkit import text_metrics

            text_metrics.require(seq2seq.METRICS)

    model = _build_or_load(cfg, tokenizer, scratch, fields, space, **run.load_options)
    run.check_model(model)
    model = run.adapt(model)
    metrics_file = run.start()   # every input problem has been reported: only now touch the run directory

    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    collator = seq2seq.PairCollator(tokenizer, model) if cfg.task == "seq2seq" else \
        TaskCollator(pad, regression=bool(space and space.regression))
    train_set = RowDataset(train.rows)
    eval_set = RowDataset(evaluation.rows) if evaluation else None
    args = run.training_arguments(has_eval=eval_set is not None)
    labels_text = "" if space is None else (" (regression)" if space.regression else
                                            f", {space.num_labels} labels: {', '.join(space.names[:12])}"
                                            + (" ..." if space.num_labels > 12 else ""))
    total, trainable = run.parameters
    run.reporter.info(f"sft --task {cfg.task}: {type(model).__name__} with {total:,} parameters ({trainable:,} "
                      f"trainable); {train.examples:,} examples in {len(train_set):,} rows{labels_text}"
                      + (f"; {evaluation.examples:,} eval examples" if evaluation else ""))
    run.forecast_memory(model, args)

    holder: dict = {}

    def task_eval() -> dict:
        trainer = holder["trainer"]
        if cfg.task == "seq2seq":
            return seq2seq.evaluate_seq2seq(trainer.model, evaluation.rows, evaluation.targets, collator,
                                            cfg.batch_size, trainer.args.device, tokenizer,
                                            seq2seq.generation_settings(cfg))
        return evaluate_task(trainer.model, evaluation.rows, collator, cfg.batch_size, trainer.args.device,
                             cfg.task, space, evaluation.qa, cfg.max_answer_length)

    trainer = TaskTrainer(model=model, args=args, train_dataset=train_set, eval_dataset=eval_set,
                          data_collator=collator, processing_class=tokenizer, task_eval=task_eval,
                          metrics_file=metrics_file, reporter=run.reporter,
                          # the exact per-target-token loss over a whole gradient-accumulation window
                          compute_loss_func=make_loss("seq2seq") if cfg.task == "seq2seq" else None)
    holder["trainer"] = trainer
    initial_metrics: dict = {}
    if eval_set is not None and run.resume_from is None:
        initial_metrics = task_eval()
        rundir.append_metrics(metrics_file, {"step": 0, **{f"eval_{k}": round(float(v), 6)
                                                           for k, v in initial_metrics.items()}})
        run.reporter.info("before training: " + "  ".join(f"{k} {v:.4f}" for k, v in initial_metrics.items()))
    final: dict = {}

    def before_save(trainer) -> None:
        rows = [r for r in rundir.read_metrics(metrics_file) if "eval_loss" in r]
        if rows and eval_set is not None:
            final.update({k[5:]: v for k, v in rows[-1].items() if k.startswith("eval_")})
        if cfg.task == "seq2seq":   # `llmkit generate` decodes the model as its evaluation did
            trainer.model.generation_config.update(**seq2seq.generation_settings(cfg))

    outcome = run.train(trainer, collator, tokenizer, eval_before=False, before_save=before_save)
    labels = [] if space is None else space.names
    return run.finish(
        TaskResult, trainer, outcome,
        data=run.data_record(examples=train.examples, train_rows=len(train_set), truncated=train.truncated,
                             eval_source=run.eval_source(), eval_examples=evaluation.examples if evaluation else 0),
        manifest={"labels": labels, "metrics": final, "initial_metrics": initial_metrics},
        initial_eval_loss=round(initial_metrics["loss"], 6) if initial_metrics else None,
        task=cfg.task, examples=train.examples, eval_examples=evaluation.examples if evaluation else 0,
        labels=labels, regression=bool(space and space.regression),
        metrics={k: round(float(v), 6) for k, v in final.items()},
        initial_metrics={k: round(float(v), 6) for k, v in initial_metrics.items()})
