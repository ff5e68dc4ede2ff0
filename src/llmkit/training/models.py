"""The model and tokenizer a training run starts from: a pretrained dir or hub id, or an architecture (a preset or a
config.json) built from random initialisation; checked against the run's objective before any weight is loaded."""

from __future__ import annotations

import json
import os
from pathlib import Path

from llmkit.errors import ConfigError

FITTING = {"decoder": "causal-lm (or prefix-lm)", "encoder": "masked-lm", "encoder-decoder": "seq2seq"}
NEEDS = {"causal-lm": "decoder", "prefix-lm": "decoder", "masked-lm": "encoder", "seq2seq": "encoder-decoder"}
KIND_WORDS = {"decoder": "decoder-only", "encoder": "encoder-only", "encoder-decoder": "encoder-decoder"}


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


def load_model_and_tokenizer(cfg, quantization_config=None, dtype: str = "fp32"):
    """(model, tokenizer, source) for --from-scratch presets/config.json files and for pretrained dirs/ids;
    `quantization_config` (QLoRA) loads the pretrained base through bitsandbytes, `dtype` is what its weights are
    stored in (fp32 unless a frozen adapter base is loaded in bf16)."""
    from llmkit.modeling import attention_option, load_model

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
                       quantization_config=quantization_config, device=load_device(quantization_config),
                       **attention_option(cfg.attention))
    return model, tokenizer, None


def build_scratch_model(cfg, fields: dict, tokenizer):
    from llmkit.modeling import build_model

    specials = {"pad_token_id": tokenizer.pad_token_id, "eos_token_id": tokenizer.eos_token_id,
                "bos_token_id": tokenizer.bos_token_id}
    if fields.get("is_encoder_decoder"):
        specials["decoder_start_token_id"] = tokenizer.pad_token_id
    specials = {k: v for k, v in specials.items() if v is not None}
    return build_model(fields, cfg.model_task, vocab_size=len(tokenizer), overrides=specials, seed=cfg.seed,
                       attention=cfg.attention)
