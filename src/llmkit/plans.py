"""The plan search behind `llmkit memory-estimate --plan` and `--fit`: configurations that fit a memory budget.

Light: no torch. Imported only when --plan or --fit is given (memory-estimate's start-up stays that of the arithmetic).
"""

from __future__ import annotations

import dataclasses
import itertools
from dataclasses import dataclass, field
from typing import Any

from llmkit.config import STRATEGY_ZERO
from llmkit.errors import ConfigError, LlmkitError
from llmkit.memory import HF_OPTIMIZERS, Estimate, estimate
from llmkit.modelspec import ModelSpec, ParamGroup
from llmkit.translate import DEFAULT_LORA_TARGETS


@dataclass(frozen=True)
class Plan:
    """One configuration that fits, with what it changes and what it costs."""

    rank: int
    changes: list[str]
    changes_what_is_trained: bool
    relative_step_time: float          # estimated time per optimizer step / the original configuration's
    gpu_seconds_factor: float          # relative_step_time * (gpus used / gpus asked for)
    per_device_total: int
    cpu_ram: int
    host_ram: dict[str, int]           # bytes of host RAM: load, offload, total (what the estimate counts)
    flags: list[str]                   # memory-estimate flags that reproduce it (besides --model/--params)
    hf_training_arguments: dict[str, Any]
    task: str = ""                     # the model's task in this configuration (what the training command trains)
    config: Any = None                 # the memory-estimate config of this plan (not serialised)
    training_flags: list[str] = field(default_factory=list)   # the training command's flags (llmkit.translate)
    command: str = ""                  # the command line that runs it (DATA, OUT: your data and run dir)
    argv: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out.pop("config")
        return out




# --------------------------------------------------------------------------------------------------------------
# Plan search
#
# Cost model (relative time per token at the same global batch; 1.0 = the configuration asked for):
#   compute  = 6 * params * tokens, or 4 * params * tokens when only adapters/a few blocks train (no weight
#              gradients for frozen matrices), * 4/3 with gradient checkpointing (one more forward),
#              * 1.3 on a 4-bit or 8-bit base (dequantisation), * 0.5 with 16-bit autocast over fp32;
#              micro-batches under 4,096 tokens lose efficiency: * (4096 / tokens) ** 0.15
#   optimizer = 16 bytes * trainable params read and written at 1.5 TB/s; on CPU (offload) 1 ns per parameter
#   offload  = gradients down and weights up over PCIe at 20 GB/s; parameter offload moves the weights twice more
#              per micro-step
#   network  = communication_bytes_per_step at 100 GB/s inside a node, 12.5 GB/s between nodes
#   inference: decoding reads the weights and the KV cache once per token for the whole batch, at 1.5 TB/s
#              (* 1.3 on a quantized base)
# The GPU's compute rate is taken as 100 TFLOP/s (16-bit) at 40 % utilisation. Plans are ranked first by whether
# they change what is trained (LoRA, QLoRA, freezing, shorter sequences change the result; micro-batching,
# checkpointing, mixed precision, 8-bit/Adafactor optimizers, ZeRO, offload and more GPUs keep it), then by
# GPU-seconds per step (relative step time × GPUs used / GPUs asked for). Plans on the GPUs asked for come
# before plans that need more GPUs; the best plan of each kind is always listed.

_GPU_FLOPS = 100e12 * 0.4
_GPU_BANDWIDTH = 1.5e12
_PCIE = 20e9
_NVLINK = 100e9
_INTERNODE = 12.5e9


def step_seconds(cfg: Any, spec: ModelSpec, est: Estimate) -> float:
    """The cost model above, in seconds per optimizer step (a ranking device, not a benchmark); for inference, the
    seconds to decode seq_len tokens per sequence of the batch."""
    if cfg.mode == "inference":
        read_per_token = (est.per_device["weights"] + est.per_device["activations"]) / _GPU_BANDWIDTH
        return cfg.seq_len * read_per_token / cfg.batch_size * (1.3 if cfg.quant != "none" else 1)
    tokens = cfg.batch_size * cfg.grad_accum * cfg.seq_len   # per GPU
    trains_all = cfg.peft == "none" and not cfg.freeze_base and cfg.trainable_layers is None
    flops = (6 if trains_all else 4) * est.params_total * tokens
    if cfg.grad_checkpointing:
        flops *= 4 / 3
    if cfg.quant != "none":
        flops *= 1.3
    if cfg.mixed_precision != "no" or cfg.effective_precision != "fp32":
        rate = _GPU_FLOPS
    else:
        rate = _GPU_FLOPS / 2
    micro_tokens = cfg.batch_size * cfg.seq_len
    efficiency = min(1.0, (micro_tokens / 4096) ** 0.15)
    seconds = flops / (rate * efficiency)
    trainable = est.params_trainable
    if cfg.offload in ("optimizer", "optimizer+params"):
        seconds += trainable / (cfg.gpus * cfg.nodes) * 1e-9 + 4 * trainable / _PCIE
    else:
        seconds += 16 * trainable / (cfg.gpus * cfg.nodes if cfg.zero else 1) / _GPU_BANDWIDTH
    if cfg.offload == "optimizer+params":
        seconds += cfg.grad_accum * 4 * est.params_total / cfg.gpus / cfg.nodes / _PCIE
    link = _INTERNODE if cfg.nodes > 1 else _NVLINK
    seconds += est.communication_bytes_per_step / link
    return seconds


# What a plan may change, and how much that changes the run: 0 keeps what is trained (micro-batching, checkpointing,
# precision, optimizer, ZeRO, offload, GPUs), 1 trains something else (adapters instead of the whole model, a 4-bit
# base, other LoRA targets), 2 trains on shorter sequences. Plans are listed by that level first, then by cost.
_LEVEL = {"peft": 1, "targets": 1, "seq_len": 2}


def _levers(before: Any, after: Any) -> frozenset[str]:
    """The levers `after` moves relative to `before` (the set a plan is compared by: fewer is simpler)."""
    moved = {"batch": after.batch_size != before.batch_size,
             "checkpointing": after.grad_checkpointing != before.grad_checkpointing,
             "precision": (after.mixed_precision, after.effective_precision)
                          != (before.mixed_precision, before.effective_precision) and after.quant == "none",
             "optimizer": after.optimizer != before.optimizer,
             "peft": (after.peft, after.quant) != (before.peft, before.quant),
             "targets": after.peft == before.peft and tuple(after.lora_targets) != tuple(before.lora_targets),
             "gpus": after.gpus * after.nodes != before.gpus * before.nodes,
             "zero": (after.zero, after.offload, after.uses_fsdp) != (before.zero, before.offload, before.uses_fsdp)
                     and not after.uses_fsdp,
             "fsdp": after.uses_fsdp and not before.uses_fsdp,
             "seq_len": after.seq_len != before.seq_len}
    return frozenset(name for name, changed in moved.items() if changed)


def _training_candidates(cfg: Any):
    """Every configuration to try, largest micro-batch first within each group (the first that fits is the
    cheapest of its group). The global batch (micro-batch × accumulation × GPUs) stays the one asked for."""
    global_batch = cfg.batch_size * cfg.grad_accum * cfg.gpus * cfg.nodes
    # (peft, quant, double quant, lora targets): as asked; LoRA on all linear layers (full training); QLoRA
    adapters = [(cfg.peft, cfg.quant, cfg.double_quant, tuple(cfg.lora_targets))]
    if cfg.peft == "none" and not cfg.freeze_base:
        adapters += [("lora", "none", False, ("all-linear",)), ("lora", "nf4", True, ("all-linear",))]
    elif cfg.peft == "lora" and cfg.quant == "none":
        adapters.append(("lora", "nf4", True, tuple(cfg.lora_targets)))
    if cfg.peft == "lora" and tuple(cfg.lora_targets) != DEFAULT_LORA_TARGETS:
        adapters.append(("lora", cfg.quant, cfg.double_quant, DEFAULT_LORA_TARGETS))
    optimizers = [cfg.optimizer]
    if cfg.optimizer in ("adamw", "adamw-fused"):
        optimizers += ["adamw-8bit", "paged-adamw-8bit", "adafactor"]
    worlds = [(cfg.gpus, cfg.nodes)] + [(cfg.gpus * k, cfg.nodes) for k in (2, 4, 8) if cfg.gpus * k <= 8]
    seqs = [cfg.seq_len] + ([cfg.seq_len // 2] if cfg.seq_len >= 256 else [])
    for peft, quant, double_quant, targets in adapters:
        # (precision, mixed precision): as asked; bf16 autocast over fp32 weights; a bf16 base under adapters (the
        # usual LoRA recipe). A 4-bit base keeps its other parts in fp32 (peft's k-bit preparation does that)
        mixes = {(cfg.precision, cfg.mixed_precision)}
        if cfg.mixed_precision == "no" and cfg.effective_precision == "fp32":
            mixes.add(("fp32", "bf16"))
            if peft != "none":
                mixes.add(("bf16", "no"))
        if quant != "none":
            mixes = {("fp32", mixed) for _, mixed in mixes}
        for (precision, mixed), checkpointing, optimizer, (gpus, nodes), seq in itertools.product(
                sorted(mixes, key=str), sorted({cfg.grad_checkpointing, True}), optimizers, worlds, seqs):
            world = gpus * nodes
            if global_batch % world:
                continue
            for zero, offload, strategy in _sharding(cfg, quant, optimizer, world):
                group = []
                for micro in _divisors_descending(global_batch // world):
                    group.append(dataclasses.replace(
                        cfg, batch_size=micro, grad_accum=global_batch // world // micro, seq_len=seq,
                        grad_checkpointing=checkpointing, precision=precision, mixed_precision=mixed,
                        optimizer=optimizer, peft=peft, quant=quant, double_quant=double_quant, lora_targets=targets,
                        gpus=gpus, nodes=nodes, zero=zero, offload=offload, plan=False, explain=False,
                        strategy=strategy))
                yield group


def _sharding(cfg: Any, quant: str, optimizer: str, world: int):
    """The (ZeRO stage, offload, memory-estimate strategy) triples worth trying that `llmkit launch` runs and
    DeepSpeed/FSDP/bitsandbytes accept: DeepSpeed's as (stage, offload, None), FSDP as (3, "none", "fsdp")."""
    if world > 1 and quant == "none" and cfg.device == "cuda":
        # launch refuses FSDP with a quantized base and on CPUs; on one GPU it shards nothing
        yield (*STRATEGY_ZERO["fsdp"], "fsdp")
    for zero, offload in sorted({z for name, z in STRATEGY_ZERO.items() if name != "fsdp"} | {(cfg.zero, cfg.offload)}):
        if world > 1 and zero == 0:
            continue   # plain DDP holds everything on every GPU: more GPUs would not need less memory each
        if world == 1 and zero > 0 and offload == "none":
            continue   # ZeRO on one GPU partitions nothing
        if quant != "none" and zero == 3:
            continue   # see MemoryEstimateConfig: llmkit's QLoRA cannot be partitioned by ZeRO-3 (yet)
        if offload != "none" and optimizer in ("adamw-8bit", "paged-adamw-8bit"):
            # offloaded states live in host RAM, where 8-bit states save no GPU memory; and DeepSpeed refuses
            # any optimizer but its own CPU Adam/Lion under offload unless zero_force_ds_cpu_optimizer is false
            continue
        yield zero, offload, None


def _divisors_descending(n: int) -> list[int]:
    return [d for d in range(n, 0, -1) if n % d == 0]


def _inference_candidates(cfg: Any):
    """Inference: the weights' dtype, 8-bit and 4-bit bitsandbytes weights, a smaller batch, a shorter KV cache
    (what `llmkit generate` can change; it runs on one device, so GPUs are not a lever)."""
    precisions = [cfg.effective_precision] + (["bf16"] if cfg.effective_precision == "fp32" else [])
    loadable = ("none", "int8", "nf4")   # what `llmkit generate` loads: --load-in-8bit, --load-in-4bit (NF4)
    quants = loadable[loadable.index(cfg.quant):] if cfg.quant in loadable else []
    seqs = [cfg.seq_len] + ([cfg.seq_len // 2] if cfg.seq_len >= 256 else [])
    for precision, quant, seq in itertools.product(precisions, quants, seqs):
        yield [dataclasses.replace(cfg, batch_size=b, precision=precision, quant=quant, seq_len=seq,
                                   double_quant=False, plan=False, explain=False)
               for b in _divisors_descending(cfg.batch_size)]


def search_plans(cfg: Any, spec: ModelSpec, current: Estimate, limit: int = 5) -> list[Plan]:
    """The cheapest few configurations that fit --gpu-memory (empty when the current one fits).

    Among the configurations that fit, one that moves a superset of another's levers and costs no less is dropped
    (offloading the optimizer of a LoRA run that fits without it, say); so is one on more GPUs that needs no less
    memory per GPU than on the GPUs asked for."""
    budget = cfg.gpu_memory_bytes
    if budget is None or current.fits:
        return []
    base_time = step_seconds(cfg, spec, current)
    groups_cache: dict[str, list[ParamGroup]] = {}
    candidates = _training_candidates(cfg) if cfg.mode == "train" else _inference_candidates(cfg)
    found: dict[frozenset, tuple] = {}
    for group in candidates:
        for candidate in group:
            try:
                est = estimate(candidate, spec, groups_cache=groups_cache, light=True)
            except ConfigError:
                break
            if not est.fits:
                continue
            if candidate.gpus * candidate.nodes > cfg.gpus * cfg.nodes and _fits_on_the_gpus_asked_for(
                    cfg, candidate, spec, groups_cache):
                break
            # per token, so that shorter sequences do not look cheaper for doing less work
            relative = (step_seconds(candidate, spec, est) / candidate.seq_len) / (base_time / cfg.seq_len)
            used = candidate.gpus * candidate.nodes / (cfg.gpus * cfg.nodes)
            levers = _levers(cfg, candidate)
            if levers not in found or relative * used < found[levers][2] * found[levers][3]:
                found[levers] = (candidate, est, relative, used)
            break
    kept = [(levers, value) for levers, value in found.items()
            if not any(other < levers and o[2] * o[3] <= value[2] * value[3] for other, o in found.items())]

    def order(item):
        levers, (candidate, _, relative, used) = item
        more_gpus = candidate.gpus * candidate.nodes > cfg.gpus * cfg.nodes
        level = max((_LEVEL.get(lever, 0) for lever in levers), default=0)
        # offloading is slow and needs host RAM: after whatever fits on the GPU without it, but before shorter
        # sequences
        return more_gpus, level == 2, candidate.offload != "none", level, relative * used

    kept.sort(key=order)
    # the best plan of each kind (GPUs asked for or more, level) first, then the next cheapest
    firsts = {order(item)[:4]: item for item in reversed(kept)}
    picked = []
    for item in sorted(firsts.values(), key=order) + kept:
        if item not in picked:
            picked.append(item)
    picked = sorted(picked[:limit], key=order)
    return [_plan(rank, cfg, spec, candidate, est, relative, used)
            for rank, (_, (candidate, est, relative, used)) in enumerate(picked, 1)]


_FIT_FIELDS = {"batch": "batch_size", "seq-len": "seq_len"}
_FIT_LIMIT = 1 << 20   # the search stops here: a budget this roomy is not what --fit is for


def largest_fit(cfg: Any, spec: ModelSpec) -> dict[str, Any]:
    """--fit: the largest micro-batch or sequence length that fits --gpu-memory, everything else as given
    (memory grows with both, so a doubling then a bisection finds it). LlmkitError (exit 1) when 1 does not fit."""
    name = _FIT_FIELDS[cfg.fit]
    groups_cache: dict[str, list[ParamGroup]] = {}

    def at(value: int) -> Estimate:
        return estimate(dataclasses.replace(cfg, **{name: value}, plan=False, fit=None), spec,
                        groups_cache=groups_cache, light=True)

    smallest = at(1)
    if not smallest.fits:
        raise LlmkitError(f"--fit {cfg.fit}: even --{name.replace('_', '-')} 1 needs "
                          f"{smallest.per_device['total'] / 2**30:.2f} GiB per GPU, more than --gpu-memory "
                          f"{cfg.gpu_memory}",
                          hint="add --plan to see what else fits (checkpointing, precision, adapters, ZeRO, GPUs)")
    fitting, fitting_estimate, failing = 1, smallest, 2
    while failing <= _FIT_LIMIT and (trial := at(failing)).fits:
        fitting, fitting_estimate, failing = failing, trial, failing * 2
    failing = min(failing, _FIT_LIMIT + 1)
    while failing - fitting > 1:
        middle = (fitting + failing) // 2
        trial = at(middle)
        if trial.fits:
            fitting, fitting_estimate = middle, trial
        else:
            failing = middle
    return {"lever": cfg.fit.replace("-", "_"), "value": fitting,
            "per_device_total": fitting_estimate.per_device["total"], "limit_reached": fitting == _FIT_LIMIT}


def _fits_on_the_gpus_asked_for(cfg, candidate, spec, groups_cache) -> bool:
    """Whether `candidate`, a run on more GPUs, fits as well on the GPUs asked for (at the same global batch, without
    ZeRO where ZeRO would partition nothing there): then more GPUs buy speed, not memory, and are no plan."""
    alone = dataclasses.replace(
        candidate, gpus=cfg.gpus, nodes=cfg.nodes,
        grad_accum=candidate.grad_accum * candidate.gpus * candidate.nodes // (cfg.gpus * cfg.nodes))
    if cfg.gpus * cfg.nodes == 1 and alone.offload == "none":
        alone = dataclasses.replace(alone, zero=0)
    return bool(estimate(alone, spec, groups_cache=groups_cache, light=True).fits)


def _plan(rank: int, cfg: Any, spec: ModelSpec, candidate: Any, est: Estimate, relative: float, used: float) -> Plan:
    levers = _levers(cfg, candidate)
    return Plan(
        rank=rank, changes=_describe_changes(cfg, candidate),
        changes_what_is_trained=any(_LEVEL.get(lever, 0) for lever in levers),
        relative_step_time=round(relative, 3), gpu_seconds_factor=round(relative * used, 3),
        per_device_total=est.per_device["total"], cpu_ram=est.cpu_ram, host_ram=host_ram(est),
        flags=config_flags(candidate),
        hf_training_arguments=hf_training_arguments(candidate) if cfg.mode == "train" else {},
        task=candidate.task or spec.default_task, config=candidate)


def host_ram(est: Estimate) -> dict[str, int]:
    """Host RAM the run needs: the estimate's {"load", "offload", "total"} where it counts it, else the offload."""
    # host_ram_bytes is being added to Estimate alongside this module; until it lands, the offload is what is known
    counted = getattr(est, "host_ram_bytes", None)
    return dict(counted) if counted else {"offload": est.cpu_ram, "total": est.cpu_ram}


# flags that are not part of a plan's reproduction
_NOT_PLAN_FLAGS = ("params", "model", "gpu_memory", "plan", "fit", "explain")


def config_flags(cfg: Any) -> list[str]:
    """The memory-estimate flags (besides --model/--params/--gpu-memory) that rebuild `cfg` from the defaults."""
    defaults = type(cfg)(**{"params": "1B"})
    flags: list[str] = []
    for f in dataclasses.fields(cfg):
        if f.name in _NOT_PLAN_FLAGS or not f.init or (f.name in ("zero", "offload") and cfg.strategy):
            continue   # --strategy sets --zero and --offload
        value, default = getattr(cfg, f.name), getattr(defaults, f.name)
        if value == default:
            continue
        flag = "--" + f.name.replace("_", "-")
        if isinstance(value, bool):
            flags.append(flag if value else f"--no-{f.name.replace('_', '-')}")
        elif isinstance(value, tuple):
            flags += [flag, ",".join(value)]
        else:
            flags += [flag, str(value)]
    return flags


def hf_training_arguments(cfg: Any) -> dict[str, Any]:
    """transformers.TrainingArguments equivalents (with the DeepSpeed ZeRO settings they need)."""
    optim = HF_OPTIMIZERS[cfg.optimizer]
    out: dict[str, Any] = {"per_device_train_batch_size": cfg.batch_size,
                           "gradient_accumulation_steps": cfg.grad_accum,
                           "gradient_checkpointing": cfg.grad_checkpointing, "optim": optim,
                           "bf16": cfg.mixed_precision == "bf16", "fp16": cfg.mixed_precision == "fp16"}
    if cfg.uses_fsdp:
        # what `llmkit launch --strategy fsdp` writes into accelerate's fsdp_config, as TrainingArguments says it
        out["fsdp"] = "full_shard auto_wrap"
        out["fsdp_config"] = {"backward_prefetch": "backward_pre", "use_orig_params": True,
                              "sync_module_states": True}
    elif cfg.zero:
        zero: dict[str, Any] = {"stage": cfg.zero}
        if cfg.offload != "none":
            zero["offload_optimizer"] = {"device": "cpu", "pin_memory": True}
        if cfg.offload == "optimizer+params":
            zero["offload_param"] = {"device": "cpu", "pin_memory": True}
        out["deepspeed"] = {"zero_optimization": zero, "bf16": {"enabled": "auto"}, "fp16": {"enabled": "auto"},
                            "train_micro_batch_size_per_gpu": "auto", "gradient_accumulation_steps": "auto"}
    return out


def _describe_changes(before: Any, after: Any) -> list[str]:
    changes = []
    if after.mode == "inference":
        if after.batch_size != before.batch_size:
            changes.append(f"batch {after.batch_size}")
    elif (after.batch_size, after.grad_accum) != (before.batch_size, before.grad_accum):
        changes.append(f"micro-batch {after.batch_size} × accumulation {after.grad_accum}"
                       + (f" × {after.gpus * after.nodes} GPUs" if after.gpus * after.nodes > 1 else "")
                       + f" (same global batch {before.batch_size * before.grad_accum * before.gpus * before.nodes})")
    if after.grad_checkpointing and not before.grad_checkpointing:
        changes.append("gradient checkpointing")
    if after.mixed_precision != before.mixed_precision:
        changes.append(f"{after.mixed_precision} mixed precision")
    if after.effective_precision != before.effective_precision and after.quant == "none":
        changes.append(f"{after.effective_precision} weights")
    if after.optimizer != before.optimizer:
        changes.append(f"{after.optimizer} optimizer")
    if after.mode == "inference" and after.quant != before.quant:
        changes.append(f"bitsandbytes {after.quant} weights")
    elif after.peft != before.peft or after.quant != before.quant:
        if after.quant != "none" and after.peft == "lora":
            changes.append(f"QLoRA (rank {after.lora_rank}, {after.quant} base)")
        else:
            changes.append(f"{after.peft} (rank {after.lora_rank})" if after.peft == "lora" else after.peft)
    if after.peft == before.peft and tuple(after.lora_targets) != tuple(before.lora_targets):
        changes.append(f"LoRA on {','.join(after.lora_targets)}")
    if after.gpus != before.gpus or after.nodes != before.nodes:
        changes.append(f"{after.gpus * after.nodes} GPUs")
    if after.uses_fsdp and not before.uses_fsdp:
        changes.append("FSDP FULL_SHARD")
    elif after.zero != before.zero or before.uses_fsdp != after.uses_fsdp:
        changes.append(f"ZeRO-{after.zero}")
    if after.offload != before.offload:
        changes.append(f"offload {after.offload} to CPU")
    if after.seq_len != before.seq_len:
        changes.append(f"{'a KV cache' if after.mode == 'inference' else 'sequences'} of {after.seq_len} tokens")
    return changes or ["no change"]
