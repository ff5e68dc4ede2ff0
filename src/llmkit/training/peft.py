"""`llmkit peft`: train an adapter (LoRA, IA3, prompt-tuning, p-tuning, prefix-tuning; LoRA on a bitsandbytes base
is QLoRA) with the same data path and training core as `sft` and `pretrain`.

peft does the work. This module chooses its configuration (the modules an adapter wraps, detected per
architecture and checked against the model), refuses what cannot work before anything is written (a probe forward
through the wrapped model), and records what the adapter is in the run: `adapter/llmkit_adapter.json` says which
base and which quantization it was trained against (`llmkit merge` reads it).
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from llmkit.config import PROMPT_METHODS, PeftConfig
from llmkit.errors import ConfigError
from llmkit.modeling import ADAPTER_INFO
from llmkit.training import rundir
from llmkit.training.run import Run, RunResult
from llmkit.ui import Reporter, SilentReporter

# peft's task type for each training head (masked-LM has none: only LoRA and IA3, which need no task type)
TASK_TYPES = {"causal-lm": "CAUSAL_LM", "seq2seq": "SEQ_2_SEQ_LM", "masked-lm": None, "seq-cls": "SEQ_CLS",
              "token-cls": "TOKEN_CLS", "extractive-qa": "QUESTION_ANS"}


@dataclass
class ParameterRow:
    part: str
    parameters: int
    trainable: bool


@dataclass(kw_only=True)
class PeftResult(RunResult):
    """The adapter's result: the training run's shared fields (its parameter counts replaced by peft's count of
    the wrapped model), the adapter's own, and the whole training result in `training`."""

    method: str
    objective: str
    task: str
    base_model: str
    adapter_dir: str | None
    adapter_bytes: int | None            # the adapter's weights on disk
    base_bytes: int                      # the base model's weights in memory, as loaded for training
    quant: str
    targets: list[str]                   # module names the adapter wraps (LoRA, IA3)
    feedforward: list[str]               # IA3: the targets scaled on their input
    trainable_share: float
    parameter_table: list[ParameterRow]
    training: RunResult                  # the sft / pretrain / task run's result (its own fields)

    def to_json(self) -> dict[str, Any]:
        """One flat document: the training result's keys, then the adapter's (adapter keys win)."""
        out = asdict(self.training)
        own = asdict(self)
        own.pop("training")
        out.update(own)
        return out


# --------------------------------------------------------------------------------------------------- targets

def linear_module_names(model) -> dict[str, int]:
    """Short names of the linear layers peft can wrap (nn.Linear, GPT-2's Conv1D, bitsandbytes layers), with how
    many modules carry each name; the output head is one of them (named, it gets LoRA too; all-linear leaves it)."""
    import torch

    counts: dict[str, int] = {}
    for name, module in model.named_modules():
        if not name:
            continue
        kind = type(module).__name__
        if isinstance(module, torch.nn.Linear) or kind in ("Conv1D", "Linear4bit", "Linear8bitLt"):
            short = name.rsplit(".", 1)[-1]
            counts[short] = counts.get(short, 0) + 1
    return counts


def _check_names(flag: str, names: tuple[str, ...], available: dict[str, int], model_type: str) -> None:
    unknown = [n for n in names if n not in available]
    if unknown:
        raise ConfigError(f"{flag}: {', '.join(unknown)} is not a linear layer of this {model_type} model",
                          hint=f"its linear layers: {', '.join(sorted(available))}"
                               + ("; or --lora-targets all-linear" if flag == "--lora-targets" else ""))


def lora_targets(cfg: PeftConfig, model) -> list[str] | str:
    from peft.utils.constants import TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING as DEFAULTS

    model_type = model.config.model_type
    if cfg.lora_targets == ("all-linear",):
        return "all-linear"
    available = linear_module_names(model)
    if cfg.lora_targets:
        _check_names("--lora-targets", cfg.lora_targets, available, model_type)
        return list(cfg.lora_targets)
    default = [n for n in DEFAULTS.get(model_type, []) if n in available]
    return default or "all-linear"


def ia3_targets(cfg: PeftConfig, model) -> tuple[list[str], list[str]]:
    from peft.utils.constants import TRANSFORMERS_MODELS_TO_IA3_FEEDFORWARD_MODULES_MAPPING as FEEDFORWARD
    from peft.utils.constants import TRANSFORMERS_MODELS_TO_IA3_TARGET_MODULES_MAPPING as TARGETS

    model_type = model.config.model_type
    available = linear_module_names(model)
    if cfg.ia3_targets:
        _check_names("--ia3-targets", cfg.ia3_targets, available, model_type)
        return list(cfg.ia3_targets), list(cfg.ia3_feedforward)
    if model_type not in TARGETS:
        raise ConfigError(f"peft has no default IA3 modules for {model_type} models",
                          hint=f"name them: --ia3-targets K,V,FF --ia3-feedforward FF (this model's linear layers: "
                               f"{', '.join(sorted(available))})")
    targets = [n for n in TARGETS[model_type] if n in available]
    feedforward = list(cfg.ia3_feedforward) or [n for n in FEEDFORWARD.get(model_type, []) if n in targets]
    outside = [n for n in feedforward if n not in targets]
    if outside:
        raise ConfigError(f"--ia3-feedforward {', '.join(outside)} is not among the IA3 targets "
                          f"({', '.join(targets)})", hint="name it in --ia3-targets too, or drop it")
    return targets, feedforward


# ---------------------------------------------------------------------------------------------------- adapter

def quantization_config(cfg: PeftConfig):
    """The bitsandbytes config QLoRA loads the base with (None without --quant)."""
    if cfg.quant == "none":
        return None
    try:
        import bitsandbytes  # noqa: F401
    except ImportError:
        raise ConfigError(f"--quant {cfg.quant} needs bitsandbytes", hint="pip install bitsandbytes") from None
    import torch
    from transformers import BitsAndBytesConfig

    if cfg.quant == "int8":
        return BitsAndBytesConfig(load_in_8bit=True)
    return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type=cfg.quant,
                              bnb_4bit_use_double_quant=cfg.double_quant,
                              bnb_4bit_compute_dtype=getattr(torch, _compute_dtype(cfg)))


def _compute_dtype(cfg: PeftConfig) -> str:
    if cfg.compute_dtype != "auto":
        return {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}[cfg.compute_dtype]
    import torch

    # this CPU (and most) has no fast bf16: 4-bit matmuls there run in fp32
    return "bfloat16" if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else "float32"


@dataclass
class AdapterPlan:
    """The ModelAdapter `llmkit peft` hands to the training run: loads the base (quantized for QLoRA) and wraps it."""

    cfg: PeftConfig
    tokenizer_source: str
    quantization_config: Any = None
    targets: list[str] = field(default_factory=list)
    feedforward: list[str] = field(default_factory=list)
    base_bytes: int = 0
    table: list[ParameterRow] = field(default_factory=list)
    reporter: Reporter = field(default_factory=SilentReporter)

    @property
    def load_options(self) -> dict[str, Any]:
        return {"quantization_config": self.quantization_config, "dtype": self.cfg.base_dtype}

    def __call__(self, model):
        from peft import get_peft_model

        cfg = self.cfg
        model_task = cfg.model_task
        self.base_bytes = int(model.get_memory_footprint())
        if self.quantization_config is not None:
            from peft import prepare_model_for_kbit_training

            keep_4bit_layers_differentiable(model)
            model = prepare_model_for_kbit_training(
                model, use_gradient_checkpointing=cfg.grad_checkpointing,
                gradient_checkpointing_kwargs={"use_reentrant": False})
        config = self.peft_config(model, model_task)
        try:
            wrapped = get_peft_model(model, config)
        except (ValueError, TypeError, KeyError, NotImplementedError, AttributeError) as exc:
            raise ConfigError(f"peft cannot apply {cfg.method} to this {model.config.model_type} model: "
                              f"{_first_line(exc)}", hint=_other_methods(cfg.method)) from None
        _probe(wrapped, cfg.method, model_task)
        if cfg.method == "lora":
            from llmkit.training.integrations import wrapped_module_names

            self.targets = sorted(wrapped_module_names(wrapped, "lora_A"))
        self.table = parameter_table(wrapped)
        self.reporter.info(self.describe())   # before training starts, and before the memory forecast
        return wrapped

    def describe(self) -> str:
        """The trainable-parameter table: what trains, what is frozen, and the trainable share."""
        total = sum(r.parameters for r in self.table)
        trainable = sum(r.parameters for r in self.table if r.trainable)
        what = self.cfg.method + (f" on {', '.join(self.targets)}" if self.targets else "") \
            + (f" over a {self.cfg.quant} base" if self.cfg.quant != "none" else "")
        lines = [f"adapter: {what}"]
        for r in self.table:
            lines.append(f"  {r.part:<40} {r.parameters:>14,}  {'trainable' if r.trainable else 'frozen'}")
        lines.append(f"  {'trainable / total':<40} {trainable:>14,} / {total:,} = {trainable / max(total, 1):.4%}")
        return "\n".join(lines)

    def peft_config(self, model, model_task: str):
        import peft

        cfg = self.cfg
        task_type = TASK_TYPES[model_task]
        if task_type is None and cfg.method in PROMPT_METHODS:
            raise ConfigError(f"{cfg.method} needs a peft task type, and peft has none for masked-LM models",
                              hint="use --method lora or ia3 for a masked LM (or --task seq-cls/token-cls)")
        common = {"task_type": task_type}
        # peft trains (and saves) the new head of a classification / QA model itself (its task types do that)
        save = list(cfg.modules_to_save)
        if cfg.method == "lora":
            targets = lora_targets(cfg, model)
            self.targets = [targets] if isinstance(targets, str) else targets
            return peft.LoraConfig(r=cfg.lora_rank, lora_alpha=cfg.lora_alpha, lora_dropout=cfg.lora_dropout,
                                   target_modules=targets, modules_to_save=save or None,
                                   use_rslora=cfg.use_rslora, use_dora=cfg.use_dora, **common)
        if cfg.method == "ia3":
            self.targets, self.feedforward = ia3_targets(cfg, model)
            return peft.IA3Config(target_modules=self.targets, feedforward_modules=self.feedforward,
                                  modules_to_save=save or None, **common)
        if save:
            raise ConfigError(f"--modules-to-save applies to lora and ia3, not {cfg.method}",
                              hint="drop --modules-to-save")
        if cfg.method == "prompt-tuning":
            text = cfg.prompt_init == "text" or (cfg.prompt_init is None and cfg.prompt_init_text)
            if not text:
                return peft.PromptTuningConfig(num_virtual_tokens=cfg.num_virtual_tokens,
                                               prompt_tuning_init=peft.PromptTuningInit.RANDOM, **common)
            return peft.PromptTuningConfig(num_virtual_tokens=cfg.num_virtual_tokens,
                                           prompt_tuning_init=peft.PromptTuningInit.TEXT,
                                           prompt_tuning_init_text=cfg.prompt_init_text,
                                           tokenizer_name_or_path=self.tokenizer_source, **common)
        if cfg.method == "p-tuning":
            encoder = {"mlp": peft.PromptEncoderReparameterizationType.MLP,
                       "lstm": peft.PromptEncoderReparameterizationType.LSTM}[cfg.encoder]
            return peft.PromptEncoderConfig(num_virtual_tokens=cfg.num_virtual_tokens,
                                            encoder_reparameterization_type=encoder,
                                            encoder_hidden_size=cfg.encoder_hidden_size or model.config.hidden_size,
                                            **common)
        return peft.PrefixTuningConfig(num_virtual_tokens=cfg.num_virtual_tokens,
                                       prefix_projection=cfg.prefix_projection,
                                       encoder_hidden_size=cfg.encoder_hidden_size or model.config.hidden_size,
                                       **common)


def keep_4bit_layers_differentiable(model) -> None:
    """Keep every bitsandbytes 4-bit layer on its dequantize-and-matmul path, the one with a backward.

    On a CPU with AVX512-BF16, bitsandbytes repacks a Linear4bit's weight for its inference kernel the first time
    the layer runs in eval mode on an input without grad (the probe below, `--eval-split`'s evaluations), and uses
    that kernel for every later forward, training ones included. It has no backward: from then on nothing upstream
    of a 4-bit layer gets a gradient (LoRA on q/v learns nothing). The repacking cannot be undone faithfully either
    (it rounds the block scales to bf16, and bitsandbytes 0.50's inverse leaves them transposed without double
    quantization), so it is switched off right after loading, before any forward."""
    import bitsandbytes as bnb

    for module in model.modules():
        if isinstance(module, bnb.nn.Linear4bit):
            if getattr(module.weight.quant_state, "packing_format_for_cpu", False):
                raise RuntimeError(f"{type(module).__name__} weights were repacked for inference by a forward "
                                   "that ran before the QLoRA setup")
            module.support_avx512bf16_for_cpu = False


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _other_methods(method: str) -> str:
    return f"try --method lora (or ia3); {method} is not supported for this architecture by peft"


def _probe(model, method: str, model_task: str) -> None:
    """One forward pass through the wrapped model on 4 tokens, in eval mode (no dropout draws): an architecture a
    method cannot handle (a cache layout prefix-tuning does not know, say) fails here, before the run dir exists."""
    import torch

    base = model.get_base_model()
    device = next(p.device for p in model.parameters())
    ids = torch.full((1, 4), 1, dtype=torch.long, device=device)
    inputs = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
    if getattr(base.config, "is_encoder_decoder", False):
        start = base.config.decoder_start_token_id
        inputs["decoder_input_ids"] = torch.full((1, 2), 0 if start is None else start, dtype=torch.long,
                                                 device=device)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            model(**inputs)
    except Exception as exc:  # noqa: BLE001 - any failure here means the method does not fit the model
        raise ConfigError(f"peft's {method} cannot run on this {base.config.model_type} model: {_first_line(exc)}",
                          hint=_other_methods(method)) from None
    finally:
        model.train(was_training)


def parameter_table(model) -> list[ParameterRow]:
    """Trainable parts by kind (LoRA matrices, IA3 vectors, virtual tokens, modules_to_save) and the frozen base;
    the trainable rows add up to peft's own count."""
    trainable_total, total = model.get_nb_trainable_parameters()
    parts: dict[str, int] = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        if "lora_magnitude_vector" in name:
            part = "DoRA magnitudes"
        elif ".lora_" in name:
            part = "LoRA matrices (A, B)"
        elif ".ia3_l" in name:
            part = "IA3 scaling vectors"
        elif "prompt_encoder" in name:
            part = "virtual tokens (prompt encoder)"
        elif "modules_to_save" in name:
            part = "modules_to_save: " + name.split(".modules_to_save")[0].rsplit(".", 1)[-1]
        else:
            part = "other trainable"
        parts[part] = parts.get(part, 0) + p.numel()
    rows = [ParameterRow(part, n, True) for part, n in parts.items()]
    counted = sum(parts.values())
    if counted != trainable_total:   # peft counts some parts its own way (e.g. prompt encoders shared)
        rows.append(ParameterRow("other trainable (peft's count)", trainable_total - counted, True))
    rows.append(ParameterRow("base model (frozen)", total - trainable_total, False))
    return rows


# -------------------------------------------------------------------------------------------------------- run

def run_peft(cfg: PeftConfig, reporter: Reporter | None = None, callbacks: list | None = None) -> PeftResult:
    """Train the adapter through `sft` (--objective sft, any --task) or `pretrain` (another objective); the run
    dir is that run's, with the adapter in RUN/adapter and the peft command's own resolved config and manifest."""
    reporter = reporter or SilentReporter()
    from llmkit.runtime import quiet_peft_notices

    quiet_peft_notices()
    plan = AdapterPlan(cfg, tokenizer_source=cfg.tokenizer or cfg.model,
                       quantization_config=quantization_config(cfg), reporter=reporter)
    if cfg.optimizer in ("adamw-8bit", "paged-adamw-8bit") and cfg.quant == "none":
        reporter.info(f"--optimizer {cfg.optimizer}: 8-bit optimizer states for the adapter's parameters")
    # the partial result of an interrupted run (TrainingInterrupted) stays the training run's (steps, checkpoint)
    with AdapterRun(cfg, plan, reporter, callbacks) as run:
        training = _recipe(cfg)(run)
    return _peft_result(cfg, plan, training)


class AdapterRun(Run):
    """The training run of `llmkit peft`: the derived sft/pretrain config trains, the peft command is recorded (its
    config, the manifest's peft block) and the saved adapter says what it was trained against."""

    def __init__(self, cfg: PeftConfig, plan: AdapterPlan, reporter: Reporter, callbacks: list | None):
        super().__init__(cfg.training_config(), "llmkit peft", reporter, callbacks, plan, record_config=cfg)
        self.plan = plan

    def adapter_record(self) -> dict[str, Any]:
        plan = self.plan
        return {"peft": {**adapter_info(self.record_config, plan), "targets": plan.targets,
                         "feedforward": plan.feedforward, "parameter_table": [asdict(r) for r in plan.table]}}

    def saved(self, model_dir: Path) -> None:
        rundir.write_json(model_dir / ADAPTER_INFO, adapter_info(self.record_config, self.plan))


def _recipe(cfg: PeftConfig):
    """The training recipe the adapter trains in: sft's (or a task head's) for --objective sft, else pretrain's."""
    if cfg.objective != "sft":
        from llmkit.training.pretrain import train_pretrain

        return train_pretrain
    if cfg.task != "chat":
        from llmkit.training.tasks import train_task

        return train_task
    from llmkit.training.sft import train_sft

    return train_sft


def adapter_info(cfg: PeftConfig, plan: AdapterPlan) -> dict[str, Any]:
    """adapter/llmkit_adapter.json: read by `llmkit merge` (which base, which quantization it was trained on)."""
    # task: the transformers Auto class family of the base (causal-lm, seq-cls, ...), as llmkit.modeling names it
    return {"method": cfg.method, "base_model": cfg.model, "objective": cfg.objective, "task": cfg.model_task,
            "quant": None if cfg.quant == "none" else cfg.quant, "double_quant": cfg.double_quant,
            "blocksize": 64, "compute_dtype": {"float32": "fp32", "bfloat16": "bf16", "float16": "fp16"}[
                _compute_dtype(cfg)] if cfg.quant != "none" else None}


def _dir_bytes(path: str | None) -> int | None:
    if not path or not os.path.isdir(path):
        return None
    return sum(f.stat().st_size for f in Path(path).glob("adapter_model.*"))


def _peft_result(cfg: PeftConfig, plan: AdapterPlan, training) -> PeftResult:
    trainable = sum(r.parameters for r in plan.table if r.trainable)
    total = sum(r.parameters for r in plan.table)
    return PeftResult(
        **{**training.shared(), "parameters": total, "trainable_parameters": trainable,
           "warnings": list(training.warnings)},
        method=cfg.method, objective=cfg.objective, task=cfg.task, base_model=cfg.model,
        adapter_dir=training.model_dir, adapter_bytes=_dir_bytes(training.model_dir), base_bytes=plan.base_bytes,
        quant=cfg.quant, targets=plan.targets, feedforward=plan.feedforward,
        trainable_share=round(trainable / max(total, 1), 8), parameter_table=plan.table, training=training)
