"""One training run's life, shared by every recipe (pretrain.py, sft.py, tasks.py; peft.py trains through them).

A recipe reads top to bottom on a Run, in the order of torchtune's recipes (setup, train, save, record):

    with Run(cfg, "llmkit sft", reporter, callbacks, adapt_model) as run:   # checks, output dir, resume, seed
        model, tokenizer, fields = run.load_model_and_tokenizer()           # then the recipe's data and checks
        model = run.build_or_grow(model, tokenizer, fields)
        run.check_model(model)
        model = run.adapt(model)                                            # adapter, freezing, parameter count
        run.start()                                                         # only now the run directory
        args = run.training_arguments(has_eval=...)                         # (the recipe's datasets, collator)
        run.forecast_memory(model, args)
        outcome = run.train(trainer, collator, tokenizer)                   # train; save the final model
        return run.finish(SFTResult, trainer, outcome, data=run.data_record(...))   # manifest.json; the result

A run's record says what ran, written once: resolved_config.yaml when the run directory is created and
manifest.json after training, both for the command that runs (`llmkit peft`'s AdapterRun records the peft config).
"""

from __future__ import annotations

import contextlib
import sys
import time
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Callable, Protocol, TypeVar

import torch
import transformers

from llmkit.configio import dump_yaml, to_dict
from llmkit.errors import ConfigError, LlmkitError
from llmkit.training import integrations, models, rundir
from llmkit.training import trainer as t
from llmkit.training.packing import check_packing_support
from llmkit.training.tracking import TrackedRuns
from llmkit.ui import Reporter, SilentReporter, format_bytes


@dataclass(kw_only=True)
class RunResult:
    """What every training run returns (and `--json` prints); each recipe's result adds its own fields."""

    output_dir: str
    model_dir: str | None
    status: str                          # "completed" or "interrupted"
    steps: int
    epochs: float
    train_rows: int
    eval_rows: int
    parameters: int
    trainable_parameters: int
    train_loss: float | None             # the last logged training loss
    eval_loss: float | None
    initial_eval_loss: float | None      # before training (not on resume)
    tokens: int                          # non-pad tokens trained on in this run
    tokens_per_second: float
    seconds: float
    resumed_from: str | None
    checkpoint: str | None               # the last checkpoint written
    loss_curve: list[float] = field(default_factory=list)
    sparkline: str = ""
    files: dict[str, str] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    data_mix: list[dict] | None = None         # --data a,b: {source, weight, rows, tokens, share_of_tokens} each
    eval_by_source: list[dict] | None = None   # --eval-data a,b: {name, source, eval_loss, initial_eval_loss,
                                               # eval_tokens} each

    def shared(self) -> dict[str, Any]:
        """The fields every run has, by name (a result that wraps this one starts from them)."""
        return {f.name: getattr(self, f.name) for f in fields(RunResult)}


R = TypeVar("R", bound=RunResult)


class TrainingInterrupted(KeyboardInterrupt):
    """Ctrl-C or SIGTERM: a checkpoint was saved; the command exits 130 (143 after SIGTERM). Carries the partial
    result and the signal."""

    def __init__(self, result: RunResult, signum: int | None = None):
        super().__init__("interrupted")
        self.result = result
        self.signum = signum


class ModelAdapter(Protocol):
    """What `llmkit peft` hands a run: how to load the base (`load_model_and_tokenizer` keywords: a bitsandbytes
    config for QLoRA, the frozen base's dtype) and a call that wraps the loaded model with its adapter (checked,
    before any file is written). A plain callable works too: the base then loads as without an adapter."""

    load_options: dict[str, Any]

    def __call__(self, model): ...


class Run:
    """A training run from its first check to its record: the output dir, the checkpoint to resume, the seed, the
    DeepSpeed config, the memory forecast, training and the final save, manifest.json. While it is open (`with`),
    stdout is the caller's (a --json document): libraries that print there (DeepSpeed's accelerator notice on
    import) are sent to stderr."""

    def __init__(self, cfg, command: str, reporter: Reporter | None = None, callbacks: list | None = None,
                 adapt_model: ModelAdapter | Callable | None = None, record_config=None):
        self.cfg = cfg                       # the training config (PretrainConfig or SFTConfig)
        self.command = command               # manifest.json's "command"
        self.reporter = reporter or SilentReporter()
        self.callbacks = list(callbacks or [])   # extra TrainerCallbacks (tests interrupt at a known step)
        self.adapt_model = adapt_model
        self.record_config = cfg if record_config is None else record_config   # what resolved_config.yaml says
        self.warnings: list[str] = []
        self.parameters = (0, 0)             # (total, trainable), counted by `adapt`
        self.forecast = None                 # memory-estimate's peak, or why there is none
        self.metrics_file: Path | None = None
        self._lock = None                    # the run dir's lock, from `start` until the run ends

    def __enter__(self) -> Run:
        self._stdout = contextlib.redirect_stdout(sys.stderr)
        self._stdout.__enter__()
        try:
            self._setup()
        except BaseException:
            self._stdout.__exit__(*sys.exc_info())
            raise
        return self

    def __exit__(self, *exc) -> None:
        rundir.release(self.dir, self._lock)
        self._lock = None
        self._stdout.__exit__(*exc)

    def _setup(self) -> None:
        """What every run checks before any work: the integrations' inputs (a bad --deepspeed JSON or a missing
        package fails here), the output dir, the checkpoint to resume from; then transformers quietened (progress
        goes through the Reporter, nowhere else) and seeded."""
        cfg = self.cfg
        self.started = time.perf_counter()
        self.ds_config = integrations.load_deepspeed_config(cfg.deepspeed) if cfg.deepspeed is not None else None
        integrations.check_report_to(cfg.report_to)
        t.check_training_environment(cfg)
        self.dir = self._output_dir()
        self.resume_from = rundir.resume_checkpoint(self.dir, cfg.resume, self.reporter.warn) if cfg.resume else None
        transformers.logging.set_verbosity_error()
        transformers.logging.disable_progress_bar()
        transformers.set_seed(cfg.seed)

    def _output_dir(self) -> Path:
        cfg = self.cfg
        path = Path(cfg.output_dir).expanduser()
        if path.exists() and not path.is_dir():
            raise ConfigError(f"--output-dir {path} exists and is a file", hint="choose a directory path")
        # under a launcher RANK 0 alone checks (and creates and locks) the dir: another rank would race with its
        # first files, and see RANK 0's lock
        if not integrations.is_main_process():
            return path
        rundir.check_unlocked(path)
        # a lock file left alone (its run killed as it began) is no content
        if path.is_dir() and any(p.name != rundir.LOCK for p in path.iterdir()) and not (cfg.overwrite or
                                                                                          cfg.resume):
            raise ConfigError(f"--output-dir {path} exists and is not empty",
                              hint="pass --overwrite to replace it, --resume auto to continue its last checkpoint, "
                                   "or choose another dir")
        return path

    # ------------------------------------------------------------------------------ the model (no file written)

    @property
    def load_options(self) -> dict[str, Any]:
        """How the base loads for the adapter (QLoRA's bitsandbytes config, the frozen base's dtype)."""
        return dict(getattr(self.adapt_model, "load_options", None) or {})

    def load_model_and_tokenizer(self):
        """(model, or None for an architecture to build; tokenizer; the architecture's fields, or None)."""
        return models.load_model_and_tokenizer(self.cfg, **self.load_options)

    def build_or_grow(self, model, tokenizer, fields: dict | None):
        """The model built from its architecture (model None), or the loaded one with room for the tokens the run
        added to the tokenizer."""
        if model is None:
            return models.build_scratch_model(self.cfg, fields, tokenizer)
        t.grow_embeddings(model, tokenizer, adapting=self.adapt_model is not None)
        return model

    def check_model(self, model, packing_flag: str | None = None) -> None:
        """Refuse what the model cannot do: --grad-checkpointing, and packing (`packing_flag`) without per-example
        positions."""
        if self.cfg.grad_checkpointing and not model.supports_gradient_checkpointing:
            raise ConfigError(f"{type(model).__name__} does not support --grad-checkpointing",
                              hint="drop --grad-checkpointing")
        if packing_flag is not None:
            check_packing_support(model, packing_flag)

    def adapt(self, model):
        """The model the run trains: wrapped by the adapter (llmkit peft), --freeze-base / --trainable-layers
        applied, its parameters counted (a run with nothing to train is refused)."""
        if self.adapt_model is not None:
            model = self.adapt_model(model)
        self.parameters = t.freeze_and_count(model, self.cfg.freeze_base, self.cfg.trainable_layers)
        return model

    # ------------------------------------------------------------------ the run directory, training, the record

    def start(self) -> Path:
        """Every input problem has been reported: only now touch the run directory. The run locks it until it ends
        (another run writing it is refused), and it gets resolved_config.yaml; returns metrics.jsonl (emptied, or
        cut back to the resumed checkpoint's step)."""
        self.metrics_file, self._lock = rundir.start(self.dir, dump_yaml(self.record_config), self.cfg.overwrite,
                                                     self.resume_from)
        return self.metrics_file

    def training_arguments(self, has_eval: bool):
        """The Trainer's arguments (after setting up, without a launcher, the one-process world DeepSpeed needs)."""
        if self.ds_config is not None:
            from llmkit.runtime import quiet_deepspeed_notices

            quiet_deepspeed_notices()
            world = integrations.ensure_single_process_env()
            if world:
                self.reporter.info(world)
        return t.training_arguments(self.cfg, self.dir / rundir.CHECKPOINTS, has_eval)

    def forecast_memory(self, model, args) -> None:
        """memory-estimate's peak for this run, reported before training and recorded next to the measured one."""
        self.forecast = memory_forecast(self.cfg, model, self.ds_config, args.device.type == "cuda", self.reporter)

    def train(self, trainer, collator, tokenizer, *, eval_before: bool = True, callbacks: list | tuple = (),
              before_save: Callable | None = None) -> t.TrainOutcome:
        """Train (progress, metrics.jsonl, Ctrl-C/SIGTERM checkpoints, the W&B/MLflow runs of --report-to) and save
        the final model; `callbacks` are the recipe's, ahead of the caller's."""
        tracked = TrackedRuns.start(self.cfg.report_to, self.dir, self.metrics_file, to_dict(self.record_config),
                                    self.reporter.info)
        try:
            outcome = t.train_and_save(trainer, run=self.dir, collator=collator, tokenizer=tokenizer,
                                       reporter=self.reporter, metrics_file=self.metrics_file,
                                       resume_from=self.resume_from, report_to=self.cfg.report_to,
                                       eval_before=eval_before, callbacks=[*callbacks, *self.callbacks, tracked],
                                       before_save=before_save)
        except BaseException:
            tracked.finish("failed")
            raise
        tracked.finish(outcome.status)
        return outcome

    def eval_sources(self) -> dict[str, str]:
        """--eval-data's sources by their metric names (eval_<name>_loss), each evaluated on its own."""
        from llmkit.data.sources import eval_names, parse_spec

        sources = parse_spec(self.cfg.eval_data, "--eval-data")
        return dict(zip(eval_names(sources), (s.name for s in sources)))

    def eval_source(self) -> str | None:
        """manifest.json's name for the eval data."""
        return self.cfg.eval_data or (f"{self.cfg.eval_split:g} of --data" if self.cfg.eval_split else None)

    def data_record(self, **described) -> dict[str, Any]:
        """manifest.json's data block: the training data, its fingerprint, then what the recipe says about it."""
        return {"source": self.cfg.data, "fingerprint": rundir.fingerprint(self.cfg.data), **described}

    def finish(self, result_type: type[R], trainer, outcome: t.TrainOutcome, *, data: dict,
               manifest: dict | None = None, **own) -> R:
        """Record the run (manifest.json, once) and return its result; after a Ctrl-C or SIGTERM checkpoint raise
        TrainingInterrupted with it. `own` are the result type's fields, and a shared one the recipe measures its
        own way (the task heads' initial eval loss)."""
        seconds, files = self._record(trainer, outcome, data, manifest or {})
        losses, eval_set = outcome.losses, trainer.eval_dataset
        total, trainable = self.parameters
        shared = dict(
            output_dir=str(self.dir), model_dir=str(outcome.model_dir) if outcome.model_dir else None,
            status=outcome.status, steps=trainer.state.global_step,
            epochs=round(float(trainer.state.epoch or 0.0), 4), train_rows=t.train_rows(trainer),
            eval_rows=t.eval_rows(eval_set), parameters=total, trainable_parameters=trainable,
            train_loss=losses[-1] if losses else None,
            eval_loss=None if outcome.final_eval is None else round(outcome.final_eval, 6),
            initial_eval_loss=None if outcome.initial_eval is None else round(outcome.initial_eval, 6),
            tokens=outcome.tokens, tokens_per_second=round(outcome.tokens_per_second, 1), seconds=round(seconds, 3),
            resumed_from=str(self.resume_from) if self.resume_from else None,
            checkpoint=str(outcome.checkpoint) if outcome.checkpoint else None, loss_curve=losses,
            sparkline=rundir.sparkline(losses), files=files, warnings=self.warnings,
            eval_by_source=self._eval_by_source(eval_set, outcome))
        result = result_type(**{**shared, **own})
        if outcome.interrupted:
            raise TrainingInterrupted(result, outcome.callback.stop_signal)
        return result

    def _eval_by_source(self, eval_set, outcome: t.TrainOutcome) -> list[dict] | None:
        """Each eval source's losses, when the run evaluated several (a dict of eval sets named by eval_sources)."""
        if not isinstance(eval_set, dict):
            return None
        sources = self.eval_sources()

        def loss(metrics: dict, name: str) -> float | None:
            value = metrics.get(f"eval_{name}_loss")
            return None if value is None else round(value, 6)

        return [{"name": name, "source": sources[name], "eval_loss": loss(outcome.final_metrics, name),
                 "initial_eval_loss": loss(outcome.initial_metrics, name),
                 "eval_tokens": (outcome.final_metrics or outcome.initial_metrics).get(f"eval_{name}_tokens")}
                for name in eval_set]

    def _record(self, trainer, outcome: t.TrainOutcome, data: dict, extra: dict) -> tuple[float, dict[str, str]]:
        """manifest.json with what every training run records (RANK 0 writes it); returns (wall seconds, the run's
        files for the result, the final model or adapter dir under its own name)."""
        seconds = time.perf_counter() - self.started
        total, trainable = self.parameters
        ds_config = self.ds_config
        manifest = {
            "command": self.command, "status": outcome.status, "versions": rundir.library_versions(), "data": data,
            "model": {"class": type(trainer.model).__name__, "parameters": total, "trainable_parameters": trainable},
            "steps": trainer.state.global_step, "tokens_trained_this_run": outcome.tokens,
            "tokens_per_second": round(outcome.tokens_per_second, 1), "wall_seconds": round(seconds, 3),
            "train_seconds": round(outcome.train_seconds, 3),
            "resumed_from": str(self.resume_from) if self.resume_from else None,
            "threads": torch.get_num_threads(), "device": str(trainer.args.device), **rundir.peak_memory(),
            "deepspeed": None if ds_config is None else {"config": self.cfg.deepspeed,
                                                         "zero_stage": integrations.zero_stage(ds_config)},
            **extra,
        }
        manifest["memory"] = memory_record(self.forecast, manifest)
        manifest.update(self.adapter_record())
        if integrations.is_main_process():   # under a launcher only RANK 0 writes the run dir
            rundir.write_json(self.dir / rundir.MANIFEST, manifest)
            if outcome.model_dir is not None:
                self.saved(outcome.model_dir)
        files = {"resolved_config": str(self.dir / "resolved_config.yaml"), "metrics": str(self.dir / rundir.METRICS),
                 "loss_curve": str(self.dir / rundir.CURVE), "manifest": str(self.dir / rundir.MANIFEST),
                 "checkpoints": str(self.dir / rundir.CHECKPOINTS)}
        if outcome.model_dir is not None:
            files[outcome.model_dir.name] = str(outcome.model_dir)
        return seconds, files

    def adapter_record(self) -> dict[str, Any]:
        """manifest.json's keys about the adapter the run trained (none here; AdapterRun: its peft block)."""
        return {}

    def saved(self, model_dir: Path) -> None:
        """After the final model is saved (RANK 0): files that go with it (none here; AdapterRun: what the adapter
        was trained against)."""


def memory_forecast(cfg, model, ds_config, on_gpu: bool, reporter: Reporter):
    """memory-estimate's peak for this run, reported before training; when it cannot be made (an architecture
    llmkit.modelspec cannot size), a warning and the reason (a str) instead: the forecast never stops a run."""
    try:
        est, spec = integrations.memory_forecast(cfg, model, ds_config, on_gpu)
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
    return {
        "estimated_peak_bytes": None if est is None else int(est.per_device["total"]),
        "estimated": None if est is None else {k: int(v) for k, v in est.per_device.items()},
        "estimated_peak_phase": None if est is None else est.peak_phase,
        "estimate_overhead": "memory-estimate default" if on_gpu else "0 (CPU: tensors only)",
        "estimate_skipped": skipped,
        "measured_peak_bytes": manifest.get(measured_key),
        "measured": ("torch.cuda.max_memory_allocated" if on_gpu
                     else "process peak RSS (includes the Python, torch and library code and data)"),
    }
