"""`llmkit pretrain`: train a model from scratch or continue pretraining, with any of the four objectives."""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from llmkit.config import PretrainConfig
from llmkit.configio import dump_yaml
from llmkit.errors import ConfigError, DataError
from llmkit.ui import Reporter, SilentReporter, format_bytes

if TYPE_CHECKING:
    from llmkit.training.trainer import ModelAdapter


@dataclass
class PretrainResult:
    output_dir: str
    model_dir: str | None
    objective: str
    status: str                          # "completed" or "interrupted"
    steps: int
    epochs: float
    train_rows: int
    eval_rows: int
    parameters: int
    trainable_parameters: int
    train_loss: float | None             # the last logged training loss
    eval_loss: float | None
    perplexity: float | None
    initial_eval_loss: float | None      # before training (not on resume)
    initial_perplexity: float | None
    tokens: int                          # non-pad tokens trained on in this process
    tokens_per_second: float
    seconds: float
    resumed_from: str | None
    checkpoint: str | None               # the last checkpoint written
    loss_curve: list[float] = field(default_factory=list)
    sparkline: str = ""
    files: dict[str, str] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)


# ------------------------------------------------------------------------------------------------------- model

def architecture_kind(model_type: str, is_encoder_decoder: bool) -> str:
    from transformers.models.auto.modeling_auto import (MODEL_FOR_CAUSAL_LM_MAPPING_NAMES,
                                                        MODEL_FOR_MASKED_LM_MAPPING_NAMES)

    if is_encoder_decoder:
        return "encoder-decoder"
    if model_type in MODEL_FOR_MASKED_LM_MAPPING_NAMES:
        return "encoder"
    if model_type in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES:
        return "decoder"
    return "unknown"


FITTING = {"decoder": "causal-lm (or prefix-lm)", "encoder": "masked-lm", "encoder-decoder": "seq2seq"}
NEEDS = {"causal-lm": "decoder", "prefix-lm": "decoder", "masked-lm": "encoder", "seq2seq": "encoder-decoder"}
KIND_WORDS = {"decoder": "decoder-only", "encoder": "encoder-only", "encoder-decoder": "encoder-decoder"}


def _a(word: str) -> str:
    return ("an " if word[0] in "aeiou" else "a ") + word


def check_objective(objective: str, model_type: str, is_encoder_decoder: bool, name: str) -> None:
    kind = architecture_kind(model_type, is_encoder_decoder)
    if kind == "unknown" or kind == NEEDS[objective]:
        return
    examples = {"decoder": "LLaMA, GPT-2, Qwen", "encoder": "BERT, RoBERTa", "encoder-decoder": "T5, BART"}
    raise ConfigError(f"--objective {objective} needs {_a(KIND_WORDS[NEEDS[objective]])} model "
                      f"({examples[NEEDS[objective]]}), but {name} is {_a(KIND_WORDS[kind])} {model_type} model",
                      hint=f"use --objective {FITTING[kind]} for this model")


def load_source_tokenizer(cfg) -> tuple[object, bool, dict | None]:
    """(tokenizer, scratch, fields): the run's tokenizer (pad = eos where it has no pad) and whether --model is an
    architecture to build (a preset's fields, or None for a config.json: `scratch_fields` reads it)."""
    from llmkit.modeling import load_tokenizer, model_config_fields

    fields = model_config_fields(cfg.model)
    path = Path(cfg.model).expanduser()
    if fields is not None and not cfg.from_scratch:
        raise ConfigError(f"'{cfg.model}' is an architecture preset, with no trained weights",
                          hint="add --from-scratch --tokenizer TOK to train it from random initialisation")
    scratch = cfg.from_scratch or (path.is_file() and path.suffix == ".json")
    if scratch and not cfg.tokenizer:
        raise ConfigError("a model built from an architecture needs --tokenizer", hint="pass --tokenizer DIR")
    tokenizer = load_tokenizer(cfg.tokenizer or cfg.model, trust_remote_code=cfg.trust_remote_code)
    if tokenizer.pad_token is None and tokenizer.eos_token is not None:
        tokenizer.pad_token = tokenizer.eos_token   # collation only: labels are masked by position, not by id
    return tokenizer, scratch, fields


def scratch_fields(cfg, fields: dict | None) -> dict:
    """The architecture --from-scratch builds: a preset's fields, or the config.json --model names."""
    if fields is not None:
        return fields
    path = Path(cfg.model).expanduser()
    config_file = path / "config.json" if path.is_dir() else path
    if not config_file.is_file():
        raise ConfigError(f"--from-scratch: '{cfg.model}' is neither a model preset nor a config.json",
                          hint="give a preset (`llmkit presets`), a config.json or a model dir")
    return json.loads(config_file.read_text(encoding="utf-8"))


def load_device(quantization_config) -> str | None:
    """Where a pretrained base loads: bitsandbytes quantizes while placing the weights on this rank's GPU."""
    if quantization_config is None:
        return None
    import torch

    return f"cuda:{int(os.environ.get('LOCAL_RANK', 0))}" if torch.cuda.is_available() else None


def load_model_and_tokenizer(cfg: PretrainConfig, quantization_config=None, dtype: str = "fp32"):
    """(model, tokenizer, source) for --from-scratch presets/config.json files and for pretrained dirs/ids;
    `quantization_config` (QLoRA) loads the pretrained base through bitsandbytes, `dtype` is what its weights are
    stored in (fp32 unless a frozen adapter base is loaded in bf16)."""
    from llmkit.modeling import load_model

    tokenizer, scratch, fields = load_source_tokenizer(cfg)
    if scratch:
        fields = scratch_fields(cfg, fields)
        check_objective(cfg.objective, fields.get("model_type", ""), bool(fields.get("is_encoder_decoder")),
                        cfg.model)
        return None, tokenizer, fields
    from transformers import AutoConfig

    try:
        config = AutoConfig.from_pretrained(cfg.model, trust_remote_code=cfg.trust_remote_code)
    except (OSError, ValueError):
        config = None  # load_model reports it with a clear message
    if config is not None:
        check_objective(cfg.objective, config.model_type, bool(getattr(config, "is_encoder_decoder", False)),
                        cfg.model)
    model = load_model(cfg.model, cfg.model_task, dtype=dtype, trust_remote_code=cfg.trust_remote_code,
                       quantization_config=quantization_config, device=load_device(quantization_config))
    return model, tokenizer, None


def build_scratch_model(cfg: PretrainConfig, fields: dict, tokenizer):
    from llmkit.modeling import build_model

    specials = {"pad_token_id": tokenizer.pad_token_id, "eos_token_id": tokenizer.eos_token_id,
                "bos_token_id": tokenizer.bos_token_id}
    if fields.get("is_encoder_decoder"):
        specials["decoder_start_token_id"] = tokenizer.pad_token_id
    specials = {k: v for k, v in specials.items() if v is not None}
    return build_model(fields, cfg.model_task, vocab_size=len(tokenizer), overrides=specials, seed=cfg.seed)


# -------------------------------------------------------------------------------------------------------- data

def build_rows(cfg: PretrainConfig, tokenizer, source: str, warnings: list[str], docs=None):
    from llmkit.training import data

    if docs is None:
        documents = data.read_documents(source, cfg.text_field, tokenizer,
                                        add_special_tokens=cfg.objective == "masked-lm",
                                        append_eos=cfg.objective in ("causal-lm", "prefix-lm"))
        warnings.extend(documents.warnings)
        if documents.prepacked:
            return documents.docs, [{"input_ids": d} for d in documents.docs]
        docs = documents.docs
    seq_len = cfg.seq_len
    if cfg.padding_free:
        rows, dropped = data.pack_padding_free(docs, seq_len, source)
    elif cfg.pack:
        rows, dropped = data.pack(docs, seq_len, source)
    else:
        min_len = {"causal-lm": 2, "prefix-lm": 2, "masked-lm": 1, "seq2seq": 2}[cfg.objective]
        rows = data.chunk(docs, seq_len - 1 if cfg.objective == "seq2seq" else seq_len, min_len)
        dropped = 0
        if not rows:
            raise DataError(f"{source}: every document is shorter than {min_len} tokens, too short for "
                            f"{cfg.objective}", hint="give longer documents")
    if dropped:
        warnings.append(f"{source}: the last {dropped:,} tokens do not fill a block of {seq_len} and were dropped")
    return docs, rows


def make_collator(cfg: PretrainConfig, tokenizer, model):
    from llmkit.training import objectives as o

    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    if cfg.objective == "causal-lm":
        return o.CausalLMCollator(pad)
    if cfg.objective == "prefix-lm":
        return o.PrefixLMCollator(pad, dtype=next(model.parameters()).dtype, seed=cfg.seed)
    if cfg.objective == "masked-lm":
        return o.MaskedLMCollator(tokenizer, cfg.mlm_probability, cfg.mask_replace_prob, cfg.random_replace_prob,
                                  cfg.whole_word_masking, seed=cfg.seed)
    start = getattr(model.config, "decoder_start_token_id", None)
    return o.Seq2SeqCollator(tokenizer, cfg.noise_density, cfg.mean_span_length, pad if start is None else start,
                             seed=cfg.seed)


# ---------------------------------------------------------------------------------------------------- the run

def prepare_run_dir(cfg: PretrainConfig) -> Path:
    run = Path(cfg.output_dir).expanduser()
    if run.exists() and not run.is_dir():
        raise ConfigError(f"--output-dir {run} exists and is a file", hint="choose a directory path")
    from llmkit.training.integrations import is_main_process

    # under a launcher RANK 0 alone checks (and creates) the dir: another rank would race with its first files
    if run.is_dir() and is_main_process() and any(run.iterdir()) and not (cfg.overwrite or cfg.resume):
        raise ConfigError(f"--output-dir {run} exists and is not empty",
                          hint="pass --overwrite to replace it, --resume auto to continue its last checkpoint, "
                               "or choose another dir")
    return run


def open_run(cfg, reporter: Reporter) -> tuple[dict | None, Path, Path | None]:
    """What every training run checks before any work: the integrations' inputs (a bad --deepspeed JSON or a missing
    package fails here), the output dir, the checkpoint to resume from; then transformers quietened (progress goes
    through the Reporter, nowhere else) and seeded. Returns (DeepSpeed config or None, run dir, resume checkpoint)."""
    from llmkit.training import integrations, rundir

    ds_config = integrations.load_deepspeed_config(cfg.deepspeed) if cfg.deepspeed is not None else None
    integrations.check_report_to(cfg.report_to)
    run = prepare_run_dir(cfg)
    resume_from = rundir.resume_checkpoint(run, cfg.resume, reporter.warn) if cfg.resume else None
    import transformers

    transformers.logging.set_verbosity_error()
    transformers.logging.disable_progress_bar()
    transformers.set_seed(cfg.seed)
    return ds_config, run, resume_from


def run_pretrain(cfg: PretrainConfig, reporter: Reporter | None = None, callbacks: list | None = None,
                 eval_before: bool = True, adapt_model: ModelAdapter | None = None) -> PretrainResult:
    """Train; returns the result, or raises TrainingInterrupted (a KeyboardInterrupt) after Ctrl-C's checkpoint.
    `adapt_model` (llmkit peft) loads the base its way and wraps it before anything trains.

    stdout is the caller's (a --json document): libraries that log to stdout (DeepSpeed's accelerator notice on
    import) are sent to stderr for the duration.
    """
    import contextlib
    import sys

    with contextlib.redirect_stdout(sys.stderr):
        return _run_pretrain(cfg, reporter, callbacks, eval_before, adapt_model)


def _run_pretrain(cfg: PretrainConfig, reporter: Reporter | None, callbacks: list | None,
                  eval_before: bool, adapt_model: ModelAdapter | None = None) -> PretrainResult:
    reporter = reporter or SilentReporter()
    started = time.perf_counter()
    warnings: list[str] = []
    from llmkit.training import integrations, rundir

    ds_config, run, resume_from = open_run(cfg, reporter)
    model, tokenizer, fields = load_model_and_tokenizer(cfg, **(adapt_model.load_options if adapt_model else {}))
    if cfg.objective == "seq2seq":
        from llmkit.training.objectives import ensure_sentinels, max_spans

        added = ensure_sentinels(tokenizer, max_spans(cfg.seq_len, cfg.noise_density, cfg.mean_span_length))
        if added:
            warnings.append(f"added {added} sentinel tokens <extra_id_N> to the tokenizer for span corruption")
    if cfg.objective == "masked-lm" and tokenizer.mask_token_id is None:
        raise ConfigError("--objective masked-lm needs a mask token, and this tokenizer has none",
                          hint="add one: tokenizer.add_special_tokens({'mask_token': '[MASK]'}) (or '<mask>'), "
                               "save it, and pass it with --tokenizer")

    docs, train_rows = build_rows(cfg, tokenizer, cfg.data, warnings)
    eval_rows = None
    if cfg.eval_split is not None:
        from llmkit.training.data import split_eval

        train_docs, eval_docs = split_eval(docs, cfg.eval_split, cfg.seed)
        _, train_rows = build_rows(cfg, tokenizer, cfg.data, warnings, docs=train_docs)
        _, eval_rows = build_rows(cfg, tokenizer, f"{cfg.data} (eval split)", warnings, docs=eval_docs)
    elif cfg.eval_data:
        _, eval_rows = build_rows(cfg, tokenizer, cfg.eval_data, warnings)

    if model is None:
        model = build_scratch_model(cfg, fields, tokenizer)
    else:
        from llmkit.training.trainer import grow_embeddings

        grow_embeddings(model, tokenizer, adapting=adapt_model is not None)
    if cfg.grad_checkpointing and not model.supports_gradient_checkpointing:
        raise ConfigError(f"{type(model).__name__} does not support --grad-checkpointing",
                          hint="drop --grad-checkpointing")
    if cfg.padding_free:
        from llmkit.training.packing import check_packing_support

        check_packing_support(model, "--padding-free")

    from llmkit.training import trainer as t
    from llmkit.training.data import IndexedRows
    from llmkit.training.objectives import make_loss

    if adapt_model is not None:
        model = adapt_model(model)
    total, trainable = t.freeze_and_count(model, cfg.freeze_base, cfg.trainable_layers)

    # every input problem has been reported: only now touch the run directory
    metrics_file = rundir.start(run, dump_yaml(cfg), cfg.overwrite, resume_from)

    collator = make_collator(cfg, tokenizer, model)
    # rows with their (split, epoch, index): the objectives' randomness is a function of them (exact resume)
    train_set, eval_set = IndexedRows(train_rows, "train"), IndexedRows(eval_rows, "eval") if eval_rows else None
    if ds_config is not None:
        from llmkit.runtime import quiet_deepspeed_notices

        quiet_deepspeed_notices()
        world = integrations.ensure_single_process_env()
        if world:
            reporter.info(world)
    args = t.training_arguments(cfg, run / rundir.CHECKPOINTS, eval_set is not None)
    reporter.info(f"{cfg.objective}: {type(model).__name__} with {total:,} parameters ({trainable:,} trainable); "
                  f"{len(train_set):,} training rows ({train_set.tokens:,} tokens)"
                  + (f", {len(eval_set):,} eval rows" if eval_set else ""))
    forecast = memory_forecast(cfg, model, ds_config, args.device.type == "cuda", reporter)
    trainer = t.LlmkitTrainer(model=model, args=args, train_dataset=train_set, eval_dataset=eval_set,
                              data_collator=collator, processing_class=tokenizer,
                              compute_loss_func=make_loss(cfg.objective), objective=cfg.objective)
    outcome = t.train_and_save(trainer, run=run, collator=collator, tokenizer=tokenizer, reporter=reporter,
                               metrics_file=metrics_file, resume_from=resume_from, report_to=cfg.report_to,
                               eval_before=eval_before, callbacks=[t.EpochCallback(train_set), *(callbacks or [])])
    status, initial, final_eval, model_dir = outcome.status, outcome.initial_eval, outcome.final_eval, outcome.model_dir
    tokens, rate = outcome.tokens, outcome.tokens_per_second
    seconds, files = record_run(
        "llmkit pretrain", run, trainer, outcome, parameters=(total, trainable), forecast=forecast,
        ds_config=ds_config, deepspeed=cfg.deepspeed, resume_from=resume_from, started=started,
        data={"source": cfg.data, "fingerprint": rundir.fingerprint(cfg.data), "train_rows": len(train_set),
              "train_tokens": train_set.tokens, "eval_source": cfg.eval_data or
              (f"{cfg.eval_split:g} of --data" if cfg.eval_split else None),
              "eval_fingerprint": rundir.fingerprint(cfg.eval_data) if cfg.eval_data else None,
              "eval_rows": len(eval_set) if eval_set else 0})
    losses = outcome.losses
    result = PretrainResult(
        output_dir=str(run), model_dir=str(model_dir) if model_dir else None, objective=cfg.objective,
        status=status, steps=trainer.state.global_step, epochs=round(float(trainer.state.epoch or 0.0), 4),
        train_rows=len(train_set), eval_rows=len(eval_set) if eval_set else 0, parameters=total,
        trainable_parameters=trainable, train_loss=losses[-1] if losses else None,
        eval_loss=None if final_eval is None else round(final_eval, 6),
        perplexity=None if final_eval is None else round(t.perplexity(final_eval), 4),
        initial_eval_loss=None if initial is None else round(initial, 6),
        initial_perplexity=None if initial is None else round(t.perplexity(initial), 4),
        tokens=tokens, tokens_per_second=round(rate, 1), seconds=round(seconds, 3),
        resumed_from=str(resume_from) if resume_from else None,
        checkpoint=str(outcome.checkpoint) if outcome.checkpoint else None, loss_curve=losses,
        sparkline=rundir.sparkline(losses), files=files, warnings=warnings)
    if outcome.interrupted:
        raise TrainingInterrupted(result, outcome.callback.stop_signal)
    return result


def memory_forecast(cfg: PretrainConfig, model, ds_config, on_gpu: bool, reporter: Reporter):
    """memory-estimate's peak for this run, reported before training; when it cannot be made (an architecture
    llmkit.modelspec cannot size), a warning and the reason (a str) instead: the forecast never stops a run."""
    from llmkit.errors import LlmkitError
    from llmkit.training.integrations import memory_forecast as forecast

    try:
        est, spec = forecast(cfg, model, ds_config, on_gpu)
    except Exception as exc:  # noqa: BLE001 - the forecast is advice: it never stops a run
        reason = exc.message if isinstance(exc, LlmkitError) else f"{type(exc).__name__}: {exc}"
        reporter.warn(f"no memory estimate for this run: {reason} (training goes on)")
        return reason
    d = est.per_device
    where = "per GPU" if on_gpu else "on CPU, without the runtime overhead (--overhead 0)"
    approx = f"; {spec.approximated}" if spec.approximated else ""
    reporter.info(f"expected peak memory (memory-estimate) {format_bytes(d['total'])} {where}: weights "
                  f"{format_bytes(d['weights'])}, gradients {format_bytes(d['gradients'])}, optimizer "
                  f"{format_bytes(d['optimizer'])}, activations {format_bytes(d['activations'])}, peak in "
                  f"{est.peak_phase}{approx}")
    return est


def memory_record(est, manifest: dict) -> dict:
    """manifest.json's memory block: memory-estimate's forecast next to what the run measured."""
    on_gpu = manifest.get("peak_gpu_allocated_bytes") is not None
    measured_key = "peak_gpu_allocated_bytes" if on_gpu else "peak_rss_bytes"
    skipped, est = (est, None) if isinstance(est, str) else (None, est)
    record = {
        "estimated_peak_bytes": None if est is None else int(est.per_device["total"]),
        "estimated": None if est is None else {k: int(v) for k, v in est.per_device.items()},
        "estimated_peak_phase": None if est is None else est.peak_phase,
        "estimate_overhead": "memory-estimate default" if on_gpu else "0 (CPU: tensors only)",
        "estimate_skipped": skipped,
        "measured_peak_bytes": manifest.get(measured_key),
        "measured": ("torch.cuda.max_memory_allocated" if on_gpu
                     else "process peak RSS (includes the Python, torch and library code and data)"),
    }
    return record


def record_run(command: str, run: Path, trainer, outcome, *, data: dict, parameters: tuple[int, int], forecast,
               ds_config: dict | None, deepspeed: str | None, resume_from: Path | None, started: float,
               extra: dict | None = None) -> tuple[float, dict[str, str]]:
    """manifest.json with what every training run records (RANK 0 writes it); returns (wall seconds, the run's files
    for the result, the final model or adapter dir under its own name)."""
    import torch

    from llmkit.training import integrations, rundir

    seconds = time.perf_counter() - started
    total, trainable = parameters
    manifest = {
        "command": command, "status": outcome.status, "versions": rundir.library_versions(), "data": data,
        "model": {"class": type(trainer.model).__name__, "parameters": total, "trainable_parameters": trainable},
        "steps": trainer.state.global_step, "tokens_trained_this_run": outcome.tokens,
        "tokens_per_second": round(outcome.tokens_per_second, 1), "wall_seconds": round(seconds, 3),
        "train_seconds": round(outcome.train_seconds, 3), "resumed_from": str(resume_from) if resume_from else None,
        "threads": torch.get_num_threads(), "device": str(trainer.args.device), **rundir.peak_memory(),
        "deepspeed": None if ds_config is None else {"config": deepspeed,
                                                     "zero_stage": integrations.zero_stage(ds_config)},
        **(extra or {}),
    }
    manifest["memory"] = memory_record(forecast, manifest)
    if integrations.is_main_process():   # under a launcher only RANK 0 writes the run dir
        rundir.write_json(run / rundir.MANIFEST, manifest)
    files = {"resolved_config": str(run / "resolved_config.yaml"), "metrics": str(run / rundir.METRICS),
             "loss_curve": str(run / rundir.CURVE), "manifest": str(run / rundir.MANIFEST),
             "checkpoints": str(run / rundir.CHECKPOINTS)}
    if outcome.model_dir is not None:
        files[outcome.model_dir.name] = str(outcome.model_dir)
    return seconds, files



class TrainingInterrupted(KeyboardInterrupt):
    """Ctrl-C or SIGTERM: a checkpoint was saved; the command exits 130 (143 after SIGTERM). Carries the partial
    result and the signal."""

    def __init__(self, result: PretrainResult, signum: int | None = None):
        super().__init__("interrupted")
        self.result = result
        self.signum = signum
