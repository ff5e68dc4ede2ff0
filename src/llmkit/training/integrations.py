"""The Trainer integrations llmkit passes through: DeepSpeed (--deepspeed) and the trackers of --report-to
(TensorBoard here; W&B and MLflow in llmkit.training.tracking), plus the memory-estimate forecast printed before
training.

The checks here run before any work (no model, no data, no run directory) and stay light: no torch import.

DeepSpeed in one process: DeepSpeed always initialises torch.distributed. A launcher (`deepspeed`, `torchrun`,
`accelerate launch`) sets RANK/LOCAL_RANK/WORLD_SIZE/MASTER_ADDR/MASTER_PORT; a plain `llmkit pretrain --deepspeed`
has none of them, and DeepSpeed would then try MPI discovery (and fail without mpi4py). So when none of RANK,
LOCAL_RANK and WORLD_SIZE is set and torch.distributed is not initialised, llmkit sets a one-process world for the
rest of the process: RANK=0, LOCAL_RANK=0, WORLD_SIZE=1, MASTER_ADDR=127.0.0.1 (unless set) and MASTER_PORT (a free
port, unless set). Anything a launcher set is left alone.
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.util
import json
import os
from pathlib import Path
from typing import Any

from llmkit.config import report_targets
from llmkit.errors import ConfigError
from llmkit.runtime import free_port

ZERO_STAGES = (0, 1, 2, 3)
TENSORBOARD_DIR = "tensorboard"


# --------------------------------------------------------------------------------------------------- DeepSpeed

def load_deepspeed_config(path_text: str) -> dict[str, Any]:
    """Read and check a --deepspeed JSON: a file, a JSON object, a known ZeRO stage, a whole model at the end.

    Raises ConfigError (exit 2) for each problem, before any work is done.
    """
    path = Path(path_text).expanduser()
    if not path.is_file():
        raise ConfigError(f"--deepspeed {path}: no such file", hint="give a DeepSpeed JSON config")
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"--deepspeed {path} is not valid JSON: {exc}", hint="fix the file") from None
    except OSError as exc:
        raise ConfigError(f"--deepspeed {path}: cannot read it: {exc}") from None
    if not isinstance(config, dict):
        raise ConfigError(f"--deepspeed {path} must hold a JSON object, not a {type(config).__name__}",
                          hint='e.g. {"zero_optimization": {"stage": 2}, "train_micro_batch_size_per_gpu": "auto"}')
    zero = config.get("zero_optimization", {})
    if not isinstance(zero, dict):
        raise ConfigError(f"--deepspeed {path}: zero_optimization must be an object",
                          hint='e.g. "zero_optimization": {"stage": 2}')
    stage = zero.get("stage", 0)
    if isinstance(stage, bool) or stage not in ZERO_STAGES:
        raise ConfigError(f"--deepspeed {path}: zero_optimization.stage {stage!r} is not a ZeRO stage",
                          hint="use 0, 1, 2 or 3")
    if stage == 3 and zero.get("stage3_gather_16bit_weights_on_model_save") is not True:
        raise ConfigError(f"--deepspeed {path}: ZeRO-3 partitions the weights, so the final model would not be whole",
                          hint='add "stage3_gather_16bit_weights_on_model_save": true to zero_optimization')
    if importlib.util.find_spec("deepspeed") is None:
        raise ConfigError("--deepspeed needs the deepspeed package, which is not installed",
                          hint="DS_BUILD_OPS=0 pip install --no-build-isolation deepspeed")
    return config


def zero_stage(config: dict[str, Any] | None) -> int:
    return int((config or {}).get("zero_optimization", {}).get("stage", 0)) if config else 0


def zero_offload(config: dict[str, Any] | None) -> str:
    """memory-estimate's --offload for a DeepSpeed config: none | optimizer | optimizer+params."""
    zero = (config or {}).get("zero_optimization", {})

    def on_cpu(key: str) -> bool:
        part = zero.get(key)
        return isinstance(part, dict) and part.get("device") in ("cpu", "nvme")

    if on_cpu("offload_param"):
        return "optimizer+params"
    return "optimizer" if on_cpu("offload_optimizer") else "none"


def ensure_single_process_env() -> str | None:
    """Set a one-process torch.distributed world when no launcher did (see the module docstring).

    Returns a line saying what was set, or None when a launcher's (or an earlier run's) settings are in place.
    """
    if any(os.environ.get(k) for k in ("RANK", "LOCAL_RANK", "WORLD_SIZE")):
        return None
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return None
    os.environ.update(RANK="0", LOCAL_RANK="0", WORLD_SIZE="1")
    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    if not os.environ.get("MASTER_PORT"):
        os.environ["MASTER_PORT"] = str(free_port())
    return (f"DeepSpeed without a launcher: running as a one-process world (RANK=0 WORLD_SIZE=1, "
            f"{os.environ['MASTER_ADDR']}:{os.environ['MASTER_PORT']}); use `deepspeed` or `accelerate launch` "
            f"for more processes")


def is_main_process() -> bool:
    """True in the process that owns the run directory and prints the result: RANK 0 under a launcher (`llmkit
    launch`, accelerate, torchrun, deepspeed), or the only process without one. Every rank runs the whole training
    command; the other ranks train and join the collectives, but write no run-dir file and print nothing."""
    return int(os.environ.get("RANK") or 0) == 0


# -------------------------------------------------------------------------------------------- --report-to

def check_report_to(report_to: str) -> None:
    """Every tracker --report-to names must be importable: tensorboard needs a SummaryWriter (tensorboard, which
    torch.utils.tensorboard uses, or tensorboardX); wandb and mlflow their packages."""
    for target in report_targets(report_to):
        if target == "tensorboard":
            if importlib.util.find_spec("tensorboard") is None and importlib.util.find_spec("tensorboardX") is None:
                raise ConfigError("--report-to tensorboard needs the tensorboard package, which is not installed",
                                  hint="pip install tensorboard (or tensorboardX), or use --report-to none; the "
                                       "same numbers are in metrics.jsonl")
            continue
        try:
            importlib.import_module(target)   # not find_spec: a package that is present but fails to import counts
        except ImportError:
            raise ConfigError(f"--report-to {target} needs the {target} package, which is not installed",
                              hint="pip install 'llmkit[tracking]', or use --report-to none; the same numbers are in "
                                   "metrics.jsonl") from None


@contextlib.contextmanager
def environment_variable(name: str, value: str):
    """NAME=VALUE while the block runs, then as before: a library setting read once, not left for the process."""
    before = os.environ.get(name)
    os.environ[name] = value
    try:
        yield
    finally:
        if before is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = before


def tensorboard_callback(run_dir: Path):
    """transformers' TensorBoardCallback writing its event files to RUN_DIR/tensorboard (not under checkpoints/)."""
    from transformers.integrations import TensorBoardCallback

    # the callback's documented way to choose the dir
    with environment_variable("TENSORBOARD_LOGGING_DIR", str(run_dir / TENSORBOARD_DIR)):
        return TensorBoardCallback()


# ----------------------------------------------------------------------------------------------- memory estimate

def memory_forecast(cfg, model, ds_config: dict[str, Any] | None, on_gpu: bool):
    """memory-estimate for this run: its config through the one translation `llmkit launch` and the plans use, with
    the adapter, quantization and weight dtype read off the built model, and the ZeRO stage of its DeepSpeed config.

    Returns (estimate, spec). Raises LlmkitError when llmkit.modelspec cannot size the architecture.
    """
    from llmkit import translate
    from llmkit.memory import estimate
    from llmkit.modelspec import from_config_dict

    spec = from_config_dict(model.config.to_dict(), name=str(cfg.model), source="config")
    attention = getattr(model.config, "_attn_implementation", None)
    mem_cfg = translate.memory_config(
        cfg, zero=zero_stage(ds_config), offload=zero_offload(ds_config),
        gpus=int(os.environ.get("WORLD_SIZE") or 1), overhead=None if on_gpu else "0",
        attention="flash" if str(attention).startswith("flash") else "eager" if attention == "eager" else "sdpa",
        adapter=adapter_memory_fields(model), precision=_precision(model), device="cuda" if on_gpu else "cpu")
    return estimate(mem_cfg, spec=spec), spec


PEFT_METHODS = {"LORA": "lora", "IA3": "ia3", "PROMPT_TUNING": "prompt-tuning", "P_TUNING": "p-tuning",
                "PREFIX_TUNING": "prefix-tuning"}


def adapter_memory_fields(model) -> dict[str, Any]:
    """memory-estimate's --peft/--quant flags read off a model: the peft adapter it carries (method, rank and the
    module names it wraps, or virtual tokens) and how bitsandbytes quantized its base."""
    fields: dict[str, Any] = {}
    peft_config = getattr(model, "peft_config", None)
    if peft_config:
        config = peft_config[getattr(model, "active_adapter", "default")]
        method = PEFT_METHODS.get(str(getattr(config.peft_type, "value", config.peft_type)))
        if method is not None:
            fields["peft"] = method
            if method == "lora":
                fields["lora_rank"] = int(config.r)
                fields["lora_targets"] = tuple(sorted(wrapped_module_names(model, "lora_A")))
            elif method != "ia3":
                fields["num_virtual_tokens"] = int(config.num_virtual_tokens)
    quantization = getattr(model.config, "quantization_config", None)
    if quantization is not None:
        q = quantization if isinstance(quantization, dict) else quantization.to_dict()
        if q.get("load_in_4bit"):
            fields["quant"] = q.get("bnb_4bit_quant_type", "nf4")
            fields["double_quant"] = bool(q.get("bnb_4bit_use_double_quant"))
        elif q.get("load_in_8bit"):
            fields["quant"] = "int8"
    return fields


def wrapped_module_names(model, marker: str) -> set[str]:
    """The short names (q_proj, c_attn, ...) of the modules that carry a peft layer's `marker` parameter."""
    names = set()
    for name, _ in model.named_parameters():
        parts = name.split(".")
        if marker in parts:
            names.add(parts[parts.index(marker) - 1])
    return names


def _precision(model) -> str:
    """The dtype the model's (unquantized) weights are stored in, as memory-estimate names it."""
    import torch

    return {torch.bfloat16: "bf16", torch.float16: "fp16"}.get(model.dtype, "fp32")
