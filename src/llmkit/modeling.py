"""Load tokenizers (and later models) from a local dir, a tokenizer.json file or a hub id, with clear errors."""

from __future__ import annotations

import os
from pathlib import Path

from llmkit.errors import ConfigError, ModelLoadError
from llmkit.hub import absolute_if_local, looks_like_local_path, require_hub

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "vocab.json", "spiece.model",
                   "tokenizer.model", "sentencepiece.bpe.model")


def load_tokenizer(name: str, *, slow: bool = False, trust_remote_code: bool = False):
    """A transformers tokenizer. `slow` asks for the Python implementation where transformers still has one."""
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "true")
    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    path = Path(name).expanduser()
    if path.is_file():
        if path.name.endswith(".json"):
            try:
                tokenizer = PreTrainedTokenizerFast(tokenizer_file=str(path))
            except Exception as exc:
                raise ModelLoadError(f"{name} is not a tokenizer.json the tokenizers library can read: "
                                     f"{str(exc).splitlines()[0]}", hint="pass a tokenizer directory") from None
            return _slow_variant(tokenizer, name) if slow else tokenizer
        raise ModelLoadError(f"{name} is a file, not a tokenizer directory",
                             hint="pass the directory that holds tokenizer.json / tokenizer_config.json")
    if path.is_dir():
        if not any((path / f).exists() for f in TOKENIZER_FILES):
            raise ModelLoadError(f"{name} has no tokenizer files (looked for {', '.join(TOKENIZER_FILES)})",
                                 hint="train one with `llmkit tokenize train`, or pass a model dir or hub id")
    elif looks_like_local_path(name):
        raise ModelLoadError(f"no such tokenizer directory: {name}", hint="check the path")
    else:
        _load_cached_or_require_hub(name, "tokenizer_config.json", "tokenizer")
    try:
        tokenizer = AutoTokenizer.from_pretrained(name, trust_remote_code=trust_remote_code)
    except ValueError as exc:
        if "trust_remote_code" in str(exc):
            raise ConfigError(f"{name} needs custom code to load its tokenizer",
                              hint="pass --trust-remote-code if you trust its author") from None
        raise ModelLoadError(f"cannot load tokenizer {name}: {str(exc).splitlines()[0]}",
                             hint="check that it is a transformers tokenizer") from None
    except OSError as exc:
        raise ModelLoadError(f"cannot load tokenizer {name}: {str(exc).splitlines()[0]}",
                             hint="check the name or path") from None
    return _slow_variant(tokenizer, name) if slow else tokenizer


def _load_cached_or_require_hub(name: str, filename: str, what: str) -> None:
    """Files already in the HF cache load offline; otherwise the hub must answer, or we fail fast."""
    try:
        from huggingface_hub import try_to_load_from_cache

        if isinstance(try_to_load_from_cache(name, filename), str):
            return
    except Exception:  # an id huggingface_hub rejects is reported by require_hub below
        pass
    require_hub(name, what)


def _slow_variant(tokenizer, name: str):
    """The Python ("slow") tokenizer matching a fast one, where transformers 5 still ships one."""
    from transformers import PreTrainedTokenizer

    if isinstance(tokenizer, PreTrainedTokenizer):
        return tokenizer
    import json
    import tempfile

    model = json.loads(tokenizer.backend_tokenizer.to_str())["model"]
    if model.get("type") == "WordPiece":
        from transformers.models.bert.tokenization_bert_legacy import BertTokenizerLegacy

        normalizer = json.loads(tokenizer.backend_tokenizer.to_str()).get("normalizer") or {}
        lowercase = bool(normalizer.get("lowercase", False))
        vocab = sorted(model["vocab"].items(), key=lambda item: item[1])
        with tempfile.TemporaryDirectory() as tmp:
            vocab_file = Path(tmp) / "vocab.txt"
            vocab_file.write_text("\n".join(token for token, _ in vocab) + "\n", encoding="utf-8")
            special = {k: v for k, v in tokenizer.special_tokens_map.items() if isinstance(v, str)}
            return BertTokenizerLegacy(str(vocab_file), do_lower_case=lowercase, **special)
    raise ModelLoadError(
        f"transformers {_transformers_version()} has no Python (slow) tokenizer for {name} "
        f"(a {model.get('type', 'unknown')} model)",
        hint="drop --slow; Python tokenizers remain for WordPiece (BERT-style) and SentencePiece models",
    )


def _transformers_version() -> str:
    import transformers

    return transformers.__version__


# ------------------------------------------------------------------------------------------------------- models

MODEL_FILES = ("config.json",)
AUTO_CLASSES = {
    "causal-lm": "AutoModelForCausalLM",
    "masked-lm": "AutoModelForMaskedLM",
    "seq2seq": "AutoModelForSeq2SeqLM",
    "seq-cls": "AutoModelForSequenceClassification",
    "token-cls": "AutoModelForTokenClassification",
    "extractive-qa": "AutoModelForQuestionAnswering",
    "feature-extraction": "AutoModel",
}
DTYPES = {"fp32": "float32", "fp16": "float16", "bf16": "bfloat16"}
ATTENTION_IMPLEMENTATIONS = {"eager": "eager", "sdpa": "sdpa", "flash": "flash_attention_2"}   # --attention


def model_config_fields(name: str) -> dict | None:
    """The transformers config fields of a model preset (presets/models/NAME.yaml), or None if NAME is not one."""
    from llmkit import presets

    if name in presets.list_presets("models"):
        return presets.load_preset("models", name)
    return None


def build_model(name_or_fields: str | dict, task: str = "causal-lm", *, vocab_size: int | None = None,
                dtype: str | None = None, overrides: dict | None = None, seed: int | None = None,
                attention: str | None = None):
    """A randomly initialised model from a preset name, a config.json path or config fields (`--from-scratch`).

    `vocab_size` makes the embedding match a tokenizer; `overrides` replace config fields (layers, hidden, ...);
    `attention` is --attention's kernel (None: transformers' choice).
    """
    import torch
    import transformers

    if isinstance(name_or_fields, dict):
        fields = dict(name_or_fields)
    else:
        fields = model_config_fields(name_or_fields)
        if fields is None:
            path = Path(name_or_fields).expanduser()
            config_file = path / "config.json" if path.is_dir() else path
            if not config_file.is_file():
                from llmkit import presets

                raise ConfigError(f"'{name_or_fields}' is neither a model preset nor a config.json",
                                  hint=f"presets: {', '.join(presets.list_presets('models'))}")
            import json

            fields = json.loads(config_file.read_text(encoding="utf-8"))
    fields.update(overrides or {})
    if vocab_size is not None:
        fields["vocab_size"] = vocab_size
    model_type = fields.pop("model_type", None)
    fields.pop("architectures", None)
    if model_type is None:
        raise ConfigError("the model config has no model_type", hint="add model_type (e.g. llama, bert, t5)")
    config = transformers.AutoConfig.for_model(model_type, **fields)
    auto = getattr(transformers, AUTO_CLASSES[task])
    if seed is not None:
        torch.manual_seed(seed)
    try:
        model = auto.from_config(config, **attention_option(attention))
    except ValueError as exc:
        _refuse_attention(str(exc).splitlines()[0], attention)
        raise ConfigError(f"a {model_type} model cannot do {task}: {str(exc).splitlines()[0]}",
                          hint=f"choose a task that fits a {model_type} model") from None
    if dtype is not None:
        model = model.to(getattr(torch, DTYPES[dtype]))
    return model


def check_model_source(name: str) -> None:
    """A model dir must hold config.json; a hub id must be cached or the hub reachable (fails in seconds)."""
    path = Path(name).expanduser()
    if path.is_dir():
        if not (path / "config.json").exists():
            raise ModelLoadError(f"{name} has no config.json, so it is not a transformers model directory",
                                 hint="pass a dir written by `save_pretrained` (or by an llmkit run), or a hub id")
    elif looks_like_local_path(name):
        raise ModelLoadError(f"no such model directory: {name}", hint="check the path")
    else:
        _load_cached_or_require_hub(name, "config.json", "model")


def attention_option(attention: str | None) -> dict[str, str]:
    """from_pretrained/from_config's keyword for --attention ({} leaves the choice to transformers)."""
    return {} if attention is None else {"attn_implementation": ATTENTION_IMPLEMENTATIONS[attention]}


def _refuse_attention(text: str, attention: str | None) -> None:
    """transformers' refusal of an --attention kernel for this architecture, as one ConfigError."""
    if attention is not None and ("attention implementation" in text or "Flash Attention" in text
                                  or "attn_implementation" in text):
        raise ConfigError(f"--attention: {text}", hint="choose another --attention; eager works for every model") \
            from None


def load_model(name: str, task: str = "causal-lm", *, dtype: str | None = None, device: str | None = None,
               trust_remote_code: bool = False, quantization_config=None, **kwargs):
    """A pretrained model from a local dir or hub id, through the Auto class for `task`.

    dtype None keeps the checkpoint's dtype (transformers 5's default, `dtype="auto"`).
    """
    import transformers

    check_model_source(name)
    auto = getattr(transformers, AUTO_CLASSES[task])
    options = dict(trust_remote_code=trust_remote_code, dtype=DTYPES.get(dtype, "auto") if dtype else "auto", **kwargs)
    if quantization_config is not None:
        options["quantization_config"] = quantization_config
    if device is not None and device != "cpu":
        options["device_map"] = device
    try:
        return auto.from_pretrained(absolute_if_local(name), **options)   # its name_or_path goes into adapters
    except ValueError as exc:
        text = str(exc).splitlines()[0]
        if "trust_remote_code" in text:
            raise ConfigError(f"{name} needs custom code to load", hint="pass --trust-remote-code if you trust its "
                              "author") from None
        if "Unrecognized configuration class" in text:
            raise ConfigError(f"{name} cannot be loaded for {task}: {text}",
                              hint="choose the --task that fits this model's architecture") from None
        _refuse_attention(text, kwargs.get("attn_implementation"))
        raise ModelLoadError(f"cannot load model {name}: {text}", hint="check the path or id") from None
    except OSError as exc:
        raise ModelLoadError(f"cannot load model {name}: {str(exc).splitlines()[0]}",
                             hint="check the path or id") from None


# ------------------------------------------------------------------------------------------------------ adapters

ADAPTER_INFO = "llmkit_adapter.json"   # written by `llmkit peft` beside peft's adapter_config.json


def read_json_file(path: Path) -> dict:
    import json

    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise ModelLoadError(f"{path}: invalid JSON: {exc.msg}", hint="re-save the adapter") from None


def recorded_adapter_base(adapter: str) -> str | None:
    """The base model an adapter dir says it was trained on (llmkit's record first, then peft's)."""
    path = Path(adapter).expanduser()
    config_file = path / "adapter_config.json"
    if not config_file.is_file():
        raise ModelLoadError(f"{adapter} has no adapter_config.json, so it is not a PEFT adapter dir",
                             hint="pass the dir `llmkit peft` or peft's save_pretrained wrote")
    info_file = path / ADAPTER_INFO
    info = read_json_file(info_file) if info_file.is_file() else {}
    return info.get("base_model") or read_json_file(config_file).get("base_model_name_or_path") or None


def same_model(given: str, recorded: str, adapter_dir: Path) -> bool:
    """Whether --model/--base names the recorded base: the same id, or the same dir (a recorded relative path may be
    relative to the adapter dir)."""
    if given.rstrip("/") == recorded.rstrip("/"):
        return True
    given_path = Path(given).expanduser()
    candidates = [Path(recorded).expanduser(), adapter_dir / recorded]
    return given_path.exists() and any(c.exists() and c.resolve() == given_path.resolve() for c in candidates)


def adapter_base(adapter: str, given: str | None, flag: str = "--model") -> str:
    """The base model to use an adapter with: `given` when the adapter was trained on it (refused otherwise), or the
    base the adapter records."""
    recorded = recorded_adapter_base(adapter)
    if not given:
        if recorded is None:
            raise ConfigError(f"the adapter {adapter} does not name its base model", hint=f"pass {flag} BASE")
        return recorded
    if recorded is not None and not same_model(given, recorded, Path(adapter).expanduser()):
        raise ConfigError(f"the adapter {adapter} was trained on {recorded}, not on {flag} {given}",
                          hint=f"pass {flag} {recorded} (an adapter only fits the base it was trained on); if the "
                               "base moved, fix base_model_name_or_path in adapter_config.json")
    return given
