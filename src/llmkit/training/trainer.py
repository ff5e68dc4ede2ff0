"""A thin layer on transformers' Trainer: arguments from the config, the memory levers, exact per-token loss,
evaluation with perplexity, metrics and progress through the Reporter, and Ctrl-C that checkpoints first."""

from __future__ import annotations

import contextlib
import itertools
import math
import signal
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import Trainer, TrainerCallback, TrainingArguments

from llmkit.config import report_targets
from llmkit.errors import ConfigError
from llmkit.memory import HF_OPTIMIZER_ARGS, HF_OPTIMIZERS
from llmkit.training import rundir
from llmkit.training.objectives import NUM_TOKENS, SHIFTED, token_loss

SCHEDULERS = {"linear": "linear", "cosine": "cosine", "constant": "constant",
              "constant-with-warmup": "constant_with_warmup"}


def check_training_environment(cfg) -> None:
    """What this machine must have for the run: checked before the run dir exists, so a refused run leaves nothing
    that blocks its corrected rerun."""
    if cfg.mixed_precision == "fp16" and not torch.cuda.is_available():
        raise ConfigError("--mixed-precision fp16 needs a GPU (fp16 autocast has no CPU gradient scaler)",
                          hint="on CPU use --mixed-precision bf16 (slow without native bf16) or no")
    if cfg.attention == "flash":
        import importlib.util

        if not torch.cuda.is_available():
            raise ConfigError("--attention flash needs a CUDA GPU (flash-attention has no CPU kernels)",
                              hint="on CPU use --attention sdpa (the default where the model has it) or eager")
        if importlib.util.find_spec("flash_attn") is None:
            raise ConfigError("--attention flash needs the flash-attn package, which is not installed",
                              hint="pip install flash-attn --no-build-isolation, or use --attention sdpa")
    if cfg.optimizer in ("adamw-8bit", "paged-adamw-8bit"):
        try:
            import bitsandbytes  # noqa: F401
        except ImportError:
            raise ConfigError(f"--optimizer {cfg.optimizer} needs bitsandbytes",
                              hint="pip install bitsandbytes, or use --optimizer adamw / adafactor") from None


def training_arguments(cfg, checkpoints_dir: Path, has_eval: bool) -> TrainingArguments:
    cuda = torch.cuda.is_available()
    deepspeed = None
    if cfg.deepspeed is not None:
        from llmkit.training.integrations import load_deepspeed_config

        load_deepspeed_config(cfg.deepspeed)   # checked (again) here for callers that skip the Run's check
        deepspeed = str(Path(cfg.deepspeed).expanduser())
    return TrainingArguments(
        output_dir=str(checkpoints_dir),
        per_device_train_batch_size=cfg.batch_size,
        per_device_eval_batch_size=cfg.batch_size,
        gradient_accumulation_steps=cfg.grad_accum,
        learning_rate=cfg.lr,
        num_train_epochs=cfg.epochs,
        max_steps=cfg.max_steps if cfg.max_steps is not None else -1,
        warmup_steps=cfg.warmup_ratio,  # transformers 5: a float below 1 is a share of the steps
        lr_scheduler_type=SCHEDULERS[cfg.scheduler],
        weight_decay=cfg.weight_decay,
        max_grad_norm=cfg.max_grad_norm,
        optim=HF_OPTIMIZERS[cfg.optimizer],
        optim_args=HF_OPTIMIZER_ARGS.get(cfg.optimizer),
        bf16=cfg.mixed_precision == "bf16",
        fp16=cfg.mixed_precision == "fp16",
        activation_checkpointing=cfg.grad_checkpointing,   # transformers 5's name for gradient checkpointing
        activation_checkpointing_kwargs={"use_reentrant": False} if cfg.grad_checkpointing else None,
        eval_strategy="steps" if has_eval and cfg.eval_steps else "no",
        eval_steps=cfg.eval_steps if has_eval and cfg.eval_steps else None,
        save_strategy="steps",
        save_steps=cfg.save_steps,
        save_total_limit=cfg.save_total_limit,
        save_only_model=False,
        logging_strategy="steps",
        logging_steps=cfg.logging_steps,
        logging_first_step=True,
        seed=cfg.seed,
        data_seed=cfg.seed,
        report_to=[],   # --report-to: the run adds its own trackers (TensorBoard in RUN/tensorboard, W&B, MLflow)
        deepspeed=deepspeed,
        use_cpu=not cuda,
        disable_tqdm=True,
        remove_unused_columns=False,
        dataloader_num_workers=0,
        # a stream (pretrain --streaming) is read whole by every rank, each keeping its slice of every global batch
        # (accelerate's IterableDatasetShard): rank 0 dispatching collated batches would split the token counts
        # that the loss is normalised by
        accelerator_config={"dispatch_batches": False} if getattr(cfg, "streaming", False) else None,
    )


# ---------------------------------------------------------------------------------------------- memory levers

def _blocks(model) -> list[torch.nn.ModuleList]:
    """The transformer block lists (LLaMA `layers`, GPT-2 `h`, BERT `layer`, T5 `block`)."""
    counts = {getattr(model.config, k, None) for k in ("num_hidden_layers", "num_layers", "num_decoder_layers",
                                                        "n_layer")}
    lists = [m for m in model.modules() if isinstance(m, torch.nn.ModuleList) and len(m) in counts and len(m)]
    return [m for m in lists if not any(m is not o and any(c is m for c in o.modules()) for o in lists)]


def apply_freezing(model, freeze_base: bool, trainable_layers: int | None) -> None:
    """--freeze-base: only the output head trains. --trainable-layers N: the last N blocks of every block stack,
    the head and the final norms train; embeddings and earlier blocks are frozen (no gradient, unchanged)."""
    if not freeze_base and trainable_layers is None:
        return
    head = model.get_output_embeddings()
    head_params = {id(p) for p in head.parameters()} if head is not None else task_head_params(model)
    if not head_params:
        raise ConfigError("--freeze-base: this model has no output head to train", hint="use --trainable-layers N")
    if freeze_base:
        for p in model.parameters():
            p.requires_grad_(id(p) in head_params)
        return
    blocks = _blocks(model)
    if not blocks:
        raise ConfigError("--trainable-layers: cannot find this model's transformer blocks",
                          hint="use --freeze-base instead")
    deepest = max(len(b) for b in blocks)
    if trainable_layers > deepest:
        raise ConfigError(f"--trainable-layers {trainable_layers} is more than the model's {deepest} layers",
                          hint=f"choose 1..{deepest}")
    in_blocks, trainable = set(), set()
    for stack in blocks:
        for i, block in enumerate(stack):
            for p in block.parameters():
                in_blocks.add(id(p))
                if i >= len(stack) - trainable_layers:
                    trainable.add(id(p))
    embeddings = {id(p) for m in model.modules() if isinstance(m, torch.nn.Embedding) for p in m.parameters()}
    for p in model.parameters():
        keep = id(p) in trainable or id(p) in head_params or (id(p) not in in_blocks and id(p) not in embeddings)
        p.requires_grad_(keep)


def grow_embeddings(model, tokenizer, adapting: bool) -> None:
    """Make room for tokens the run added (template or sentinel tokens). An adapter cannot: the base's embedding
    matrix is frozen and not saved with the adapter, so the new rows would stay random and be lost."""
    rows = model.get_input_embeddings().weight.shape[0]
    if len(tokenizer) <= rows:
        return
    if adapting:
        added = tokenizer.convert_ids_to_tokens(list(range(rows, len(tokenizer))))
        raise ConfigError(f"this run needs {len(tokenizer) - rows} token(s) the base model lacks "
                          f"({', '.join(map(str, added[:4]))}{', ...' if len(added) > 4 else ''}), and an adapter "
                          "cannot grow a frozen vocabulary",
                          hint="use a template made of tokens the tokenizer has (the tokenizer's own, or "
                               "--template plain), or add the tokens with a full `llmkit sft` first")
    model.resize_token_embeddings(len(tokenizer))


def task_head_params(model) -> set[int]:
    """A task head (BERT's classifier, qa_outputs; LLaMA's score): the parameters outside the base model."""
    base = getattr(model, "base_model", None)
    if base is None or base is model:
        return set()
    inside = {id(p) for p in base.parameters()}
    return {id(p) for p in model.parameters() if id(p) not in inside}


def freeze_and_count(model, freeze_base: bool, trainable_layers: int | None) -> tuple[int, int]:
    """Apply --freeze-base / --trainable-layers; (total, trainable) parameters. Refuses when nothing would train."""
    apply_freezing(model, freeze_base, trainable_layers)
    total, trainable = parameter_counts(model)
    if trainable == 0:
        raise ConfigError("no parameter is left to train", hint="drop --freeze-base / --trainable-layers")
    return total, trainable


def parameter_counts(model) -> tuple[int, int]:
    if is_adapter_model(model):   # peft counts 4-bit packed weights as the values they hold, not the bytes
        trainable, total = model.get_nb_trainable_parameters()
        return int(total), int(trainable)
    seen, total, trainable = set(), 0, 0
    for p in model.parameters():
        if id(p) in seen:
            continue
        seen.add(id(p))
        total += p.numel()
        trainable += p.numel() if p.requires_grad else 0
    return total, trainable


# --------------------------------------------------------------------------------------------------- trainer

class NonFiniteLoss(Exception):
    """A training step's loss is NaN or infinite (raised before that step's update)."""

    def __init__(self, step: int, loss: float):
        super().__init__(f"loss {loss} at step {step}")
        self.step, self.loss = step, loss


class PermutationSampler(torch.utils.data.Sampler):
    """The order of accelerate's SeedableRandomSampler (what the Trainer's RandomSampler becomes: torch.randperm
    seeded with seed + epoch) without its Python list of every row index, ~36 bytes a row from RandomSampler's
    `.tolist()`: the permutation stays an int64 tensor, handed out a slice at a time. Not a RandomSampler, so
    accelerate keeps it as it is."""

    SLICE = 65_536

    def __init__(self, rows: int, seed: int):
        self.rows, self.seed, self.epoch = rows, seed, 0

    def __len__(self) -> int:
        return self.rows

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self):
        generator = torch.Generator()
        generator.manual_seed(self.seed + self.epoch)
        permutation = torch.randperm(self.rows, generator=generator)
        for start in range(0, self.rows, self.SLICE):
            yield from permutation[start:start + self.SLICE].tolist()
        self.epoch += 1   # as SeedableRandomSampler: the next pass, if nothing sets the epoch, is the next epoch


class LlmkitTrainer(Trainer):
    """transformers' Trainer with an exact per-token evaluation (loss summed over all eval tokens, then divided)."""

    def __init__(self, *args, objective: str = "causal-lm", **kwargs):
        super().__init__(*args, **kwargs)
        self.shift = SHIFTED[objective]

    def _get_train_sampler(self, train_dataset=None):
        sampler = super()._get_train_sampler(train_dataset)
        if type(sampler) is torch.utils.data.RandomSampler and self.accelerator.dataloader_config.use_seedable_sampler:
            seed = self.args.data_seed if self.args.data_seed is not None else torch.random.initial_seed()
            return PermutationSampler(len(sampler.data_source), seed)
        return sampler

    def get_batch_samples(self, epoch_iterator, num_batches, device):
        """The micro-batches of one optimizer step and the number of loss targets in all of them (every rank's,
        under a launcher with average_tokens_across_devices), the divisor of `token_loss`. transformers counts
        labels[..., 1:] only for models whose `loss_type` is its causal-LM loss; GPT-2 and the other models without
        one would count position 0 of every row, shrinking the loss by targets/(targets + rows). The objective
        says whether llmkit's loss shifts."""
        if self.compute_loss_func is None:   # the model computes its own loss (task heads): transformers counts
            return super().get_batch_samples(epoch_iterator, num_batches, device)
        batches = list(itertools.islice(epoch_iterator, num_batches))
        if not batches:
            return batches, None
        targets = sum((b["labels"][..., 1:] if self.shift else b["labels"]).ne(-100).sum() for b in batches)
        targets = targets.to(device)
        if self.args.average_tokens_across_devices and self.args.world_size > 1:
            targets = self.accelerator.gather(targets).sum()   # compute_loss then scales by the number of ranks
        return batches, targets

    def training_step(self, model, inputs, num_items_in_batch=None):
        # tokens actually trained on (the dataloader may collate a batch ahead; counting here is exact)
        self.data_collator.tokens_seen += int(inputs.pop(NUM_TOKENS, 0))
        loss = super().training_step(model, inputs, num_items_in_batch)
        # before the optimizer applies it: a NaN/inf loss would make every weight NaN (the Trainer's own nan filter
        # only hides it from the logs); the check syncs, as that filter's does every step
        if not bool(torch.isfinite(loss).all()):
            raise NonFiniteLoss(self.state.global_step + 1, float(loss.detach().float().mean()))
        return loss

    def get_eval_dataloader(self, eval_dataset=None):
        if self.args.world_size <= 1:
            return super().get_eval_dataloader(eval_dataset)
        # under a launcher every rank evaluates the whole set, so the loss is exact (a sharded loader repeats rows
        # to even out the ranks) and every rank runs the same forward passes (ZeRO-3 gathers in each of them)
        from torch.utils.data import DataLoader

        return DataLoader(eval_dataset if eval_dataset is not None else self.eval_dataset,
                          batch_size=self.args.per_device_eval_batch_size, collate_fn=self.data_collator,
                          shuffle=False)

    def evaluate(self, eval_dataset=None, ignore_keys=None, metric_key_prefix: str = "eval") -> dict[str, float]:
        metrics = self.eval_metrics(eval_dataset, metric_key_prefix)
        self.log(metrics)
        self.control = self.callback_handler.on_evaluate(self.args, self.state, self.control, metrics)
        return metrics

    def eval_metrics(self, eval_dataset=None, prefix: str = "eval") -> dict[str, float]:
        """Loss, perplexity and tokens of the eval set. A dict of eval sets (--eval-data a.jsonl,b.jsonl): each
        one's under PREFIX_<name>_, and all of them together under PREFIX_ (token-weighted: the loss of their
        concatenation)."""
        sets = self.eval_dataset if eval_dataset is None else eval_dataset
        named = sets if isinstance(sets, dict) else {None: sets}
        metrics: dict[str, float] = {}
        total, count = 0.0, 0
        for name, dataset in named.items():
            loss, tokens = evaluate_loss(self.model, self.get_eval_dataloader(dataset), self.shift, self.args.device)
            if name is not None:
                metrics.update(_loss_metrics(f"{prefix}_{name}", loss, tokens))
            if tokens:
                total, count = total + loss * tokens, count + tokens
        return {**_loss_metrics(prefix, total / count if count else float("nan"), count), **metrics}


def _loss_metrics(prefix: str, loss: float, tokens: int) -> dict[str, float]:
    return {f"{prefix}_loss": loss, f"{prefix}_perplexity": perplexity(loss), f"{prefix}_tokens": tokens}


def source_losses(metrics: dict) -> dict[str, float]:
    """eval_<name>_loss of each source of --eval-data a,b (LlmkitTrainer.eval_metrics), for metrics.jsonl."""
    return {k: round(float(v), 6) for k, v in metrics.items()
            if k.startswith("eval_") and k.endswith("_loss") and k != "eval_loss"}


def train_rows(trainer) -> int:
    """Rows of the training set; of a stream (no length), the rows the steps trained on."""
    dataset, args = trainer.train_dataset, trainer.args
    if hasattr(dataset, "__len__"):
        return len(dataset)
    return trainer.state.global_step * args.per_device_train_batch_size * args.gradient_accumulation_steps * \
        args.world_size


def eval_rows(eval_dataset) -> int:
    """Rows of an eval set, or of all of a dict of them."""
    if eval_dataset is None:
        return 0
    return sum(map(len, eval_dataset.values())) if isinstance(eval_dataset, dict) else len(eval_dataset)


def is_adapter_model(model) -> bool:
    """A peft model: it saves (and trains) only its adapter."""
    try:
        from peft import PeftModel
    except ImportError:
        return False
    return isinstance(model, PeftModel)


def final_model_dirname(model) -> str:
    return rundir.ADAPTER if is_adapter_model(model) else rundir.MODEL


def save_final_model(trainer: Trainer, tokenizer, path: Path) -> None:
    """The trained model (safetensors) and tokenizer, loadable with from_pretrained, or for a peft model the adapter
    (loadable with PeftModel.from_pretrained) with the generation config the run set (stop tokens). Under DeepSpeed
    the Trainer gathers the weights (ZeRO-3 needs stage3_gather_16bit_weights_on_model_save, which
    load_deepspeed_config checks); otherwise the model saves itself."""
    if trainer.is_deepspeed_enabled or getattr(trainer, "is_fsdp_enabled", False):   # FSDP: a full state dict
        trainer.save_model(str(path))
        (Path(path) / "training_args.bin").unlink(missing_ok=True)
    else:
        trainer.model.save_pretrained(str(path), safe_serialization=True)
    if is_adapter_model(trainer.model) and getattr(trainer.model, "generation_config", None) is not None:
        trainer.model.generation_config.save_pretrained(str(path))
    tokenizer.save_pretrained(str(path))


@dataclass
class TrainOutcome:
    """What every training command needs after `trainer.train()`: status, losses, the saved model, speed."""

    interrupted: bool
    initial_eval: float | None
    final_eval: float | None
    initial_metrics: dict[str, float]        # LlmkitTrainer.eval_metrics before training ({} without one)
    final_metrics: dict[str, float]          # and after it
    model_dir: Path | None
    checkpoint: Path | None
    train_curve: list[tuple[int, float]]
    eval_curve: list[tuple[int, float]]
    tokens: int
    train_seconds: float
    callback: "RunCallback"

    @property
    def status(self) -> str:
        return "interrupted" if self.interrupted else "completed"

    @property
    def losses(self) -> list[float]:
        return [loss for _, loss in self.train_curve]

    @property
    def tokens_per_second(self) -> float:
        return self.tokens / self.train_seconds if self.train_seconds > 0 else 0.0


def train_and_save(trainer: "LlmkitTrainer", *, run: Path, collator, tokenizer, reporter, metrics_file: Path,
                   resume_from: Path | None, report_to: str = "none", eval_before: bool = True,
                   callbacks: list | None = None, before_save=None) -> TrainOutcome:
    """The part of a run every training command shares: initial eval, training with progress and Ctrl-C
    checkpointing, final eval, the model saved atomically to RUN/model (after `before_save(trainer)`), the loss
    curve PNG."""
    from transformers.trainer_callback import PrinterCallback, ProgressCallback

    from llmkit.outputs import atomic_output_dir
    from llmkit.training import integrations

    trainer.remove_callback(PrinterCallback)
    trainer.remove_callback(ProgressCallback)
    if "tensorboard" in report_targets(report_to):
        trainer.add_callback(integrations.tensorboard_callback(run))
    has_eval = trainer.eval_dataset is not None
    initial, initial_metrics = None, {}
    if has_eval and eval_before and resume_from is None:
        initial_metrics = trainer.eval_metrics()
        initial = initial_metrics["eval_loss"]
        if trainer.is_world_process_zero():
            rundir.append_metrics(metrics_file, {"step": 0, "eval_loss": round(initial, 6),
                                                 "perplexity": round(perplexity(initial), 4),
                                                 **source_losses(initial_metrics)})
        reporter.info(f"before training: eval loss {initial:.4f}, perplexity {perplexity(initial):,.2f}")

    steps_hint = trainer.args.max_steps if trainer.args.max_steps > 0 else None
    with reporter.progress("training", total=steps_hint) as advance:
        callback = RunCallback(run, collator, reporter, advance)
        trainer.add_callback(callback)
        trainer.add_callback(DurableCheckpoints(run))
        for extra in callbacks or []:
            trainer.add_callback(extra)
        collator.tokens_seen = 0
        train_started = time.perf_counter()
        with checkpoint_on_interrupt(callback):
            try:
                trainer.train(resume_from_checkpoint=str(resume_from) if resume_from else None)
            except NonFiniteLoss as stop:
                from llmkit.errors import LlmkitError

                saved = rundir.checkpoints(run)
                raise LlmkitError(
                    f"the training loss became {stop.loss} at step {stop.step}: the run stopped before that step's "
                    "update, and no model was saved",
                    hint="lower --lr (or keep --max-grad-norm, use --mixed-precision no); "
                         + (f"the last good checkpoint is {saved[-1]} (--resume auto continues from it)" if saved
                            else "no checkpoint was written before it")) from None
        train_seconds = time.perf_counter() - train_started

    final_eval, final_metrics = None, {}
    if not callback.interrupted and has_eval:
        final_metrics = trainer.evaluate()
        final_eval = final_metrics["eval_loss"]
    saved = rundir.checkpoints(run)
    model_dir = None
    if not callback.interrupted:
        if before_save is not None:
            before_save(trainer)
        model_dir = run / final_model_dirname(trainer.model)
        if trainer.is_world_process_zero():
            with atomic_output_dir(model_dir, overwrite=True) as scratch:
                save_final_model(trainer, tokenizer, scratch)
        elif trainer.is_deepspeed_enabled or getattr(trainer, "is_fsdp_enabled", False):
            trainer.save_model(str(model_dir))   # ZeRO-3/FSDP gather the weights with every rank; RANK 0 writes

    rows = rundir.read_metrics(metrics_file)
    train_curve = [(r["step"], r["loss"]) for r in rows if "loss" in r]
    eval_curve = [(r["step"], r["eval_loss"]) for r in rows if "eval_loss" in r]
    if trainer.is_world_process_zero():
        rundir.write_loss_png(run / rundir.CURVE, train_curve, eval_curve)
    return TrainOutcome(interrupted=callback.interrupted, initial_eval=initial, final_eval=final_eval,
                        initial_metrics=initial_metrics, final_metrics=final_metrics, model_dir=model_dir,
                        checkpoint=saved[-1] if saved else None, train_curve=train_curve,
                        eval_curve=eval_curve, tokens=sum_over_ranks(collator.tokens_seen, trainer.args.device),
                        train_seconds=train_seconds,
                        callback=callback)


def perplexity(loss: float) -> float:
    return math.exp(loss) if loss < 700 else float("inf")


@torch.no_grad()
def evaluate_loss(model, dataloader, shift: bool, device=None) -> tuple[float, int]:
    was_training = model.training
    model.eval()
    total, count = 0.0, 0
    for batch in dataloader:
        batch = {k: v.to(device) if device is not None and torch.is_tensor(v) else v for k, v in batch.items()}
        batch.pop(NUM_TOKENS, None)
        labels = batch.pop("labels")
        logits = model(**batch)["logits"]
        n = int((labels[..., 1:] if shift else labels).ne(-100).sum())
        if n:
            total += float(token_loss(logits, labels, shift)) * n
            count += n
    model.train(was_training)
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:   # every rank's share
        sums = torch.tensor([total, float(count)], dtype=torch.float64, device=device)
        dist.all_reduce(sums)
        total, count = float(sums[0]), int(sums[1])
    return (total / count if count else float("nan")), count


# ------------------------------------------------------------------------------------------------- callbacks

class RunCallback(TrainerCallback):
    """metrics.jsonl rows, the live progress line (step, loss, tokens/s, ETA), and the Ctrl-C checkpoint."""

    def __init__(self, run_dir: Path, collator, reporter, advance=None):
        self.metrics = run_dir / rundir.METRICS
        self.collator = collator
        self.reporter = reporter
        self.advance = advance
        self.interrupted = False
        self.stop_signal: int | None = None   # the signal that interrupted the run (SIGINT, SIGTERM)
        self.train_rows: list[dict] = []
        self.eval_rows: list[dict] = []
        self._last = None
        self._start = None
        self._start_step = 0

    def on_train_begin(self, args, state, control, **kwargs):
        self._start = self._last = (time.perf_counter(), self.collator.tokens_seen)
        self._start_step = state.global_step

    def on_step_end(self, args, state, control, **kwargs):
        if self.advance is not None:
            self.advance(1)
        if args.world_size > 1:   # under a launcher the ranks stop at the same step, or one would wait forever
            self.interrupted = any_rank(self.interrupted, args.device)
        if self.interrupted:
            control.should_save = True
            control.should_training_stop = True

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not state.is_world_process_zero:   # under a launcher RANK 0 writes the rows and the progress
            return
        logs = logs or {}
        now, tokens = time.perf_counter(), self.collator.tokens_seen
        if "loss" in logs:
            elapsed = now - self._last[0]
            rate = (tokens - self._last[1]) / elapsed if elapsed > 0 else 0.0
            self._last = (now, tokens)
            row = {"step": state.global_step, "loss": round(float(logs["loss"]), 6),
                   "lr": float(logs.get("learning_rate", 0.0)), "tokens_per_second": round(rate, 1),
                   "epoch": round(float(state.epoch or 0.0), 4)}
            if "grad_norm" in logs and logs["grad_norm"] is not None:
                row["grad_norm"] = round(float(logs["grad_norm"]), 6)
            rundir.append_metrics(self.metrics, row)
            self.train_rows.append(row)
            done = state.global_step - self._start_step
            left = state.max_steps - state.global_step
            eta = (now - self._start[0]) / done * left if done > 0 else float("nan")
            self.reporter.info(f"step {state.global_step}/{state.max_steps}  loss {row['loss']:.4f}  "
                               f"{rate:,.0f} tokens/s  ETA {_duration(eta)}")
        if "eval_loss" in logs:
            row = {"step": state.global_step, "eval_loss": round(float(logs["eval_loss"]), 6),
                   "perplexity": round(float(logs.get("eval_perplexity", perplexity(logs["eval_loss"]))), 4),
                   **source_losses(logs)}
            rundir.append_metrics(self.metrics, row)
            self.eval_rows.append(row)
            self.reporter.info(f"step {state.global_step}  eval loss {row['eval_loss']:.4f}  "
                               f"perplexity {row['perplexity']:,.2f}")


class DurableCheckpoints(TrainerCallback):
    """Every checkpoint the Trainer saves flushed to disk (its files, its dir, the checkpoints dir's entry for it),
    with metrics.jsonl's rows up to it: a power cut or a crashed node cannot leave a checkpoint that looks saved
    but is not. Every rank flushes (each wrote its own RNG state and DeepSpeed shards)."""

    def __init__(self, run_dir: Path):
        self.run_dir = run_dir

    def on_save(self, args, state, control, **kwargs):
        from llmkit.outputs import fsync_path, fsync_tree

        checkpoint = Path(args.output_dir) / f"checkpoint-{state.global_step}"
        fsync_tree(checkpoint)
        fsync_path(checkpoint.parent)
        if state.is_world_process_zero:   # RANK 0 writes the metrics
            fsync_path(self.run_dir / rundir.METRICS)


class EpochCallback(TrainerCallback):
    """Gives a data.IndexedRows training set the Trainer's epoch. on_epoch_begin comes before the epoch's dataloader
    is iterated (its one-batch prefetch stays inside the epoch; dataloader_num_workers=0 reads rows in this
    process), and on resume the state is the checkpoint's, whose epoch's integer part is the epoch resumed in."""

    def __init__(self, dataset):
        self.dataset = dataset

    def on_epoch_begin(self, args, state, control, **kwargs):
        self.dataset.epoch = int(state.epoch or 0)


def any_rank(flag: bool, device=None) -> bool:
    """True when `flag` is True on any rank (one tiny all-reduce); the flag itself without torch.distributed."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        return flag
    value = torch.tensor([1.0 if flag else 0.0], device=device)
    dist.all_reduce(value, op=dist.ReduceOp.MAX)
    return bool(value.item() > 0)


def sum_over_ranks(value: int, device=None) -> int:
    """`value` summed over every rank (under a launcher each rank trains its own share of the tokens)."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        return value
    total = torch.tensor([float(value)], dtype=torch.float64, device=device)
    dist.all_reduce(total)
    return int(total.item())


def _duration(seconds: float) -> str:
    if not math.isfinite(seconds):
        return "?"
    seconds = int(seconds)
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m" if seconds >= 3600 else \
        f"{seconds // 60}m{seconds % 60:02d}s"


@contextlib.contextmanager
def checkpoint_on_interrupt(callback: RunCallback):
    """The first Ctrl-C (or SIGTERM: what SLURM and Kubernetes send on preemption) asks the Trainer to save a
    checkpoint at the end of the current step and stop; a second one interrupts (terminates) at once. Only the main
    thread can own signal handlers; elsewhere this does nothing."""
    import threading

    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}

    def handler(signum, frame):
        callback.interrupted = True
        callback.stop_signal = signum
        signal.signal(signum, signal.default_int_handler if signum == signal.SIGINT else signal.SIG_DFL)

    for s in previous:
        signal.signal(s, handler)
    try:
        yield
    finally:
        for s, old in previous.items():
            signal.signal(s, old)
