"""The memory model behind `llmkit memory-estimate`: pure arithmetic, no torch.

Everything is counted in bytes, per device (one GPU), at the moment of the peak:

* weights: each tensor in its storage dtype; bitsandbytes int8 (1 byte + an fp32 scale per output row) and
  NF4/FP4 (4 bits + an fp32 absmax per 64-value block = 4.5 bits; with double quantization 4.127 bits) apply only to
  the linear layers inside the blocks. Under autocast the 16-bit copies of the linear weights that the forward
  makes (and saves for backward) are counted here too, while they are alive.
* gradients and optimizer states: for the trainable tensors only (LoRA/IA3/prompt parameters counted from the
  architecture, rank and targets). AdamW keeps two states in the parameter's dtype; 8-bit AdamW keeps two uint8
  states plus an fp32 absmax per 256 values (tensors under 4,096 values stay 32-bit); Adafactor keeps a row and a
  column vector for matrices (a full fp32 vector for 1-D tensors); SGD nothing, SGD with momentum one buffer.
* activations: what autograd saves for backward, per block and per token, with coefficients counted from the
  tensors PyTorch saves in transformers' implementations (`torch.autograd.graph.saved_tensors_hooks`, see
  `_BLOCK_COEFFICIENTS`), plus the loss head (logits and the log-softmax, b*s*vocab terms) and the transient
  working set of the backward of one block. Gradient checkpointing keeps only each block's input, plus one block
  recomputed during its backward.
* phases: the peak is the larger of the forward/backward phase (walked block by block: activations are freed and
  gradients appear as backward proceeds) and the optimizer-step phase (all gradients + states + the optimizer's
  temporaries). Gradients from earlier micro-steps stay alive with --grad-accum > 1.
* ZeRO-1/2/3 divides optimizer states (+ fp32 master weights under 16-bit DeepSpeed), then gradients, then weights
  over gpus * nodes; offload moves them to CPU RAM.

* ZeRO-3 (as `llmkit launch` configures DeepSpeed, ZERO3_*): a gathered parameter stays on the GPU while its next
  use is within stage3_max_reuse_distance elements, which keeps the top half-billion elements of the model (all of
  a smaller model) gathered through the step, plus one prefetch bucket; the gradient reduce bucket is allocated at
  its full reduce_bucket_size whatever trains.
* host RAM (`host_ram_bytes`): loading (every process on a node loads its own copy; transformers reads the
  safetensors shards memory-mapped, the parameters alias the mapped file when the dtype is kept and are a converted
  copy next to it otherwise; a bitsandbytes base is quantized weight by weight on the GPU, so only the checkpoint is
  read through the host) and the ZeRO offload buffers; the two do not overlap (the loaded copy is moved to the GPU or
  partitioned before DeepSpeed allocates its offload buffers).

The overhead row is, on CUDA, the CUDA context (CUDA_CONTEXT_BYTES) plus what PyTorch's caching allocator reserves
beyond the tensors it hands out (ALLOCATOR_RESERVE of the tensor peak); on CPU it is 0 (tensors only). Neither has
been calibrated on a GPU yet (benchmarks/gpu_memory_check.py is the check); --overhead replaces both.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from llmkit.config import gpu_memory_size, parse_size
from llmkit.errors import ConfigError
from llmkit.modelspec import ModelSpec, ParamGroup

GIB = 1 << 30
MIB = 1 << 20
# The CUDA context of a PyTorch process: 300-600 MiB by card and driver with CUDA 12's lazy module loading (the
# kernels of the libraries it calls are loaded on first use), plus cuBLAS' workspaces. Uncalibrated.
CUDA_CONTEXT_BYTES = 512 * MIB
# reserved - allocated of the caching allocator at the peak, as a share of the tensor peak: blocks are rounded (512 B,
# 2 MiB segments for small ones) and freed blocks of earlier phases stay cached in sizes the peak cannot reuse.
# Uncalibrated; nvidia-smi shows reserved + the context, torch.cuda.max_memory_allocated the tensors alone.
ALLOCATOR_RESERVE = 0.10
# DeepSpeed ZeRO-3 settings that size GPU buffers, as `llmkit launch` writes them (DeepSpeed's own defaults), in
# elements: the gradient reduce bucket, the parameter prefetch bucket and the reuse distance under which a gathered
# parameter is kept on the GPU
ZERO3_REDUCE_BUCKET = 500_000_000
ZERO3_PREFETCH_BUCKET = 50_000_000
ZERO3_MAX_REUSE_DISTANCE = 1_000_000_000
# the bytes per value of a checkpoint's `dtype` (`torch_dtype` before transformers 5) in its config.json
CHECKPOINT_DTYPE_BYTES = {"float32": 4, "float16": 2, "bfloat16": 2}
DTYPE_BYTES = {"fp32": 4, "fp16": 2, "bf16": 2}
NF4_BLOCK = 64                            # bitsandbytes 4-bit block size (values per fp32 absmax)
NF4_DOUBLE_QUANT_BLOCK = 256              # blocks per second-level absmax under double quantization
ADAM8BIT_BLOCK = 256                      # bitsandbytes blockwise 8-bit optimizer block
ADAM8BIT_MIN_SIZE = 4096                  # bitsandbytes keeps tensors smaller than this in 32-bit states
INPUT_TENSORS = 3                         # input_ids, attention_mask, labels (int64 each)


# each --optimizer as transformers' Trainer names it (`optim`), with its `optim_args`: what the training commands run
# and what memory-estimate counts
HF_OPTIMIZERS = {"adamw": "adamw_torch", "adamw-fused": "adamw_torch_fused", "adamw-8bit": "adamw_bnb_8bit",
                 "paged-adamw-8bit": "paged_adamw_8bit", "adafactor": "adafactor", "sgd": "sgd",
                 "sgd-momentum": "sgd"}
HF_OPTIMIZER_ARGS = {"sgd-momentum": "momentum=0.9"}


def overhead_bytes(cfg, tensor_peak: float) -> int:
    """--overhead, or the CUDA context plus the caching allocator's reserve over `tensor_peak` (0 on CPU)."""
    if cfg.overhead is not None:
        return parse_size(cfg.overhead, "--overhead")
    if cfg.device == "cpu":
        return 0
    return int(CUDA_CONTEXT_BYTES + ALLOCATOR_RESERVE * tensor_peak)


def gib(n: int | float) -> float:
    return n / GIB


# --------------------------------------------------------------------------------------------------------------
# Activation coefficients: bytes saved for backward per block, counted with saved_tensors_hooks on transformers'
# LlamaDecoderLayer and BertLayer (torch 2.13, transformers 5.24) while varying b, s, hidden, intermediate, heads.
#   per_bsh:   bytes per token per hidden unit (residual stream, norm outputs, q/k/v/out, linear inputs)
#   kv_bsh:    the part of per_bsh that belongs to k and v (scaled by kv_heads/heads under GQA)
#   per_bsI:   bytes per token per intermediate unit (MLP)
#   scores:    bytes per (batch, head, query, key) that eager attention keeps (probabilities [+ dropout])
#   scores_dropout: the same when attention dropout is on (mask + dropped probabilities)
#   per_bs:    bytes per token (norm statistics)
# sdpa/flash keep no s^2 term, only the fp32 logsumexp (4 bytes per batch, head, query).
# Modes: fp32 (fp32 weights and compute), autocast (fp32 weights, 16-bit compute: the HF Trainer's --bf16/--fp16),
# pure16 (16-bit weights and compute).
# Block types: swiglu (LLaMA, Mistral, Qwen), gelu (BERT, BLOOM: erf GELU), gelu_new (GPT-2: the tanh formula written
# out in Python, which saves four intermediate tensors of b*s*I), t5 (relu) and t5-gated (T5 v1.1, mT5, mT0:
# gelu_new on wi_0 times wi_1). The T5 and GPT-2 rows were counted with their default dropout 0.1; scores_dropout
# is what eager attention keeps with dropout, scores without it. T5 decoder blocks add cross-attention: cross_bsh
# and cross_bs per token, cross_scores per (batch, head, query, source key).
_BLOCK_COEFFICIENTS = {
    ("swiglu", "fp32"): dict(per_bsh=40, kv_bsh=8, per_bsI=16, scores=4, scores_dropout=12, per_bs=8),
    ("swiglu", "autocast"): dict(per_bsh=34, kv_bsh=4, per_bsI=8, scores=6, scores_dropout=6, per_bs=8),
    ("swiglu", "pure16"): dict(per_bsh=24, kv_bsh=4, per_bsI=8, scores=6, scores_dropout=6, per_bs=8),
    ("gelu", "fp32"): dict(per_bsh=40, kv_bsh=8, per_bsI=8, scores=4, scores_dropout=12, per_bs=16),
    ("gelu", "autocast"): dict(per_bsh=28, kv_bsh=4, per_bsI=4, scores=6, scores_dropout=6, per_bs=16),
    ("gelu", "pure16"): dict(per_bsh=20, kv_bsh=4, per_bsI=4, scores=2, scores_dropout=6, per_bs=8),
    ("gelu_new", "fp32"): dict(per_bsh=40, kv_bsh=8, per_bsI=20, scores=4, scores_dropout=12, per_bs=16),
    ("gelu_new", "autocast"): dict(per_bsh=24, kv_bsh=4, per_bsI=10, scores=4, scores_dropout=8, per_bs=16),
    ("gelu_new", "pure16"): dict(per_bsh=20, kv_bsh=4, per_bsI=10, scores=2, scores_dropout=6, per_bs=8),
    ("t5", "fp32"): dict(per_bsh=48, kv_bsh=8, per_bsI=12, scores=4, scores_dropout=12, per_bs=8,
                         cross_bsh=32, cross_bs=4, cross_scores=12),
    ("t5", "autocast"): dict(per_bsh=36, kv_bsh=4, per_bsI=6, scores=6, scores_dropout=10, per_bs=8,
                             cross_bsh=24, cross_bs=4, cross_scores=6),
    ("t5", "pure16"): dict(per_bsh=32, kv_bsh=4, per_bsI=6, scores=2, scores_dropout=6, per_bs=8,
                           cross_bsh=20, cross_bs=4, cross_scores=6),
}
# the gated feed-forward (gelu_new on wi_0, times wi_1) changes only the MLP terms of a T5 block
_BLOCK_COEFFICIENTS.update({("t5-gated", mode): {**_BLOCK_COEFFICIENTS[("t5", mode)], **changes} for mode, changes in (
    ("fp32", dict(per_bsI=32)), ("autocast", dict(per_bsh=38, per_bsI=16)), ("pure16", dict(per_bsI=16)))})
# CUDA autocast differs from CPU autocast (which the autocast rows above were counted under): it computes softmax,
# log-softmax, layer norm and pow in fp32 (their outputs are fp32 tensors), and its fused dropout saves a 1-byte
# mask where CPU dropout saves a noise tensor in the input's dtype. Counted from the rows above by re-pricing each
# saved tensor (not measured on a GPU yet: benchmarks/gpu_memory_check.py is the check):
#   eager scores: fp32 softmax output 4 + bf16 copy for the value matmul 2 (+ 1-byte mask with dropout);
#   BERT: the residual sum feeding each LayerNorm is fp32 (+2 per norm), its two hidden dropouts save masks (-1 each);
#   GPT-2: two hidden dropouts (-1 each); gelu_new's pow/tanh chain runs in fp32 (per_bsI 10 -> 14);
#   T5: hidden dropouts on 16-bit outputs (-1 each: 2 per encoder block, 3 per decoder block); relu block: dropout mask
#   (-1 per_bsI); gated block: gelu_new in fp32 and an fp32 gate product (per_bsI 16 -> 21). LLaMA: unchanged.
_CUDA_AUTOCAST = {
    "swiglu": {},
    "gelu": dict(per_bsh=30, scores_dropout=7),
    "gelu_new": dict(per_bsh=22, per_bsI=14, scores=6, scores_dropout=9),
    "t5": dict(per_bsh=34, per_bsI=5, scores=6, scores_dropout=7, cross_bsh=23, cross_scores=7),
    "t5-gated": dict(per_bsh=36, per_bsI=21, scores=6, scores_dropout=7, cross_bsh=23, cross_scores=7),
}
# Saved per token outside the blocks, in bytes per hidden unit: final norm (decoders), embedding LayerNorm and
# dropout plus the MLM transform (encoders). Counted the same way as the blocks.
_OUTSIDE_BLOCKS_BSH = {
    ("swiglu", "fp32"): 12, ("swiglu", "autocast"): 10, ("swiglu", "pure16"): 12,
    ("gelu", "fp32"): 24, ("gelu", "autocast"): 16, ("gelu", "pure16"): 12,
    ("gelu_new", "fp32"): 12, ("gelu_new", "autocast"): 12, ("gelu_new", "pure16"): 8,
    ("t5", "fp32"): 24, ("t5", "autocast"): 20, ("t5", "pure16"): 12,
    ("t5-gated", "fp32"): 24, ("t5-gated", "autocast"): 20, ("t5-gated", "pure16"): 12,
}
# Linear-layer inputs that only the linear itself saves (for its weight gradient). When the weight is frozen
# (LoRA, IA3, prompt methods) autograd does not save them. Values: bytes per token per (hidden | intermediate |
# cross: the decoder's cross-attention share of a block).
_GELU_LINEAR_INPUTS = {
    "fp32": {("q", "k", "v", "qkv"): ("h", 4), ("o",): ("h", 4), ("fc_in",): ("h", 4), ("fc_out",): ("I", 4)},
    "autocast": {("q",): ("h", 2), ("k",): ("h", 2), ("v",): ("h", 2), ("qkv",): ("h", 2), ("o",): ("h", 2),
                 ("fc_in",): ("h", 2), ("fc_out",): ("I", 2)},
    "pure16": {("q", "k", "v", "qkv"): ("h", 2), ("o",): ("h", 2), ("fc_in",): ("h", 2), ("fc_out",): ("I", 2)}}
_T5_LINEAR_INPUTS = {
    "fp32": {("q", "k", "v"): ("h", 4), ("o",): ("h", 4), ("fc_in", "gate", "up"): ("h", 4),
             ("down", "fc_out"): ("I", 4), ("cross_q",): ("cross", 4), ("cross_o",): ("cross", 4)},
    "autocast": {("q",): ("h", 2), ("k",): ("h", 2), ("v",): ("h", 2), ("o",): ("h", 2), ("fc_in", "gate"): ("h", 2),
                 ("up",): ("h", 2), ("down", "fc_out"): ("I", 2), ("cross_q",): ("cross", 2),
                 ("cross_k",): ("cross", 2), ("cross_v",): ("cross", 2), ("cross_o",): ("cross", 2)},
    "pure16": {("q", "k", "v"): ("h", 2), ("o",): ("h", 2), ("fc_in", "gate", "up"): ("h", 2),
               ("down", "fc_out"): ("I", 2), ("cross_q",): ("cross", 2), ("cross_o",): ("cross", 2)}}
_LINEAR_ONLY_INPUTS = {
    "swiglu": {"fp32": {("q", "k", "v"): ("h", 4), ("gate", "up"): ("h", 4), ("down",): ("I", 4)},
               "autocast": {("q",): ("h", 2), ("k",): ("h", 2), ("v",): ("h", 2), ("gate",): ("h", 2),
                            ("up",): ("h", 2), ("down",): ("I", 2)},
               "pure16": {("q", "k", "v"): ("h", 2), ("gate", "up"): ("h", 2), ("down",): ("I", 2)}},
    "gelu": _GELU_LINEAR_INPUTS, "gelu_new": _GELU_LINEAR_INPUTS, "t5": _T5_LINEAR_INPUTS,
    "t5-gated": _T5_LINEAR_INPUTS,
}
# Working set of one block's backward beyond what it had saved: gradients of the residual stream and of the
# block's intermediate tensors, in bytes per token per (hidden | intermediate) and per score.
_BACKWARD_TRANSIENT = dict(per_bsh_grad=3, per_bsI_grad=3, scores_grad=2)

LORA_ROLE_NAMES = {
    "q": ("q_proj", "query", "q"), "k": ("k_proj", "key", "k"), "v": ("v_proj", "value", "v"),
    "o": ("o_proj", "dense", "o", "c_proj", "out_proj"), "qkv": ("c_attn", "query_key_value", "qkv_proj"),
    "gate": ("gate_proj", "wi_0", "w1"), "up": ("up_proj", "wi_1", "w3"), "down": ("down_proj", "wo", "w2"),
    "fc_in": ("fc1", "c_fc", "intermediate.dense", "dense_h_to_4h", "wi", "fc_in"),
    "fc_out": ("fc2", "output.dense", "dense_4h_to_h", "wo", "fc_out"),
    "cross_q": ("EncDecAttention.q",), "cross_k": ("EncDecAttention.k",), "cross_v": ("EncDecAttention.v",),
    "cross_o": ("EncDecAttention.o",),
}


# --------------------------------------------------------------------------------------------------------------
# Results

@dataclass(frozen=True)
class Estimate:
    params_total: int
    params_trainable: int
    per_device: dict[str, int]         # weights gradients optimizer activations overhead total
    cpu_ram: int
    peak_phase: str                    # forward_backward | optimizer_step | inference
    communication_bytes_per_step: int
    assumptions: dict[str, Any]
    phases: dict[str, int]             # peak of each phase, without the overhead
    explain: dict[str, str]            # row -> formula and numbers
    fits: bool | None = None
    gpu_memory: int | None = None
    plans: list[Any] | None = None     # llmkit.plans.Plan, filled in by the plan search
    notes: list[str] = field(default_factory=list)
    host_ram_bytes: dict[str, int] = field(default_factory=dict)   # load, offload, total, per node

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "params_total": self.params_total, "params_trainable": self.params_trainable,
            "per_device": dict(self.per_device), "cpu_ram": self.cpu_ram, "peak_phase": self.peak_phase,
            "communication_bytes_per_step": self.communication_bytes_per_step, "assumptions": self.assumptions,
            "phases": self.phases, "host_ram_bytes": dict(self.host_ram_bytes),
        }
        if self.gpu_memory is not None:
            out["gpu_memory"] = self.gpu_memory
            out["fits"] = self.fits
        if self.plans is not None:
            out["plans"] = [p.to_json() for p in self.plans]
        if self.explain:
            out["explain"] = self.explain
        if self.notes:
            out["notes"] = self.notes
        return out


# --------------------------------------------------------------------------------------------------------------
# Settings derived from the config

@dataclass(frozen=True)
class _Setup:
    task: str
    mode: str                 # fp32 | autocast | pure16 (activations)
    weight_bytes: int         # storage dtype of unquantized weights on the device
    grad_bytes: int           # gradient dtype of full-model trainable tensors
    state_dtype_bytes: int    # dtype optimizer states take for full-model tensors (torch: the parameter's)
    master_bytes: int         # fp32 master copy kept by DeepSpeed under 16-bit training (0 otherwise)
    compute_bytes: int        # dtype of activations / logits
    world: int                # data-parallel processes (gpus * nodes)


def _setup(cfg: Any, spec: ModelSpec) -> _Setup:
    task = cfg.task or spec.default_task
    precision = cfg.effective_precision
    mixed = cfg.mixed_precision != "no"
    world = cfg.gpus * cfg.nodes
    deepspeed16 = cfg.zero > 0 and mixed and not cfg.uses_fsdp   # FSDP's fp32 shards are its master weights
    if deepspeed16:
        # DeepSpeed converts the model to 16-bit and keeps the fp32 master weights inside its optimizer
        return _Setup(task, "pure16", 2, 2, 4, 4, 2, world)
    if mixed:
        return _Setup(task, "autocast", 4, 4, 4, 0, 2, world)
    w = DTYPE_BYTES[precision]
    return _Setup(task, "fp32" if w == 4 else "pure16", w, w, w, 0, w, world)


def _block_type(spec: ModelSpec) -> str:
    if spec.family == "encoder-decoder":
        return "t5-gated" if spec.activation == "gated-gelu" else "t5"
    if spec.activation == "swiglu":
        return "swiglu"
    act = spec.config_fields.get("activation_function") or spec.config_fields.get("hidden_act")
    if spec.model_type == "gpt2" and act in (None, "gelu_new"):   # GPT-2's default
        return "gelu_new"
    return "gelu"


def _block_coefficients(block: str, mode: str, device: str) -> dict[str, float]:
    coefficients = dict(_BLOCK_COEFFICIENTS[(block, mode)])
    if mode == "autocast" and device == "cuda":
        coefficients.update(_CUDA_AUTOCAST[block])
    return coefficients


# --------------------------------------------------------------------------------------------------------------
# Parameters: what is stored, what trains

@dataclass
class _Tensors:
    """Per-tensor-group bookkeeping, all in bytes except numel."""

    total_numel: int = 0
    trainable_numel: int = 0
    weights: float = 0.0            # device-resident storage of all weights (before ZeRO-3 partitioning)
    grads: float = 0.0              # all gradients
    states: float = 0.0             # persistent optimizer states
    largest_trainable_bytes: float = 0.0
    per_layer_grads: float = 0.0    # gradients of one block
    per_layer_numel_linear: int = 0
    largest_block_linear: int = 0
    largest_outside_block: float = 0.0   # bytes of the largest tensor outside the blocks (embedding)
    per_layer_params_bytes: float = 0.0
    head_grads: float = 0.0         # gradients created by the loss head's backward (lm head / classifier)
    embedding_grads: float = 0.0    # created last
    autocast_copy_per_layer: float = 0.0   # 16-bit copies of one block's linear weights
    autocast_copy_outside: float = 0.0     # ... of the head
    adapter_numel: int = 0
    quantized_numel: int = 0
    trainable_roles: frozenset = frozenset()
    lines: list[str] = field(default_factory=list)


def _weight_bytes_per_param(group: ParamGroup, quant: str, double_quant: bool) -> float | None:
    """Bytes per parameter of a quantized linear weight, or None when the quantizer leaves it alone."""
    if quant == "none" or group.kind != "linear" or len(group.shape) != 2:
        return None
    if quant == "int8":
        return 1 + 4 / group.shape[1]      # int8 values + one fp32 scale (SCB) per output row
    if double_quant:
        return 0.5 + 1 / NF4_BLOCK + 4 / (NF4_BLOCK * NF4_DOUBLE_QUANT_BLOCK)
    return 0.5 + 4 / NF4_BLOCK


def _resolve_roles(cfg: Any, spec: ModelSpec, groups: list[ParamGroup]) -> set[str]:
    available = {g.role for g in groups if g.kind == "linear" and g.in_block and g.role}
    targets = [t.strip() for t in cfg.lora_targets if t.strip()]
    if targets == ["all-linear"]:
        return available
    roles = set()
    unknown = []
    for target in targets:
        matched = {role for role, names in LORA_ROLE_NAMES.items() if target in names and role in available}
        if not matched and "qkv" in available and any(target in LORA_ROLE_NAMES[r] for r in ("q", "k", "v")):
            matched = {"qkv"}      # a fused query/key/value projection (GPT-2 c_attn, BLOOM query_key_value)
        # peft matches a target by its last name: T5's "q" is SelfAttention.q and EncDecAttention.q alike
        matched |= {f"cross_{role}" for role in matched if f"cross_{role}" in available}
        if not matched:
            unknown.append(target)
        roles |= matched
    if unknown:
        names = sorted({n for role, ns in LORA_ROLE_NAMES.items() if role in available for n in ns[:1]})
        raise ConfigError(f"--lora-targets: {', '.join(unknown)} not found in a {spec.model_type} block",
                          hint=f"this model's linear layers: {', '.join(names)}; or --lora-targets all-linear")
    return roles


def _optimizer_state_bytes(optimizer: str, numel: int, shape: tuple[int, ...], dtype_bytes: int) -> float:
    if optimizer in ("adamw", "adamw-fused"):
        return 2 * numel * dtype_bytes
    if optimizer in ("adamw-8bit", "paged-adamw-8bit"):
        if numel < ADAM8BIT_MIN_SIZE:
            return 2 * numel * 4
        return 2 * numel + 2 * 4 * math.ceil(numel / ADAM8BIT_BLOCK)
    if optimizer == "adafactor":
        if len(shape) >= 2:
            return 4 * (math.prod(shape[:-1]) + shape[-1])   # factored second moment: row + column vectors
        return 4 * numel
    if optimizer == "sgd-momentum":
        return numel * dtype_bytes
    return 0.0                                               # sgd


def _tensors(cfg: Any, spec: ModelSpec, setup: _Setup, groups: list[ParamGroup]) -> _Tensors:
    t = _Tensors()
    L = spec.layers + spec.decoder_layers
    training = cfg.mode == "train"
    full_model = training and cfg.peft == "none"
    first_trainable = _first_trainable_layer(cfg, spec)
    roles = _resolve_roles(cfg, spec, groups) if training and cfg.peft == "lora" else set()
    t.trainable_roles = frozenset(roles)

    # a tied output head multiplies by the word embedding: autocast casts it like a linear weight, and its
    # gradient appears when the head's backward runs, not at the end of the backward
    tied_head = spec.tied_embeddings and setup.task in ("causal-lm", "masked-lm", "seq2seq")
    word_embedding = next((g for g in groups if g.kind == "embedding"), None) if tied_head else None
    for g in groups:
        t.total_numel += g.numel
        per_param = _weight_bytes_per_param(g, cfg.quant, cfg.double_quant) if g.in_block else None
        if per_param is not None:
            t.quantized_numel += g.numel
            stored = g.numel * per_param
        else:
            stored = g.numel * setup.weight_bytes
        t.weights += stored
        if not g.in_block:
            t.largest_outside_block = max(t.largest_outside_block, stored / g.count)
        if g.in_block:
            t.per_layer_params_bytes += stored / L
            if g.kind == "linear":
                t.per_layer_numel_linear += g.numel // L
                t.largest_block_linear = max(t.largest_block_linear, g.numel_each)
        # 16-bit copies autocast makes of every linear weight it multiplies (embeddings are not cast)
        if setup.mode == "autocast" and g.kind in ("linear", "head") and len(g.shape) == 2 and per_param is None:
            if g.in_block:
                t.autocast_copy_per_layer += 2 * g.numel / L
            elif g.kind == "head" or not g.in_block:
                t.autocast_copy_outside += 2 * g.numel
        if setup.mode == "autocast" and g is word_embedding:
            t.autocast_copy_outside += 2 * g.numel
        if not full_model:
            continue
        trainable_share = _trainable_share(cfg, spec, g, first_trainable)
        if trainable_share == 0:
            continue
        numel = int(g.numel * trainable_share)
        count = max(1, round(g.count * trainable_share))
        t.trainable_numel += numel
        grad = numel * setup.grad_bytes
        t.grads += grad
        t.states += count * _optimizer_state_bytes(cfg.optimizer, g.numel_each, g.shape, setup.state_dtype_bytes)
        t.states += numel * setup.master_bytes
        t.largest_trainable_bytes = max(t.largest_trainable_bytes, g.numel_each * 4)
        if g.in_block:
            t.per_layer_grads += grad / max(L - first_trainable, 1)
        elif g.kind == "embedding" and g is not word_embedding:
            t.embedding_grads += grad
        else:
            t.head_grads += grad

    if training and cfg.peft != "none":
        adapters = _adapter_tensors(cfg, spec, groups, roles)
        for shape, count, in_block in adapters:
            numel = math.prod(shape) * count
            t.adapter_numel += numel
            t.total_numel += 0          # peft counts adapters separately from the base model's parameters
            t.trainable_numel += numel
            t.weights += numel * 4      # peft keeps adapter weights in fp32 (autocast_adapter_dtype)
            t.grads += numel * 4
            t.states += count * _optimizer_state_bytes(cfg.optimizer, math.prod(shape), shape, 4)
            t.largest_trainable_bytes = max(t.largest_trainable_bytes, math.prod(shape) * 4)
            if in_block:
                t.per_layer_grads += numel * 4 / max(L, 1)
            else:
                t.head_grads += numel * 4
        if setup.task == "seq-cls":     # peft trains the new classifier head too (modules_to_save)
            for g in groups:
                if g.kind == "head":
                    t.trainable_numel += g.numel
                    t.grads += g.numel * 4
                    t.states += _optimizer_state_bytes(cfg.optimizer, g.numel, g.shape, 4)
                    t.head_grads += g.numel * 4
    return t


def _first_trainable_layer(cfg: Any, spec: ModelSpec) -> int:
    """Index of the lowest block that trains (blocks below it keep no activations)."""
    L = spec.layers + spec.decoder_layers
    if cfg.mode != "train":
        return L
    if cfg.freeze_base:
        return L
    if cfg.trainable_layers is not None and cfg.peft == "none":
        return L - cfg.trainable_layers
    return 0


def _trainable_share(cfg: Any, spec: ModelSpec, g: ParamGroup, first_trainable: int) -> float:
    """Share of a group's tensors that train under --freeze-base / --trainable-layers."""
    L = spec.layers + spec.decoder_layers
    if cfg.freeze_base:
        return 1.0 if g.kind == "head" else 0.0
    if cfg.trainable_layers is not None:
        if g.in_block:
            return (L - first_trainable) / L
        # the final norm and the head train with the last blocks; the embeddings stay frozen
        return 0.0 if g.kind == "embedding" else 1.0
    return 1.0


def _adapter_tensors(cfg: Any, spec: ModelSpec, groups: list[ParamGroup],
                     roles: set[str]) -> list[tuple[tuple[int, ...], int, bool]]:
    """(shape, count, in_block) of the parameters peft adds."""
    h, L = spec.hidden, spec.layers
    if cfg.peft == "lora":
        out = []
        for g in groups:
            if g.kind == "linear" and g.in_block and g.role in roles and len(g.shape) == 2:
                out_f, in_f = g.shape
                out.append(((cfg.lora_rank, in_f), g.count, True))      # lora_A
                out.append(((out_f, cfg.lora_rank), g.count, True))     # lora_B
        return out
    if cfg.peft == "ia3":
        # peft defaults: k and v scale their outputs, the feed-forward output layer scales its input
        out = []
        for g in groups:
            if g.kind != "linear" or not g.in_block or len(g.shape) != 2:
                continue
            if g.role in ("k", "v", "qkv"):
                out.append(((g.shape[0],), g.count, True))
            elif g.role in ("down", "fc_out"):
                out.append(((g.shape[1],), g.count, True))
        return out
    submodules = 2 if spec.family == "encoder-decoder" else 1
    nvt = cfg.num_virtual_tokens * submodules
    if cfg.peft == "prompt-tuning":
        return [((nvt, h), 1, False)]
    if cfg.peft == "p-tuning":
        # PromptEncoder (MLP reparameterisation, encoder_hidden_size = hidden): embedding + 3 linear layers
        return [((nvt, h), 1, False), ((h, h), 3, False), ((h,), 3, False)]
    if cfg.peft == "prefix-tuning":
        layers = L + spec.decoder_layers
        return [((cfg.num_virtual_tokens, layers * 2 * spec.kv_heads * spec.head_dim), submodules, False)]
    return []


# --------------------------------------------------------------------------------------------------------------
# Activations

@dataclass
class _Activations:
    per_layer: list[float]          # saved bytes of each block (index 0 = first), checkpointing applied
    full_layer: float               # one block's saved bytes without checkpointing (recomputed block)
    outside: float                  # embeddings, final norm, head, inputs (saved)
    log_softmax: float              # the saved log-probabilities (part of `outside`)
    logits_forward: float           # transient at the end of the forward (logits [+ fp32 copy])
    loss_backward: float            # transient while the loss backward runs (grad of log-softmax + logits)
    head_backward: float            # transient of the head's backward (grad of the logits)
    layer_backward: float           # transient working set of one block's backward
    frozen_forward: float           # largest forward working set of a block that saves nothing
    formula: str


def _activations(cfg: Any, spec: ModelSpec, setup: _Setup, tensors: _Tensors) -> _Activations:
    b, h, I_, nh = cfg.batch_size, spec.hidden, spec.intermediate, spec.heads
    s = cfg.seq_len + (cfg.num_virtual_tokens if cfg.peft in ("prompt-tuning", "p-tuning") else 0)
    kv_len = s + (cfg.num_virtual_tokens if cfg.peft == "prefix-tuning" else 0)
    block = _block_type(spec)
    c = _block_coefficients(block, setup.mode, cfg.device)
    cd = setup.compute_bytes
    eager = cfg.attention == "eager"
    score_coef = (c["scores_dropout"] if spec.attention_dropout > 0 else c["scores"]) if eager else 0
    per_bsh = c["per_bsh"] - c["kv_bsh"] * (1 - spec.kv_heads / spec.heads)
    per_bsI = c["per_bsI"]
    cross_bsh = c.get("cross_bsh", 0.5 * per_bsh)
    lora_note = ""
    if cfg.peft != "none":
        # frozen linear layers do not save their inputs (no weight gradient); LoRA targets still do
        saved_by_targets = tensors.trainable_roles
        for roles, (dim, nbytes) in _LINEAR_ONLY_INPUTS[block][setup.mode].items():
            if not any(r in saved_by_targets for r in roles):
                if dim == "h":
                    per_bsh -= nbytes
                elif dim == "cross":
                    cross_bsh -= nbytes
                else:
                    per_bsI -= nbytes
        lora_note = " (inputs of frozen linear layers are not saved)"
    layer = b * s * (per_bsh * h + per_bsI * I_ + c["per_bs"]) + b * nh * s * kv_len * score_coef
    if not eager:
        layer += 4 * b * nh * s    # fp32 logsumexp kept by sdpa/flash backward
    if spec.family == "encoder-decoder":
        # decoder blocks add cross-attention: its hidden terms, and scores against the source
        cross_scores = c.get("cross_scores", score_coef) if eager else 0
        decoder_layer = layer + b * s * (cross_bsh * h + c.get("cross_bs", 0)) + b * nh * s * s * cross_scores
    else:
        decoder_layer = layer
    L_total = spec.layers + spec.decoder_layers
    first = _first_trainable_layer(cfg, spec)
    resid_bytes = 4 if setup.mode in ("fp32", "autocast") else 2
    per_layer = []
    for i in range(L_total):
        full = decoder_layer if (spec.family == "encoder-decoder" and i >= spec.layers) else layer
        if i < first:
            per_layer.append(0.0)
        elif cfg.grad_checkpointing:
            per_layer.append(float(b * s * h * resid_bytes))
        else:
            per_layer.append(float(full))
    V = spec.vocab
    token_head = setup.task in ("causal-lm", "masked-lm", "seq2seq")
    lsm_bytes = 4 if (setup.mode != "pure16" or spec.upcasts_logits) else 2
    trains_anything = cfg.mode == "train" and (first < L_total or cfg.freeze_base or cfg.peft != "none")
    outside_coef = _OUTSIDE_BLOCKS_BSH[(block, setup.mode)]
    inputs = INPUT_TENSORS * 8 * b * s
    if token_head and trains_anything:
        log_softmax = b * s * V * lsm_bytes
        upcast = 4 if (cd != 4 and (spec.upcasts_logits or setup.mode == "autocast")) else 0
        logits_forward = b * s * V * (cd + upcast)
        loss_backward = 2 * log_softmax       # grad of the log-probabilities and of the logits
        head_backward = b * s * V * cd + b * s * h * 4
    else:
        log_softmax = 0.0
        logits_forward = b * V * cd if token_head else b * spec.num_labels * 4
        loss_backward = 0.0
        head_backward = b * s * h * 4 if trains_anything else 0.0
    outside = (b * s * h * outside_coef if first < L_total else 0) + log_softmax + inputs
    tr = _BACKWARD_TRANSIENT
    layer_backward = b * s * (tr["per_bsh_grad"] * h * 4 + tr["per_bsI_grad"] * I_ * cd) \
        + (b * nh * s * kv_len * tr["scores_grad"] * cd if eager else 0)
    # a frozen block runs forward without saving: its largest working set is a few hidden-size tensors, the MLP
    # intermediates and (eager) the attention scores
    frozen_forward = b * s * (2 * h * 4 + 3 * I_ * cd) + (b * nh * s * kv_len * 2 * cd if eager else 0)
    checkpoint = (f"; checkpointing keeps b*s*h*{resid_bytes} per block and recomputes one block"
                  if cfg.grad_checkpointing else "")
    formula = (f"per block b*s*({per_bsh:g}*h + {per_bsI:g}*I + {c['per_bs']})"
               + (f" + b*heads*s*s*{score_coef}" if eager else " + 4*b*heads*s (sdpa logsumexp)")
               + f" = {layer:,.0f} B{lora_note}{checkpoint}; outside blocks {outside_coef}*b*s*h"
               + (f" + log-softmax b*s*V*{lsm_bytes} = {log_softmax:,.0f} B" if log_softmax else "")
               + (f"; decoder blocks + cross-attention b*s*{cross_bsh:g}*h"
                  if spec.family == "encoder-decoder" else "")
               + f"; b={b} s={s} h={h} I={I_} heads={nh} V={V}, {setup.mode} compute ({block} block"
               + (f", {cfg.device} autocast rules)" if setup.mode == "autocast" else ")"))
    return _Activations(per_layer, float(layer), float(outside), float(log_softmax), float(logits_forward),
                        float(loss_backward), float(head_backward), float(layer_backward), float(frozen_forward),
                        formula)


# --------------------------------------------------------------------------------------------------------------
# The estimate

def load_model_spec(cfg: Any) -> ModelSpec:
    """The ModelSpec behind --params or --model, with the architecture overrides applied."""
    from llmkit import modelspec

    if cfg.params is not None:
        return modelspec.from_params(modelspec.parse_param_count(cfg.params), **cfg.architecture_overrides)
    return modelspec.load_spec(cfg.model, cfg.architecture_overrides)


def estimate(cfg: Any, spec: ModelSpec | None = None, *, groups_cache: dict | None = None,
             light: bool = False) -> Estimate:
    """Estimate per-device memory for `cfg` (a MemoryEstimateConfig). Raises ConfigError on contradictions.
    The plans for --plan are llmkit.plans' job; `groups_cache` and `light` are for its search (see _estimate)."""
    return _estimate(cfg, spec or load_model_spec(cfg), groups_cache=groups_cache, light=light)


def _check(cfg: Any, spec: ModelSpec, task: str) -> None:
    L = spec.layers + spec.decoder_layers
    if cfg.trainable_layers is not None and cfg.trainable_layers > L:
        raise ConfigError(f"--trainable-layers {cfg.trainable_layers} is more than the model's {L} blocks",
                          hint=f"use at most {L}")
    if task == "seq2seq" and spec.family != "encoder-decoder":
        raise ConfigError(f"--task seq2seq needs an encoder-decoder model; {spec.name} is a {spec.family}",
                          hint="use --task causal-lm or a model such as t5-base")
    if task == "masked-lm" and spec.family != "encoder":
        raise ConfigError(f"--task masked-lm needs an encoder model; {spec.name} is a {spec.family}",
                          hint="use --task causal-lm, or a model such as bert-base")
    if task == "causal-lm" and spec.family == "encoder":
        raise ConfigError(f"--task causal-lm needs a decoder; {spec.name} is an encoder",
                          hint="use --task masked-lm or --task seq-cls")
    if task == "seq-cls" and spec.family == "encoder-decoder":
        raise ConfigError("--task seq-cls is not modelled for encoder-decoder models",
                          hint="use --task seq2seq")


def _estimate(cfg: Any, spec: ModelSpec, groups_cache: dict | None = None, light: bool = False) -> Estimate:
    """light: skip the explanations and assumptions (the plan search only needs the numbers)."""
    setup = _setup(cfg, spec)
    _check(cfg, spec, setup.task)
    if groups_cache is None:
        groups = spec.parameter_groups(setup.task)
    else:
        groups = groups_cache.get(setup.task) or groups_cache.setdefault(setup.task, spec.parameter_groups(setup.task))
    t = _tensors(cfg, spec, setup, groups)
    explain: dict[str, str] = {}
    notes: list[str] = []
    if cfg.mode == "inference":
        return _inference(cfg, spec, setup, t)
    act = _activations(cfg, spec, setup, t)
    if cfg.uses_fsdp:
        return _fsdp_estimate(cfg, spec, setup, t, act, light)
    world = setup.world
    zero = cfg.zero
    offload_opt = cfg.offload in ("optimizer", "optimizer+params")
    offload_params = cfg.offload == "optimizer+params"
    L = spec.layers + spec.decoder_layers

    # ---- model states per device, after ZeRO partitioning and offload
    weights_full = t.weights
    gathered = _zero3_gathered(t) if zero == 3 else 0.0
    if zero == 3:
        weights_dev = gathered + (0 if offload_params else weights_full / world)
    else:
        weights_dev = weights_full
    grads_full = t.grads
    bucket = 0.0
    if zero == 3 and t.trainable_numel:
        # allocated at its full size at initialisation, in the trainable parameters' dtype (adapters: fp32)
        bucket = ZERO3_REDUCE_BUCKET * (4 if cfg.peft != "none" else setup.grad_bytes)
    elif zero == 2:
        bucket = 2 * min(grads_full, spec.hidden * spec.hidden * setup.grad_bytes * 2)   # reduce buckets
    if zero >= 2:
        # with the optimizer offloaded, reduced gradient partitions go straight to the CPU; buckets stay
        grads_dev_final = bucket if offload_opt else grads_full / world + bucket
    else:
        grads_dev_final = grads_full
    states_full = t.states
    states_dev = 0.0 if offload_opt else (states_full / world if zero >= 1 else states_full)
    cpu_ram = 0.0
    if offload_opt:
        # states and master weights live on the CPU, with an fp32 gradient partition for the CPU optimizer step;
        # ZeRO-3 keeps a second pinned fp32 gradient buffer (its flat gradient partitions) beside it
        cpu_ram += states_full / world + t.trainable_numel * 4 / world * (2 if zero == 3 else 1)
    if offload_params:
        cpu_ram += weights_full / world
    cpu_ram *= cfg.gpus          # one process per GPU on each node
    accumulating = cfg.grad_accum > 1

    # ---- forward/backward phase, walked block by block
    copies_layer = t.autocast_copy_per_layer
    first = _first_trainable_layer(cfg, spec)
    saving_layers = L - first
    def grads_now(created: float) -> float:
        alive = grads_full if accumulating else created
        if zero >= 2:
            return bucket if offload_opt else min(alive, grads_full) / world + bucket
        return min(alive, grads_full)
    base = weights_dev + states_dev
    copies_all = copies_layer * (L if cfg.grad_checkpointing else saving_layers) + t.autocast_copy_outside
    saved_blocks = sum(act.per_layer)
    events: list[tuple[str, float, float, float]] = []   # (event, gradients, activations, extra weights)
    frozen_peak = act.frozen_forward if first > 0 else 0.0
    events.append(("forward", grads_now(0), saved_blocks + act.outside + max(act.logits_forward, frozen_peak),
                   copies_all))
    events.append(("loss backward", grads_now(0), saved_blocks + act.outside + act.loss_backward, copies_all))
    copies_during_backward = copies_layer * (0 if cfg.grad_checkpointing else saving_layers)
    created = t.head_grads
    head_copy_grad = t.autocast_copy_outside if setup.mode == "autocast" and t.head_grads else 0.0
    events.append(("head backward", grads_now(created), saved_blocks + act.outside - act.log_softmax
                   + act.head_backward + head_copy_grad, copies_during_backward + t.autocast_copy_outside))
    remaining = saved_blocks
    outside_rest = act.outside - act.log_softmax
    for i in reversed(range(first, L)):
        block_saved = act.per_layer[i]
        recomputed = act.full_layer if cfg.grad_checkpointing else 0.0
        copies = copies_layer * ((i - first + 1) if not cfg.grad_checkpointing else 1)
        # autocast computes a weight gradient in 16-bit before it is cast into the fp32 .grad
        copy_grad = 2 * t.largest_block_linear if setup.mode == "autocast" and t.per_layer_grads else 0.0
        created_after = created + t.per_layer_grads
        events.append((f"block {i} backward", grads_now(created_after),
                       remaining + recomputed + outside_rest + act.layer_backward + copy_grad, copies))
        remaining -= block_saved
        created = created_after
    created += t.embedding_grads
    events.append(("backward end", grads_now(created), outside_rest if first < L else 0.0, 0.0))
    fb_name, fb_grads, fb_acts, fb_copies = max(events, key=lambda e: e[1] + e[2] + e[3])
    fwd_bwd = base + fb_grads + fb_acts + fb_copies

    # ---- optimizer step: all gradients, states and the optimizer's temporaries
    opt_temp = _optimizer_temporaries(cfg, t, setup, world, offload_opt)
    opt_phase = weights_dev + grads_dev_final + states_dev + opt_temp
    peak_phase, per_device = _peak(
        cfg, fwd_bwd, opt_phase,
        {"weights": weights_dev + fb_copies, "gradients": fb_grads, "optimizer": states_dev, "activations": fb_acts},
        {"weights": weights_dev, "gradients": grads_dev_final, "optimizer": states_dev + opt_temp,
         "activations": 0.0})
    overhead = per_device["overhead"]
    host_ram = _host_ram(cfg, spec, t, cpu_ram)

    # ---- communication per optimizer step (ring all-reduce / reduce-scatter / all-gather, bytes sent per device)
    ring = (world - 1) / world if world > 1 else 0.0
    grad_elems_bytes = t.trainable_numel * setup.grad_bytes
    if zero == 3:
        comm = ring * (2 * t.total_numel * setup.weight_bytes + grad_elems_bytes)   # 3Ψ: 2 gathers + 1 reduce
        comm_formula = "ZeRO-3: (2*params*weight_bytes + trainable*grad_bytes) * (N-1)/N  [3Ψ]"
    else:
        comm = ring * 2 * grad_elems_bytes                                            # 2Ψ
        comm_formula = ("DDP all-reduce" if zero == 0 else f"ZeRO-{zero} reduce-scatter + all-gather") + \
            " 2*trainable*grad_bytes * (N-1)/N  [2Ψ]"

    gpu_memory = cfg.gpu_memory_bytes
    if light:
        return Estimate(
            params_total=t.total_numel, params_trainable=t.trainable_numel, per_device=per_device,
            cpu_ram=int(round(cpu_ram)), peak_phase=peak_phase, communication_bytes_per_step=int(round(comm)),
            assumptions={}, phases={"forward_backward": int(fwd_bwd), "optimizer_step": int(opt_phase)},
            explain={}, fits=(per_device["total"] <= gpu_memory) if gpu_memory is not None else None,
            gpu_memory=gpu_memory, host_ram_bytes=host_ram)

    # ---- explanations
    wq = f"; {t.quantized_numel:,} linear-layer values quantized to {cfg.quant}" if t.quantized_numel else ""
    explain["weights"] = (
        f"{t.total_numel:,} params × {setup.weight_bytes} B{wq}"
        + (f" + {t.adapter_numel:,} adapter params × 4 B" if t.adapter_numel else "")
        + f" = {weights_full:,.0f} B"
        + (f"; ZeRO-3: /{world} + gathered parameters kept within the reuse distance and one prefetch "
           f"bucket ({gathered:,.0f} B)" if zero == 3 else "")
        + (" (offloaded to CPU)" if offload_params else "")
        + (f"; + 16-bit autocast copies of linear weights alive at the peak: {fb_copies:,.0f} B"
           if peak_phase == "forward_backward" and fb_copies else ""))
    explain["gradients"] = (
        f"{t.trainable_numel:,} trainable × {setup.grad_bytes} B = {grads_full:,.0f} B"
        + (f"; ZeRO-{zero}: /{world} + reduce buckets {bucket:,.0f} B" if zero >= 2 else "")
        + (f" ({ZERO3_REDUCE_BUCKET:,} elements, allocated whole)" if zero == 3 and bucket else "")
        + (f"; at the peak ({fb_name}) {fb_grads:,.0f} B exist" if peak_phase == "forward_backward" else ""))
    states_note = _optimizer_formula(cfg, setup)
    explain["optimizer"] = (
        f"{cfg.optimizer}: {states_note} on {t.trainable_numel:,} trainable = {states_full:,.0f} B"
        + (f"; ZeRO-{zero}: /{world}" if zero >= 1 and not offload_opt else "")
        + ("; offloaded to CPU" if offload_opt else "")
        + (f"; step temporaries {opt_temp:,.0f} B" if peak_phase == "optimizer_step" else ""))
    explain["activations"] = act.formula + (f"; at the peak ({fb_name}) {fb_acts:,.0f} B"
                                            if peak_phase == "forward_backward" else "; freed before the step")
    explain["overhead"] = _overhead_formula(cfg, overhead, max(fwd_bwd, opt_phase))
    explain["total"] = (f"max(forward/backward {fwd_bwd:,.0f} B at {fb_name}, optimizer step {opt_phase:,.0f} B)"
                        f" + overhead = {per_device['total']:,} B")
    explain["communication"] = comm_formula + f" = {comm:,.0f} B"
    if offload_opt:
        explain["cpu_ram"] = (f"offloaded states + fp32 gradient partition{'s' if zero == 3 else ''} (+ weights) × "
                              f"{cfg.gpus} processes/node")
    explain["host_ram"] = _host_ram_formula(cfg, spec, host_ram)
    if cfg.zero > 0 and cfg.mixed_precision == "no" and cfg.effective_precision != "fp32":
        notes.append("DeepSpeed with 16-bit --precision and no --mixed-precision trains without fp32 master weights")
    gpu_memory = cfg.gpu_memory_bytes
    return Estimate(
        params_total=t.total_numel, params_trainable=t.trainable_numel, per_device=per_device,
        cpu_ram=int(round(cpu_ram)), peak_phase=peak_phase, communication_bytes_per_step=int(round(comm)),
        assumptions=_assumptions(cfg, spec, setup, overhead), phases={"forward_backward": int(fwd_bwd),
                                                              "optimizer_step": int(opt_phase)},
        explain=explain, fits=(per_device["total"] <= gpu_memory) if gpu_memory is not None else None,
        gpu_memory=gpu_memory, notes=notes, host_ram_bytes=host_ram)


def _peak(cfg: Any, fwd_bwd: float, opt_phase: float, at_forward_backward: dict[str, float],
          at_step: dict[str, float]) -> tuple[str, dict[str, int]]:
    """The peak phase and its rows (those of the larger phase), with the overhead and the total."""
    peak_phase, rows = (("forward_backward", at_forward_backward) if fwd_bwd >= opt_phase
                        else ("optimizer_step", at_step))
    per_device = {k: int(round(v)) for k, v in rows.items()}
    per_device["overhead"] = overhead_bytes(cfg, max(fwd_bwd, opt_phase))
    per_device["total"] = sum(per_device.values())
    return peak_phase, per_device


def _fsdp_estimate(cfg: Any, spec: ModelSpec, setup: _Setup, t: _Tensors, act: _Activations,
                   light: bool) -> Estimate:
    """FSDP FULL_SHARD as `llmkit launch --strategy fsdp` has accelerate run it (FSDP1, TRANSFORMER_BASED_WRAP,
    BACKWARD_PRE, use_orig_params, accelerate's default limit_all_gathers), read off torch 2.13's
    torch/distributed/fsdp/_runtime_utils.py and _flat_param.py and accelerate 1.15's accelerator.py and state.py:
    - one FlatParameter per block and the root's for the rest (embeddings, final norm, head); each rank keeps a 1/N
      shard of each in the stored dtype. Under --mixed-precision accelerate sets MixedPrecision(param_dtype =
      reduce_dtype = the 16-bit dtype) (FullyShardedDataParallelPlugin.set_mixed_precision) and upcasts the shards to
      fp32 (Accelerator.prepare_model), so the shards are the fp32 master weights, forward and backward run on 16-bit
      gathered copies (with autocast on top: no other weight copies) and gradients are computed in 16 bits;
    - a block is gathered for its forward and freed after it, then gathered again for its backward, BACKWARD_PRE
      prefetching the next one: two blocks at once in backward (the rate limiter allows no more). The root is not
      freed after its forward (_post_forward_reshard): it stays gathered through forward and backward;
    - a unit's gradient is computed unsharded over its whole FlatParameter (use_orig_params fills frozen parts with
      zeros), reduce-scattered into a padded 1/N shard (_get_reduce_scatter_tensors) and cast to the stored dtype
      (_cast_grad_to_param_dtype). The root's unsharded gradient lives from the head's backward to the end;
    - with --grad-accum > 1 the Trainer runs every micro-step but the last under accelerate's no_sync, where FSDP
      keeps every unit's unsharded gradient (FlatParamHandle.prepare_gradient_for_backward);
    - the optimizer steps the 1-D sharded views of the original parameters: its states are 1/N, and Adafactor
      cannot factor a 1-D tensor (a full fp32 second moment).
    Blocks are averaged over an encoder-decoder's encoder and decoder blocks."""
    N = setup.world
    L = spec.layers + spec.decoder_layers
    stored, compute = setup.weight_bytes, setup.compute_bytes
    block_numel = t.per_layer_params_bytes / stored
    root_numel = t.total_numel - block_numel * L
    first = _first_trainable_layer(cfg, spec)
    trained_blocks = L - first if t.per_layer_grads else 0
    if cfg.peft != "none":
        # transformers' update_fsdp_plugin_peft adds peft's fsdp_auto_wrap_policy: every trainable adapter layer is a
        # unit of its own, so the blocks' and the root's FlatParameters are frozen and only adapters have gradients
        block_grad, root_grad = t.per_layer_grads, t.head_grads
        block_grad_shard, sharded_grads = block_grad / N, t.grads / N
        reduce_scattered = t.grads
    else:
        trained_root_numel = root_numel if t.head_grads or t.embedding_grads else 0.0
        block_grad = block_numel * compute if trained_blocks else 0.0
        root_grad = trained_root_numel * compute
        block_grad_shard = block_numel * stored / N if trained_blocks else 0.0
        sharded_grads = (trained_blocks * block_numel + trained_root_numel) * stored / N
        reduce_scattered = trained_blocks * block_grad + root_grad

    sharded_weights = t.weights / N
    states = (t.trainable_numel * 4 if cfg.optimizer == "adafactor" else t.states) / N
    # the reduce-scatter's output shard, and its cast to the stored dtype
    reduce_buffer = block_grad / N + (block_grad_shard if stored != compute else 0.0)
    no_sync_grads = trained_blocks * block_grad + root_grad if cfg.grad_accum > 1 else 0.0

    def gathered(blocks: int) -> float:
        return (root_numel + blocks * block_numel) * compute

    # ---- forward/backward, walked block by block: (event, gathered weights, gradients, activations)
    saved_blocks = sum(act.per_layer)
    outside_rest = act.outside - act.log_softmax
    frozen_peak = act.frozen_forward if first > 0 else 0.0
    events = [("forward", gathered(1), no_sync_grads,
               saved_blocks + act.outside + max(act.logits_forward, frozen_peak)),
              ("loss backward", gathered(2), no_sync_grads, saved_blocks + act.outside + act.loss_backward),
              ("head backward", gathered(2), no_sync_grads or root_grad,
               saved_blocks + outside_rest + act.head_backward)]
    remaining = saved_blocks
    for i in reversed(range(first, L)):
        reduced = (L - 1 - i) * block_grad_shard
        unsharded = no_sync_grads or root_grad + block_grad
        recomputed = act.full_layer if cfg.grad_checkpointing else 0.0
        events.append((f"block {i} backward", gathered(2), reduced + unsharded + reduce_buffer,
                       remaining + recomputed + outside_rest + act.layer_backward))
        remaining -= act.per_layer[i]
    events.append(("backward end", gathered(0), sharded_grads + root_grad + root_grad / N,
                   outside_rest if first < L else 0.0))
    fb_name, fb_gathered, fb_grads, fb_acts = max(events, key=lambda e: e[1] + e[2] + e[3])
    fwd_bwd = sharded_weights + states + fb_gathered + fb_grads + fb_acts

    # ---- optimizer step: the shards alone, with the step's temporaries on 1/N of the parameters
    opt_temp = _optimizer_temporaries(cfg, t, setup, N, False) / N
    opt_phase = sharded_weights + sharded_grads + states + opt_temp
    peak_phase, per_device = _peak(
        cfg, fwd_bwd, opt_phase,
        {"weights": sharded_weights + fb_gathered, "gradients": fb_grads, "optimizer": states,
         "activations": fb_acts},
        {"weights": sharded_weights, "gradients": sharded_grads, "optimizer": states + opt_temp, "activations": 0.0})
    overhead = per_device["overhead"]
    host_ram = _host_ram(cfg, spec, t, 0.0)
    # every micro-step gathers all parameters twice (forward, backward); the gradients are reduce-scattered once
    ring = (N - 1) / N if N > 1 else 0.0
    comm = ring * (2 * cfg.grad_accum * t.total_numel * compute + reduce_scattered)
    gpu_memory = cfg.gpu_memory_bytes
    explain: dict[str, str] = {}
    if not light:
        explain = {
            "weights": f"{t.total_numel:,} params × {stored} B / {N} shards = {sharded_weights:,.0f} B; gathered "
                       f"{compute}-byte units at the peak ({fb_name}): the root ({root_numel:,.0f} params, kept "
                       f"through forward and backward) + up to 2 blocks ({block_numel:,.0f} params each) = "
                       f"{fb_gathered:,.0f} B",
            "gradients": f"shards {sharded_grads:,.0f} B after the backward (1/{N} of "
                         + ("the adapters', their own FSDP units" if cfg.peft != "none" else
                            f"the trained units' in {stored}-byte values")
                         + f"); the unit in backward's unsharded gradient (and the root's) and the reduce-scatter "
                           f"shard"
                         + ("; no_sync keeps every unit's unsharded gradient while accumulating"
                            if no_sync_grads else "") + f"; at the peak ({fb_name}) {fb_grads:,.0f} B",
            "optimizer": f"{cfg.optimizer}: {_optimizer_formula(cfg, setup)} on {t.trainable_numel:,} trainable / "
                         f"{N} = {states:,.0f} B" + ("; unfactored: the sharded views are 1-D"
                                                      if cfg.optimizer == "adafactor" else "")
                         + (f"; step temporaries {opt_temp:,.0f} B" if peak_phase == "optimizer_step" else ""),
            "activations": act.formula + (f"; at the peak ({fb_name}) {fb_acts:,.0f} B"
                                          if peak_phase == "forward_backward" else "; freed before the step"),
            "overhead": _overhead_formula(cfg, overhead, max(fwd_bwd, opt_phase)),
            "total": f"max(forward/backward {fwd_bwd:,.0f} B at {fb_name}, optimizer step {opt_phase:,.0f} B)"
                     f" + overhead = {per_device['total']:,} B",
            "communication": f"FSDP: (2*grad_accum*params*{compute} B + reduce-scattered gradients "
                             f"{reduce_scattered:,.0f} B) * (N-1)/N = {comm:,.0f} B",
            "host_ram": _host_ram_formula(cfg, spec, host_ram),
        }
    return Estimate(
        params_total=t.total_numel, params_trainable=t.trainable_numel, per_device=per_device, cpu_ram=0,
        peak_phase=peak_phase, communication_bytes_per_step=int(round(comm)),
        assumptions={} if light else {**_assumptions(cfg, spec, setup, overhead), "strategy": "fsdp"},
        phases={"forward_backward": int(fwd_bwd), "optimizer_step": int(opt_phase)}, explain=explain,
        fits=(per_device["total"] <= gpu_memory) if gpu_memory is not None else None, gpu_memory=gpu_memory,
        host_ram_bytes=host_ram)


def _zero3_gathered(t: _Tensors) -> float:
    """Bytes of gathered (whole) parameters on each GPU under ZeRO-3. DeepSpeed releases a module's parameters after
    use only when their next use is more than stage3_max_reuse_distance elements of the trace away; the trace runs
    forward then backward, so the blocks within half that distance of the top stay gathered until their backward (a
    model under that size stays whole), and the rest streams through one prefetch bucket and the module in use."""
    bytes_per_value = t.weights / max(t.total_numel, 1)
    kept = min(t.total_numel, ZERO3_MAX_REUSE_DISTANCE // 2)
    streamed = 0.0
    if t.total_numel > kept:
        streamed = ZERO3_PREFETCH_BUCKET * bytes_per_value + max(t.per_layer_params_bytes, t.largest_outside_block)
    return kept * bytes_per_value + streamed


def _overhead_formula(cfg: Any, overhead: int, tensor_peak: float) -> str:
    if cfg.overhead is not None:
        return f"--overhead {overhead:,} B per process"
    if cfg.device == "cpu":
        return "0 on CPU: the rows are the tensors alone"
    return (f"CUDA context {CUDA_CONTEXT_BYTES:,} B + caching-allocator reserve {ALLOCATOR_RESERVE:.0%} of the tensor "
            f"peak {tensor_peak:,.0f} B = {overhead:,} B (defaults, not calibrated on a GPU yet)")


def _checkpoint_value_bytes(spec: ModelSpec) -> int | None:
    """Bytes per value of the checkpoint on disk, from its config.json (None when it does not say)."""
    dtype = spec.config_fields.get("dtype") or spec.config_fields.get("torch_dtype")
    return CHECKPOINT_DTYPE_BYTES.get(str(dtype).removeprefix("torch."))


def _host_ram(cfg: Any, spec: ModelSpec, t: _Tensors, offload: float) -> dict[str, int]:
    """Host RAM per node: loading the model (each of the node's processes loads its own copy), the ZeRO offload
    buffers, and the larger of the two (they are not alive together). See the module docstring."""
    on_disk = _checkpoint_value_bytes(spec)
    if cfg.quant != "none":
        # bitsandbytes quantizes each weight as it reaches the GPU: the host only reads the 16-bit checkpoint (on CPU
        # the quantized model stays there too)
        load = t.total_numel * (on_disk or 2) + (t.weights if cfg.device == "cpu" else 0)
    else:
        loaded = DTYPE_BYTES[cfg.effective_precision]
        converted = on_disk is not None and on_disk != loaded
        load = t.total_numel * loaded + (t.total_numel * on_disk if converted else 0)
    load *= cfg.gpus
    offload_bytes = int(round(offload))
    return {"load": int(load), "offload": offload_bytes, "total": max(int(load), offload_bytes)}


def _host_ram_formula(cfg: Any, spec: ModelSpec, host_ram: dict[str, int]) -> str:
    on_disk = _checkpoint_value_bytes(spec)
    disk = f"checkpoint {on_disk} B/value" if on_disk else "checkpoint assumed in the loaded dtype"
    return (f"load {host_ram['load']:,} B ({disk}, loaded as {cfg.effective_precision}"
            + (f", quantized on the {'CPU' if cfg.device == 'cpu' else 'GPU'}" if cfg.quant != "none" else "")
            + f", × {cfg.gpus} processes/node); offload {host_ram['offload']:,} B; total = the larger "
              f"{host_ram['total']:,} B")


def _optimizer_temporaries(cfg: Any, t: _Tensors, setup: _Setup, world: int, offloaded: bool) -> float:
    if offloaded:
        return 0.0
    if cfg.zero >= 1 and setup.master_bytes:
        # DeepSpeed casts its gradient partition to fp32 for the step
        return t.trainable_numel * 4 / world
    if cfg.optimizer == "adamw":
        # torch's foreach AdamW (the default on GPU) materialises sqrt(v) for every parameter at once
        return t.trainable_numel * setup.state_dtype_bytes
    if cfg.optimizer == "adafactor":
        return 2 * t.largest_trainable_bytes            # (grad^2 + eps) and the update, one tensor at a time
    return 0.0


def _optimizer_formula(cfg: Any, setup: _Setup) -> str:
    d = setup.state_dtype_bytes
    master = f" + {setup.master_bytes} B fp32 master" if setup.master_bytes else ""
    return {
        "adamw": f"2 states × {d} B{master}", "adamw-fused": f"2 states × {d} B{master}",
        "adamw-8bit": f"2 uint8 states + fp32 absmax per {ADAM8BIT_BLOCK}{master}",
        "paged-adamw-8bit": f"2 uint8 states (paged) + fp32 absmax per {ADAM8BIT_BLOCK}{master}",
        "adafactor": f"fp32 row + column vectors per matrix{master}", "sgd": f"no state{master}",
        "sgd-momentum": f"1 momentum buffer × {d} B{master}",
    }[cfg.optimizer]


def _inference(cfg: Any, spec: ModelSpec, setup: _Setup, t: _Tensors) -> Estimate:
    b, s = cfg.batch_size, cfg.seq_len
    cd = setup.compute_bytes
    layers = spec.layers if spec.family != "encoder-decoder" else spec.decoder_layers
    kv = 2 * layers * spec.kv_heads * spec.head_dim * s * b * cd
    if spec.family == "encoder":
        kv = 0
    h, I_ = spec.hidden, spec.intermediate
    step = b * s * (2 * h * cd + 3 * I_ * cd) + (2 * b * spec.heads * s * s * cd if cfg.attention == "eager" else 0)
    logits = b * spec.vocab * (cd + 4) if spec.family != "encoder" else b * s * spec.vocab * cd
    acts = step + logits
    weights = t.weights
    if cfg.zero == 3:
        weights = weights / setup.world + 2 * t.per_layer_params_bytes
    overhead = overhead_bytes(cfg, weights + kv + acts)
    per_device = {"weights": int(weights), "gradients": 0, "optimizer": 0, "activations": int(kv + acts),
                  "overhead": overhead}
    per_device["total"] = sum(per_device.values())
    gpu_memory = cfg.gpu_memory_bytes
    explain = {
        "weights": f"{t.total_numel:,} params × {setup.weight_bytes} B"
                   + (f" ({t.quantized_numel:,} quantized to {cfg.quant})" if t.quantized_numel else ""),
        "activations": f"KV cache 2*layers*kv_heads*head_dim*s*b*{cd} = 2*{layers}*{spec.kv_heads}*"
                       f"{spec.head_dim}*{s}*{b}*{cd} = {kv:,} B; one step b*s*(2h+3I)*{cd}"
                       + (" + eager scores" if cfg.attention == "eager" else "") + f" = {step:,} B; "
                       f"last-token logits {logits:,} B",
        "overhead": _overhead_formula(cfg, overhead, weights + kv + acts),
        "total": f"weights + KV cache + activations + overhead = {per_device['total']:,} B",
    }
    host_ram = _host_ram(cfg, spec, t, 0)
    explain["host_ram"] = _host_ram_formula(cfg, spec, host_ram)
    return Estimate(
        params_total=t.total_numel, params_trainable=0, per_device=per_device, cpu_ram=0, peak_phase="inference",
        communication_bytes_per_step=0, assumptions=_assumptions(cfg, spec, setup, overhead),
        phases={"inference": int(weights + kv + acts)}, explain=explain,
        fits=(per_device["total"] <= gpu_memory) if gpu_memory is not None else None, gpu_memory=gpu_memory,
        host_ram_bytes=host_ram)


def _assumptions(cfg: Any, spec: ModelSpec, setup: _Setup, overhead: int) -> dict[str, Any]:
    out = spec.assumptions()
    out.update({
        "task": setup.task, "mode": cfg.mode, "precision": cfg.effective_precision,
        "mixed_precision": cfg.mixed_precision, "compute": setup.mode, "quant": cfg.quant,
        "batch_size": cfg.batch_size, "seq_len": cfg.seq_len, "grad_accum": cfg.grad_accum,
        "grad_checkpointing": cfg.grad_checkpointing, "attention": cfg.attention, "optimizer": cfg.optimizer,
        "peft": cfg.peft, "zero": cfg.zero, "offload": cfg.offload, "world_size": setup.world,
        "device": cfg.device, "overhead_bytes": overhead, "overhead_calibrated": cfg.overhead is not None,
        "optimizer_implementation": {"adamw": "torch foreach (GPU default): sqrt(v) temporary for all params",
                                     "adamw-fused": "torch fused: no temporaries"}.get(cfg.optimizer, cfg.optimizer),
        "attention_kernel": ("eager: keeps the s×s probabilities" if cfg.attention == "eager" else
                             f"{cfg.attention}: no s×s tensors (on CPU, sdpa with dropout falls back to eager)"),
    })
    if cfg.gpu_memory is not None and gpu_memory_size(cfg.gpu_memory)[1]:
        out["gpu_memory_read_as"] = gpu_memory_size(cfg.gpu_memory)[1]
    if cfg.peft == "lora":
        out["lora_rank"] = cfg.lora_rank
        out["lora_targets"] = list(cfg.lora_targets)
    if cfg.peft in ("prompt-tuning", "p-tuning", "prefix-tuning"):
        out["num_virtual_tokens"] = cfg.num_virtual_tokens
    return out
