"""Architecture numbers of a model, read without torch: from a config.json, a shipped preset, a local dir, a hub id,
or a bare parameter count (`--params 1.4B`).

The memory model (`llmkit.memory`) needs the shape of every parameter tensor (to tell linear layers from embeddings
and norms, to count LoRA/IA3 parameters, to find the largest tensor) and the sizes behind the activations (layers,
hidden, heads, kv heads, intermediate, vocab). `ModelSpec.parameter_groups()` lists the tensors the way transformers
builds them, so `params_total` equals `sum(p.numel() for p in model.parameters())` for the supported model types.

The rule behind `--params N` (shown as assumptions in the output):
  * layers and head size come from the nearest row of a table of published decoder shapes (GPT-3 / LLaMA sizes);
  * hidden is solved from N = layers * 12 * hidden^2 + 2 * vocab * hidden (a LLaMA block with SwiGLU at
    intermediate = 8/3 * hidden has 12 * hidden^2 weights; untied input and output embeddings), rounded to a
    multiple of the head size;
  * vocab 32,000, kv heads = heads, SwiGLU, RMSNorm, untied embeddings;
  * the estimate still uses exactly N parameters: the linear layers absorb the rounding.
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from llmkit.errors import ConfigError

Family = str      # "decoder" | "encoder" | "encoder-decoder"
PRESET_KIND = "models"

# Published decoder shapes (GPT-3 paper table 2.1, LLaMA 1/2): (parameters, layers, head size).
_SHAPE_TABLE = (
    (125e6, 12, 64), (350e6, 24, 64), (760e6, 24, 96), (1.3e9, 24, 128), (2.7e9, 32, 80),
    (6.7e9, 32, 128), (13e9, 40, 128), (33e9, 60, 128), (70e9, 80, 128), (175e9, 96, 128),
)
_PARAMS_RULE_VOCAB = 32000

_SUFFIXES = {"": 1, "k": 1e3, "m": 1e6, "b": 1e9, "g": 1e9, "t": 1e12}


def parse_param_count(text: str | int | float) -> int:
    """'1.4B' -> 1_400_000_000; also 330M, 7e9, 125m, 350k, 1,000,000. Raises ConfigError naming --params."""
    if isinstance(text, (int, float)) and not isinstance(text, bool):
        value = float(text)
    else:
        raw = str(text).strip().replace(",", "").replace("_", "")
        match = re.fullmatch(r"([+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:e[+-]?\d+)?)\s*([kmbgt]?)", raw, re.IGNORECASE)
        if not match:
            raise ConfigError(f"--params: cannot read {text!r} as a parameter count (e.g. 125M, 1.4B, 7e9)",
                              hint="write a number with an optional K/M/B suffix: 125M, 1.4B, 7e9")
        value = float(match.group(1)) * _SUFFIXES[match.group(2).lower()]
    if not math.isfinite(value) or value <= 0:
        raise ConfigError(f"--params must be greater than 0 (got {text!r})", hint="e.g. --params 1.4B")
    if value < 1000:
        raise ConfigError(f"--params {text!r} is {value:.0f} parameters, too small for a transformer",
                          hint="did you forget the suffix? e.g. --params 125M")
    return int(round(value))


@dataclass(frozen=True)
class ParamGroup:
    """`count` tensors of one shape, e.g. the q_proj weight of every block."""

    name: str                  # module path inside one block or the model ("mlp.gate_proj.weight")
    shape: tuple[int, ...]     # (out_features, in_features) for linear weights, as torch stores them
    count: int = 1
    kind: str = "linear"       # linear | bias | norm | embedding | head
    role: str = ""             # q k v o qkv gate up down fc_in fc_out cross_q ... (LoRA targets); "" elsewhere
    stack: str = ""            # "" (single stack), "encoder" or "decoder" (encoder-decoder models)
    in_block: bool = False     # belongs to a transformer block (one copy per layer)

    @property
    def numel_each(self) -> int:
        return math.prod(self.shape)

    @property
    def numel(self) -> int:
        return self.numel_each * self.count


@dataclass(frozen=True)
class ModelSpec:
    """The numbers the memory model needs. Sizes are counts, not bytes."""

    name: str
    source: str                 # preset | config | hub | params
    model_type: str
    family: Family
    layers: int                 # blocks in the (encoder or decoder) stack; encoder-decoder: encoder blocks
    hidden: int
    heads: int
    kv_heads: int
    head_dim: int
    intermediate: int
    vocab: int
    activation: str             # swiglu | gelu | relu | gated-gelu
    norm: str                   # rmsnorm | layernorm
    tied_embeddings: bool
    max_positions: int
    decoder_layers: int = 0     # encoder-decoder only
    type_vocab: int = 0         # BERT token types
    attention_bias: bool = False
    mlp_bias: bool = False
    attention_dropout: float = 0.0
    hidden_dropout: float = 0.0
    num_labels: int = 2
    params_override: int | None = None   # --params: the estimate uses exactly this many parameters
    approximated: str | None = None      # why the layout is a guess (unknown model_type)
    config_fields: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)

    # ---- tasks -------------------------------------------------------------------------------------------------
    @property
    def default_task(self) -> str:
        return {"decoder": "causal-lm", "encoder": "masked-lm", "encoder-decoder": "seq2seq"}[self.family]

    @property
    def upcasts_logits(self) -> bool:
        """transformers' shared causal-LM loss casts logits to fp32 (`logits.float()`); BERT MLM and T5 do not."""
        return self.family == "decoder"

    # ---- parameters --------------------------------------------------------------------------------------------
    def parameter_groups(self, task: str | None = None) -> list[ParamGroup]:
        task = task or self.default_task
        builder = _LAYOUTS.get(self.model_type, _llama_layout if self.activation == "swiglu" else _gpt2_layout)
        if self.family == "encoder" and self.model_type not in _LAYOUTS:
            builder = _bert_layout
        if self.family == "encoder-decoder" and self.model_type not in _LAYOUTS:
            builder = _t5_layout
        groups = builder(self, task)
        if self.params_override is not None:
            groups = _scale_to(groups, self.params_override)
        return groups

    def params_total(self, task: str | None = None) -> int:
        return sum(g.numel for g in self.parameter_groups(task))

    def assumptions(self) -> dict[str, Any]:
        out = {"model": self.name, "model_source": self.source, "model_type": self.model_type, "family": self.family,
               "layers": self.layers, "hidden": self.hidden, "heads": self.heads, "kv_heads": self.kv_heads,
               "head_dim": self.head_dim, "intermediate": self.intermediate, "vocab": self.vocab,
               "activation": self.activation, "norm": self.norm, "tied_embeddings": self.tied_embeddings}
        if self.family == "encoder-decoder":
            out["decoder_layers"] = self.decoder_layers
        if self.params_override is not None:
            out["architecture_rule"] = ("--params: layers and head size from the nearest published decoder shape, "
                                        "hidden solved from params = 12*layers*hidden^2 + 2*vocab*hidden")
        if self.approximated:
            out["approximated"] = self.approximated
        return out


# ---- layouts: the tensors transformers creates, per model type ----------------------------------------------------

def _linear(name: str, out_f: int, in_f: int, count: int, role: str, bias: bool, stack: str = "",
            in_block: bool = True) -> list[ParamGroup]:
    groups = [ParamGroup(f"{name}.weight", (out_f, in_f), count, "linear", role, stack, in_block)]
    if bias:
        groups.append(ParamGroup(f"{name}.bias", (out_f,), count, "bias", role, stack, in_block))
    return groups


def _norm(name: str, size: int, count: int, bias: bool, stack: str = "", in_block: bool = True) -> list[ParamGroup]:
    groups = [ParamGroup(f"{name}.weight", (size,), count, "norm", "", stack, in_block)]
    if bias:
        groups.append(ParamGroup(f"{name}.bias", (size,), count, "norm", "", stack, in_block))
    return groups


def _head(spec: ModelSpec, task: str, hidden: int, causal_head: bool) -> list[ParamGroup]:
    """The task head: lm_head (absent when tied) or a sequence classifier."""
    if task == "seq-cls":
        return [ParamGroup("score.weight" if causal_head else "classifier.weight", (spec.num_labels, hidden), 1,
                           "head", "", "", False)] + (
            [] if causal_head else [ParamGroup("classifier.bias", (spec.num_labels,), 1, "head")])
    if spec.tied_embeddings:
        return []
    return [ParamGroup("lm_head.weight", (spec.vocab, hidden), 1, "head", "", "", False)]


def _llama_layout(spec: ModelSpec, task: str) -> list[ParamGroup]:
    h, n, L = spec.hidden, spec.layers, spec.layers
    q_out, kv_out = spec.heads * spec.head_dim, spec.kv_heads * spec.head_dim
    qkv_bias = spec.attention_bias or spec.model_type == "qwen2"   # Qwen2 has q/k/v biases, no o_proj bias
    groups = [ParamGroup("model.embed_tokens.weight", (spec.vocab, h), 1, "embedding")]
    groups += _linear("self_attn.q_proj", q_out, h, n, "q", qkv_bias)
    groups += _linear("self_attn.k_proj", kv_out, h, n, "k", qkv_bias)
    groups += _linear("self_attn.v_proj", kv_out, h, n, "v", qkv_bias)
    groups += _linear("self_attn.o_proj", h, q_out, n, "o", spec.attention_bias)
    if spec.model_type == "qwen3":
        groups += _norm("self_attn.q_norm", spec.head_dim, n, False) + _norm("self_attn.k_norm", spec.head_dim, n, False)
    groups += _linear("mlp.gate_proj", spec.intermediate, h, n, "gate", spec.mlp_bias)
    groups += _linear("mlp.up_proj", spec.intermediate, h, n, "up", spec.mlp_bias)
    groups += _linear("mlp.down_proj", h, spec.intermediate, n, "down", spec.mlp_bias)
    groups += _norm("input_layernorm", h, L, False) + _norm("post_attention_layernorm", h, L, False)
    groups += _norm("model.norm", h, 1, False, in_block=False)
    return groups + _head(spec, task, h, causal_head=True)


def _gpt2_layout(spec: ModelSpec, task: str) -> list[ParamGroup]:
    h, n = spec.hidden, spec.layers
    groups = [ParamGroup("transformer.wte.weight", (spec.vocab, h), 1, "embedding"),
              ParamGroup("transformer.wpe.weight", (spec.max_positions, h), 1, "embedding")]
    groups += _norm("ln_1", h, n, True)
    groups += _linear("attn.c_attn", 3 * h, h, n, "qkv", True)
    groups += _linear("attn.c_proj", h, h, n, "o", True)
    groups += _norm("ln_2", h, n, True)
    groups += _linear("mlp.c_fc", spec.intermediate, h, n, "fc_in", True)
    groups += _linear("mlp.c_proj", h, spec.intermediate, n, "fc_out", True)
    groups += _norm("transformer.ln_f", h, 1, True, in_block=False)
    return groups + _head(spec, task, h, causal_head=True)


def _bloom_layout(spec: ModelSpec, task: str) -> list[ParamGroup]:
    h, n = spec.hidden, spec.layers
    groups = [ParamGroup("transformer.word_embeddings.weight", (spec.vocab, h), 1, "embedding")]
    groups += _norm("transformer.word_embeddings_layernorm", h, 1, True, in_block=False)
    groups += _norm("input_layernorm", h, n, True)
    groups += _linear("self_attention.query_key_value", 3 * h, h, n, "qkv", True)
    groups += _linear("self_attention.dense", h, h, n, "o", True)
    groups += _norm("post_attention_layernorm", h, n, True)
    groups += _linear("mlp.dense_h_to_4h", spec.intermediate, h, n, "fc_in", True)
    groups += _linear("mlp.dense_4h_to_h", h, spec.intermediate, n, "fc_out", True)
    groups += _norm("transformer.ln_f", h, 1, True, in_block=False)
    return groups + _head(spec, task, h, causal_head=True)


def _bert_layout(spec: ModelSpec, task: str) -> list[ParamGroup]:
    h, n = spec.hidden, spec.layers
    groups = [ParamGroup("embeddings.word_embeddings.weight", (spec.vocab, h), 1, "embedding"),
              ParamGroup("embeddings.position_embeddings.weight", (spec.max_positions, h), 1, "embedding")]
    if spec.type_vocab:
        groups.append(ParamGroup("embeddings.token_type_embeddings.weight", (spec.type_vocab, h), 1, "embedding"))
    groups += _norm("embeddings.LayerNorm", h, 1, True, in_block=False)
    groups += _linear("attention.self.query", h, h, n, "q", True)
    groups += _linear("attention.self.key", h, h, n, "k", True)
    groups += _linear("attention.self.value", h, h, n, "v", True)
    groups += _linear("attention.output.dense", h, h, n, "o", True)
    groups += _norm("attention.output.LayerNorm", h, n, True)
    groups += _linear("intermediate.dense", spec.intermediate, h, n, "fc_in", True)
    groups += _linear("output.dense", h, spec.intermediate, n, "fc_out", True)
    groups += _norm("output.LayerNorm", h, n, True)
    if task == "seq-cls":   # BertForSequenceClassification keeps the pooler
        groups += _linear("bert.pooler.dense", h, h, 1, "", True, in_block=False)
        return groups + _head(spec, task, h, causal_head=False)
    # BertForMaskedLM: no pooler; a transform (dense + LayerNorm) and a decoder tied to the embeddings, with a bias
    groups += [ParamGroup("cls.predictions.transform.dense.weight", (h, h), 1, "head"),
               ParamGroup("cls.predictions.transform.dense.bias", (h,), 1, "head"),
               ParamGroup("cls.predictions.transform.LayerNorm.weight", (h,), 1, "head"),
               ParamGroup("cls.predictions.transform.LayerNorm.bias", (h,), 1, "head"),
               ParamGroup("cls.predictions.bias", (spec.vocab,), 1, "head")]
    if not spec.tied_embeddings:
        groups.append(ParamGroup("cls.predictions.decoder.weight", (spec.vocab, h), 1, "head"))
    return groups


def _t5_layout(spec: ModelSpec, task: str) -> list[ParamGroup]:
    h, inner, d_ff = spec.hidden, spec.heads * spec.head_dim, spec.intermediate
    buckets = int(spec.config_fields.get("relative_attention_num_buckets", 32))
    gated = spec.activation == "gated-gelu"
    groups = [ParamGroup("shared.weight", (spec.vocab, h), 1, "embedding")]
    for stack, n in (("encoder", spec.layers), ("decoder", spec.decoder_layers)):
        for role in ("q", "k", "v"):
            groups += _linear(f"SelfAttention.{role}", inner, h, n, role, False, stack)
        groups += _linear("SelfAttention.o", h, inner, n, "o", False, stack)
        # only the first block of each stack owns the relative position bias
        groups.append(ParamGroup(f"{stack}.block.0.SelfAttention.relative_attention_bias.weight",
                                 (buckets, spec.heads), 1, "embedding", "", stack, False))
        groups += _norm("layer.0.layer_norm", h, n, False, stack)
        if stack == "decoder":
            for role in ("q", "k", "v"):
                groups += _linear(f"EncDecAttention.{role}", inner, h, n, "cross_" + role, False, stack)
            groups += _linear("EncDecAttention.o", h, inner, n, "cross_o", False, stack)
            groups += _norm("layer.1.layer_norm", h, n, False, stack)
        if gated:
            groups += _linear("DenseReluDense.wi_0", d_ff, h, n, "gate", False, stack)
            groups += _linear("DenseReluDense.wi_1", d_ff, h, n, "up", False, stack)
        else:
            groups += _linear("DenseReluDense.wi", d_ff, h, n, "fc_in", False, stack)
        groups += _linear("DenseReluDense.wo", h, d_ff, n, "down" if gated else "fc_out", False, stack)
        groups += _norm("layer.-1.layer_norm", h, n, False, stack)
        groups += _norm(f"{stack}.final_layer_norm", h, 1, False, stack, in_block=False)
    return groups + _head(spec, task, h, causal_head=False)


_LAYOUTS = {"llama": _llama_layout, "mistral": _llama_layout, "qwen2": _llama_layout, "qwen3": _llama_layout,
            "gpt2": _gpt2_layout, "bloom": _bloom_layout, "bert": _bert_layout, "t5": _t5_layout, "mt5": _t5_layout}


def _scale_to(groups: list[ParamGroup], target: int) -> list[ParamGroup]:
    """--params: keep the rule's embeddings and norms and let the linear layers absorb the difference (rows are
    scaled down to whole numbers, and a last flat tensor takes the remainder so the total is exact)."""
    total = sum(g.numel for g in groups)
    linear = sum(g.numel for g in groups if g.kind == "linear")
    other = total - linear
    if linear and target > other:
        scale, scaled_kinds = (target - other) / linear, ("linear",)
    else:   # a count below the rule's embeddings: shrink everything alike
        scale, scaled_kinds = target / total, ("linear", "bias", "norm", "embedding", "head")
    scaled = [dataclasses.replace(g, shape=(max(1, math.floor(g.shape[0] * scale)),) + g.shape[1:])
              if g.kind in scaled_kinds else g for g in groups]
    remainder = target - sum(g.numel for g in scaled)
    if remainder > 0:
        scaled.append(ParamGroup("params_rounding", (remainder,), 1, "linear"))
    elif remainder < 0:   # only when every tensor hit its one-row floor: an absurdly small --params
        raise ConfigError(f"--params {target:,} is too small for the architecture given",
                          hint="lower --layers/--hidden/--vocab or raise --params")
    return scaled


# ---- where the numbers come from ------------------------------------------------------------------------------------

def from_params(count: int, layers: int | None = None, hidden: int | None = None, heads: int | None = None,
                kv_heads: int | None = None, vocab: int | None = None, intermediate: int | None = None) -> ModelSpec:
    """A LLaMA-shaped decoder of about `count` parameters (see the module docstring for the rule)."""
    _, table_layers, head_dim = min(_SHAPE_TABLE, key=lambda row: abs(math.log(row[0] / count)))
    layers = layers or table_layers
    vocab = vocab or _PARAMS_RULE_VOCAB
    if hidden is None:
        # 12*L*h^2 + 2*V*h - N = 0
        a, b = 12 * layers, 2 * vocab
        root = (-b + math.sqrt(b * b + 4 * a * count)) / (2 * a)
        hidden = max(head_dim, int(round(root / head_dim)) * head_dim)
    if heads is None:
        heads = max(1, hidden // head_dim) if hidden % head_dim == 0 else max(1, hidden // 64)
    if hidden % heads:
        raise ConfigError(f"--hidden {hidden} is not divisible by --heads {heads}",
                          hint="pick a head count that divides the hidden size")
    intermediate = intermediate or int(math.ceil(hidden * 8 / 3 / 256) * 256)
    fields = dict(model_type="llama", hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads,
                  num_key_value_heads=kv_heads or heads, intermediate_size=intermediate, vocab_size=vocab,
                  hidden_act="silu", tie_word_embeddings=False, max_position_embeddings=4096)
    spec = from_config_dict(fields, name=f"{count:,} parameters", source="params")
    return dataclasses.replace(spec, params_override=count)


def load_spec(model: str, overrides: dict[str, int | None] | None = None) -> ModelSpec:
    """A preset name, a dir with config.json, a config.json/yaml file, or a hub id (fails fast when offline)."""
    from llmkit import presets

    path = Path(model).expanduser()
    if path.is_dir():
        config_path = path / "config.json"
        if not config_path.is_file():
            raise ConfigError(f"--model {model}: the directory has no config.json",
                              hint="give a model directory written by save_pretrained, or a preset name")
        fields, source = _read_json(config_path), "config"
    elif path.is_file():
        fields, source = _read_config_file(path), "config"
    elif model in presets.list_presets(PRESET_KIND):
        fields, source = presets.load_preset(PRESET_KIND, model), "preset"
    elif "/" not in model or model.startswith((".", "/", "~")) or model.endswith((".json", ".yaml", ".yml")):
        import difflib

        available = presets.list_presets(PRESET_KIND)
        close = difflib.get_close_matches(model, available, n=3, cutoff=0.4)
        hint = (f"did you mean {', '.join(close)}? " if close else "") + \
            f"presets: {', '.join(available)}; or give a dir/config.json, or a hub id as org/name"
        raise ConfigError(f"--model {model!r} is neither a local path nor a model preset", hint=hint)
    else:
        fields, source = _hub_config(model), "hub"
    # overrides go in before the fields are checked, so --vocab can supply a vocab_size the config lacks
    return from_config_dict(_override_fields(fields, overrides or {}), name=model, source=source)


def _override_fields(fields: dict[str, Any], overrides: dict[str, int | None]) -> dict[str, Any]:
    given = {k: v for k, v in overrides.items() if v is not None}
    fields = dict(fields)
    keys = {"layers": "num_hidden_layers", "hidden": "hidden_size", "heads": "num_attention_heads",
            "kv_heads": "num_key_value_heads", "vocab": "vocab_size", "intermediate": "intermediate_size"}
    for key, value in given.items():
        for alias in _ALIASES[keys[key]]:
            fields.pop(alias, None)
        fields[keys[key]] = value
    if "hidden" in given and "head_dim" in fields:
        fields.pop("head_dim")
    return fields


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ConfigError(f"cannot read {path}: {exc}", hint="it must be a transformers config.json") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path} must hold a JSON object", hint="it must be a transformers config.json")
    return data


def _read_config_file(path: Path) -> dict[str, Any]:
    if path.suffix in (".yaml", ".yml"):
        from llmkit.configio import load_config_file

        return load_config_file(path)
    return _read_json(path)


def _hub_config(model_id: str) -> dict[str, Any]:
    from llmkit.hub import in_hub_cache, require_hub

    if not in_hub_cache(model_id):
        require_hub(model_id, "model config")
    from huggingface_hub import hf_hub_download   # only when the hub is reachable

    from llmkit.errors import ModelLoadError
    try:
        return _read_json(Path(hf_hub_download(model_id, "config.json")))
    except Exception as exc:  # noqa: BLE001 - any hub failure is reported the same way
        raise ModelLoadError(f"cannot fetch config.json of {model_id!r}: {type(exc).__name__}: {exc}",
                             hint="check the id, or pass a local dir or config.json") from None


# field name -> the names transformers configs use for it
_ALIASES = {
    "hidden_size": ("hidden_size", "n_embd", "d_model"),
    "num_hidden_layers": ("num_hidden_layers", "n_layer", "num_layers"),
    "num_attention_heads": ("num_attention_heads", "n_head", "num_heads"),
    "num_key_value_heads": ("num_key_value_heads", "num_kv_heads", "multi_query_group_num"),
    "intermediate_size": ("intermediate_size", "n_inner", "d_ff", "ffn_dim"),
    "vocab_size": ("vocab_size", "padded_vocab_size"),
    "max_position_embeddings": ("max_position_embeddings", "n_positions", "n_ctx"),
}
_KNOWN_FAMILIES = {"llama": "decoder", "mistral": "decoder", "qwen2": "decoder", "qwen3": "decoder",
                   "gpt2": "decoder", "bloom": "decoder", "bert": "encoder", "t5": "encoder-decoder",
                   "mt5": "encoder-decoder"}
_T5_TYPES = ("t5", "mt5")
_DEFAULT_DROPOUT = {"gpt2": 0.1, "bert": 0.1, "t5": 0.1, "mt5": 0.1}
# the feed-forward a T5-style config gets when it names none (transformers' T5Config and MT5Config defaults)
_T5_DEFAULT_FEED_FORWARD = {"t5": "relu", "mt5": "gated-gelu"}


def _get(fields: dict[str, Any], key: str) -> Any:
    for alias in _ALIASES.get(key, (key,)):
        if fields.get(alias) is not None:
            return fields[alias]
    return None


def from_config_dict(fields: dict[str, Any], name: str, source: str) -> ModelSpec:
    """Read a transformers config (as a dict). Missing fields are named in the error."""
    fields = {k: v for k, v in fields.items()}
    model_type = str(fields.get("model_type") or "")
    where = f"{'preset' if source == 'preset' else 'config'} {name}"
    required = ["hidden_size", "num_hidden_layers", "num_attention_heads", "vocab_size"]
    if model_type not in ("gpt2", "bloom"):   # GPT-2's n_inner and BLOOM's MLP default to 4 * hidden
        required.append("intermediate_size")
    if not model_type:
        required.insert(0, "model_type")
    missing = [key for key in required if (_get(fields, key) is None if key != "model_type" else not model_type)]
    if missing:
        raise ConfigError(f"{where} lacks {', '.join(missing)}, needed to size the model",
                          hint="add the missing fields (transformers names), or use --params with --layers/--hidden")
    def count(key: str, fallback: Any = None, value: Any = None) -> int:
        raw = (_get(fields, key) if value is None else value) or fallback
        if isinstance(raw, bool) or not isinstance(raw, (int, float)) or raw != int(raw) or raw <= 0:
            raise ConfigError(f"{where}: {key} must be a positive whole number (got {raw!r})",
                              hint="fix the field (transformers names and types), or re-save the model's config")
        return int(raw)

    hidden = count("hidden_size")
    layers = count("num_hidden_layers")
    heads = count("num_attention_heads")
    vocab = count("vocab_size")
    kv_heads = count("num_key_value_heads", heads)
    intermediate = count("intermediate_size", 4 * hidden)
    max_positions = count("max_position_embeddings", 2048)
    if model_type in _T5_TYPES:
        head_dim = count("d_kv", hidden // heads, fields.get("d_kv"))
    else:
        head_dim = count("head_dim", hidden // heads, fields.get("head_dim"))
    if model_type not in _T5_TYPES and "head_dim" not in fields and hidden % heads:
        raise ConfigError(f"{where}: hidden_size {hidden} is not divisible by num_attention_heads {heads}",
                          hint="fix the config (or --hidden/--heads)")
    if heads % kv_heads:
        raise ConfigError(f"{where}: num_attention_heads {heads} is not a multiple of num_key_value_heads {kv_heads}",
                          hint="fix the config (or --heads/--kv-heads)")
    act = str(fields.get("hidden_act") or fields.get("activation_function") or fields.get("feed_forward_proj") or "")
    approximated = None
    family = _KNOWN_FAMILIES.get(model_type)
    if family is None:
        if fields.get("is_encoder_decoder"):
            family = "encoder-decoder"
        elif any("MaskedLM" in a for a in fields.get("architectures") or []):
            family = "encoder"
        else:
            family = "decoder"
        approximated = f"model_type {model_type!r} has no exact layout in llmkit; counted like a similar model"
    if model_type in ("llama", "mistral", "qwen2", "qwen3") or (approximated and act in ("silu", "swish")):
        activation, norm = "swiglu", "rmsnorm"
    elif model_type in _T5_TYPES:
        # T5 v1.1 / mT5 / mT0: `feed_forward_proj: gated-gelu` (two input matrices); the original T5: relu
        feed_forward = str(fields.get("feed_forward_proj") or _T5_DEFAULT_FEED_FORWARD[model_type])
        activation, norm = ("gated-gelu" if feed_forward.startswith("gated") else "relu"), "rmsnorm"
    else:
        activation, norm = ("relu" if act == "relu" else "gelu"), "layernorm"
    # T5 v1.1 / mT5 checkpoints say tie_word_embeddings: false and ship their own lm_head, which transformers loads
    # untied (its config forces the flag to true, but from_pretrained does not tie two different tensors)
    tied_default = model_type in ("gpt2", "bloom", "bert") + _T5_TYPES
    tied = bool(fields.get("tie_word_embeddings", tied_default))
    decoder_layers = int(fields.get("num_decoder_layers") or layers) if family == "encoder-decoder" else 0
    # a config that names no dropout gets transformers' default for its type (0.1 for GPT-2, BERT and T5)
    default_dropout = _DEFAULT_DROPOUT.get(model_type, 0.0)
    attention_dropout = float(fields.get("attention_probs_dropout_prob", fields.get("attention_dropout",
                              fields.get("attn_pdrop", fields.get("dropout_rate", default_dropout)))) or 0.0)
    hidden_dropout = float(fields.get("hidden_dropout_prob", fields.get("resid_pdrop",
                           fields.get("hidden_dropout", fields.get("dropout_rate", default_dropout)))) or 0.0)
    num_labels = len(fields["id2label"]) if isinstance(fields.get("id2label"), dict) else int(
        fields.get("num_labels", 2))
    return ModelSpec(
        name=name, source=source, model_type=model_type or "unknown", family=family, layers=layers, hidden=hidden,
        heads=heads, kv_heads=kv_heads, head_dim=head_dim, intermediate=intermediate, vocab=vocab,
        activation=activation, norm=norm, tied_embeddings=tied, max_positions=max_positions,
        decoder_layers=decoder_layers, type_vocab=int(fields.get("type_vocab_size", 0) or 0),
        attention_bias=bool(fields.get("attention_bias", False)), mlp_bias=bool(fields.get("mlp_bias", False)),
        attention_dropout=attention_dropout, hidden_dropout=hidden_dropout, num_labels=num_labels,
        approximated=approximated, config_fields=fields)
