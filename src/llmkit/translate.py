"""Every mapping between llmkit's commands, in one place.

- a training run (pretrain / sft / peft config, plus how it is distributed) -> the memory-estimate config that sizes
  it: used by the forecast a training run prints, by `llmkit launch`, and by the plans;
- a memory-estimate plan -> the real command lines that carry it out (`llmkit launch ... -- llmkit peft ...`);
- launch's strategies <-> DeepSpeed ZeRO stage and offload.

Light: no torch. A training command line is resolved into its config by the CLI layer (the command's own parser and
resolver, `llmkit.commands._runtime.resolve_command_line`); this module only maps configs.
"""

from __future__ import annotations

import dataclasses
import shlex
from typing import Any

from llmkit.config import STRATEGY_ZERO, OptimArgs

ZERO_STRATEGY = {zero: name for name, zero in STRATEGY_ZERO.items() if name != "fsdp"}

# memory-estimate's task for a training task: token-cls and extractive-qa heads are a linear layer on the hidden
# states, sized like seq-cls's (a few labels), not like a vocabulary head
_MEMORY_TASK = {"token-cls": "seq-cls", "extractive-qa": "seq-cls"}

# what memory-estimate assumes when a LoRA run names no targets: the query and value projections, which is peft's
# default for every architecture llmkit sizes (fused q/k/v layers count as one, as peft wraps them)
DEFAULT_LORA_TARGETS = ("q_proj", "v_proj")


def memory_config(run_cfg, *, zero: int = 0, offload: str = "none", gpus: int = 1, nodes: int = 1,
                  gpu_memory: str | None = None, overhead: str | None = None, mixed_precision: str | None = None,
                  attention: str = "sdpa", adapter: dict[str, Any] | None = None, precision: str | None = None,
                  device: str = "cuda", strategy: str | None = None):
    """The MemoryEstimateConfig of a training run.

    `strategy` is launch's --strategy when it is to be sized as such (fsdp: PyTorch FSDP rather than ZeRO-3).

    `device` is where the run computes (cuda, or cpu for a run without a GPU): CUDA and CPU autocast save different
    tensors, so the forecast of a CPU run uses the CPU rules.

    `run_cfg` is a PretrainConfig, SFTConfig or PeftConfig. The adapter and precision come from the config
    (`llmkit peft`'s method, rank, targets, quantization, base dtype) unless the caller read them off the built
    model (`adapter`: memory-estimate fields such as peft/lora_rank/lora_targets/quant; `precision`: the dtype the
    weights are stored in) -- the training forecast does, and a test checks that both ways give the same figures.
    """
    from llmkit.config import MemoryEstimateConfig

    adapter_fields = adapter_fields_of(run_cfg) if adapter is None else dict(adapter)
    stored = precision or stored_precision(run_cfg)
    mixed = mixed_precision or run_cfg.mixed_precision
    if stored != "fp32" and mixed != "no":
        # a frozen half-precision base under autocast: the compute is in that dtype already; memory-estimate's
        # autocast models fp32 master weights, which a frozen base does not have
        mixed = "no"
    return MemoryEstimateConfig(
        model=str(run_cfg.model), mode="train", task=_MEMORY_TASK.get(run_cfg.model_task, run_cfg.model_task),
        precision=stored, mixed_precision=mixed, optimizer=run_cfg.optimizer, freeze_base=run_cfg.freeze_base,
        trainable_layers=run_cfg.trainable_layers, batch_size=run_cfg.batch_size, seq_len=run_cfg.seq_len,
        grad_accum=run_cfg.grad_accum, grad_checkpointing=run_cfg.grad_checkpointing, attention=attention,
        zero=zero, offload=offload, strategy=strategy, gpus=max(gpus, 1), nodes=max(nodes, 1), gpu_memory=gpu_memory,
        overhead=overhead, device=device, **adapter_fields)


def adapter_fields_of(run_cfg) -> dict[str, Any]:
    """memory-estimate's --peft/--lora-*/--quant fields for a `llmkit peft` config ({} for full training)."""
    method = getattr(run_cfg, "method", None)
    if method is None:
        return {}
    fields: dict[str, Any] = {"peft": method}
    if method == "lora":
        fields["lora_rank"] = run_cfg.lora_rank
        fields["lora_targets"] = tuple(run_cfg.lora_targets) or DEFAULT_LORA_TARGETS
    elif method != "ia3":
        fields["num_virtual_tokens"] = run_cfg.num_virtual_tokens
    if run_cfg.quant != "none":
        fields["quant"] = run_cfg.quant
        fields["double_quant"] = run_cfg.double_quant
    return fields


def stored_precision(run_cfg) -> str:
    """The dtype a run's weights are stored in. Full training: fp32 (autocast computes in bf16/fp16 over it). peft:
    --base-dtype; a quantized base (QLoRA) keeps what bitsandbytes leaves alone in fp32 (peft's k-bit preparation
    upcasts the embeddings, norms and head)."""
    if getattr(run_cfg, "quant", "none") != "none":
        return "fp32"
    return getattr(run_cfg, "base_dtype", "fp32")


def strategy_for(zero: int, offload: str) -> str:
    """launch's --strategy for a ZeRO stage and memory-estimate offload."""
    try:
        return ZERO_STRATEGY[(zero, offload)]
    except KeyError:
        from llmkit.errors import ConfigError

        raise ConfigError(f"no launch strategy runs ZeRO-{zero} with offload {offload}",
                          hint="launch offers ddp, zero1, zero2, zero3, zero2-offload and zero3-offload") from None


# ------------------------------------------------------------------------------------- plans -> command lines

def training_argv(mem_cfg, model: str, task: str) -> list[str]:
    """The llmkit training command that runs memory-estimate config `mem_cfg` (whose model's task is `task`):
    `llmkit peft` for adapters (QLoRA included), `llmkit sft` for full fine-tuning of a causal LM or a classifier,
    `llmkit pretrain` for masked-LM and seq2seq objectives. DATA and OUT are placeholders for the user's data and
    run directory."""
    if mem_cfg.peft != "none":
        argv = ["llmkit", "peft", "--method", mem_cfg.peft]
        if task in ("masked-lm", "seq2seq"):
            argv += ["--objective", task]
        elif task == "seq-cls":
            argv += ["--task", "seq-cls"]
    elif task in ("masked-lm", "seq2seq"):
        argv = ["llmkit", "pretrain", "--objective", task]
    else:
        argv = ["llmkit", "sft"] + (["--task", "seq-cls"] if task == "seq-cls" else [])
    argv += ["--model", model, "--data", "DATA", "-o", "OUT", "--batch-size", str(mem_cfg.batch_size),
             "--grad-accum", str(mem_cfg.grad_accum), "--seq-len", str(mem_cfg.seq_len)]
    if mem_cfg.grad_checkpointing:
        argv.append("--grad-checkpointing")
    if mem_cfg.mixed_precision != "no":
        argv += ["--mixed-precision", mem_cfg.mixed_precision]
    if mem_cfg.optimizer != OptimArgs.optimizer:   # the training default
        argv += ["--optimizer", mem_cfg.optimizer]
    if mem_cfg.peft == "lora":
        argv += ["--lora-rank", str(mem_cfg.lora_rank)]
        if tuple(mem_cfg.lora_targets) != DEFAULT_LORA_TARGETS:
            argv += ["--lora-targets", ",".join(mem_cfg.lora_targets)]
    elif mem_cfg.peft in ("prompt-tuning", "p-tuning", "prefix-tuning"):
        argv += ["--num-virtual-tokens", str(mem_cfg.num_virtual_tokens)]
    if mem_cfg.quant != "none":
        argv += ["--quant", mem_cfg.quant] + (["--double-quant"] if mem_cfg.double_quant else [])
    elif mem_cfg.peft != "none" and mem_cfg.effective_precision != "fp32":
        argv += ["--base-dtype", mem_cfg.effective_precision]
    if mem_cfg.freeze_base:
        argv.append("--freeze-base")
    if mem_cfg.trainable_layers is not None:
        argv += ["--trainable-layers", str(mem_cfg.trainable_layers)]
    return argv


_GENERATE_QUANT_FLAGS = {"none": [], "int8": ["--load-in-8bit"], "nf4": ["--load-in-4bit"]}


def inference_argv(mem_cfg, model: str) -> list[str]:
    """The `llmkit generate` batch run of an inference memory-estimate config: --max-length bounds the KV cache
    (prompt included), DATA and OUT are the prompts' JSONL and the results' file."""
    return (["llmkit", "generate", "--model", model, "--input", "DATA", "--output", "OUT", "--batch-size",
             str(mem_cfg.batch_size), "--max-length", str(mem_cfg.seq_len), "--dtype", mem_cfg.effective_precision]
            + _GENERATE_QUANT_FLAGS[mem_cfg.quant])


def plan_argv(mem_cfg, model: str, task: str) -> list[str]:
    """The whole command line of a plan: the training command alone on one GPU without ZeRO, else under
    `llmkit launch` with the strategy and process count the plan assumes; `llmkit generate` for inference."""
    if mem_cfg.mode == "inference":
        return inference_argv(mem_cfg, model)
    train = training_argv(mem_cfg, model, task)
    if mem_cfg.gpus * mem_cfg.nodes == 1 and mem_cfg.zero == 0:
        return train
    strategy = "fsdp" if mem_cfg.uses_fsdp else strategy_for(mem_cfg.zero, mem_cfg.offload)
    launch = ["llmkit", "launch", "--strategy", strategy,
              "--num-processes", str(mem_cfg.gpus)]
    if mem_cfg.nodes > 1:
        launch += ["--nodes", str(mem_cfg.nodes), "--main-ip", "MAIN_IP"]
    return launch + ["--"] + train


def with_plan_commands(estimate):
    """The estimate with every plan's command line filled in, and the training command's own flags (those after
    `llmkit pretrain|sft|peft`). A plan for --params names MODEL: a size, not a checkpoint, so the user puts theirs."""
    if not estimate.plans:
        return estimate
    plans = []
    for plan in estimate.plans:
        argv = plan_argv(plan.config, plan.config.model or "MODEL", plan.task)
        training = argv[argv.index("--") + 1:] if "--" in argv else argv
        plans.append(dataclasses.replace(plan, argv=argv, command=shlex.join(argv), training_flags=training[2:]))
    return dataclasses.replace(estimate, plans=plans)
