"""Load tokenizers (and later models) from a local dir, a tokenizer.json file or a hub id, with clear errors."""

from __future__ import annotations

import os
from pathlib import Path

from llmkit.errors import ConfigError, ModelLoadError
from llmkit.hub import looks_like_local_path, require_hub

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
        _load_cached_or_require_hub(name)
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


def _load_cached_or_require_hub(name: str) -> None:
    """Files already in the HF cache load offline; otherwise the hub must answer, or we fail fast."""
    try:
        from huggingface_hub import try_to_load_from_cache

        cached = try_to_load_from_cache(name, "tokenizer_config.json")
        if isinstance(cached, str):
            return
    except Exception:  # an id huggingface_hub rejects is reported by require_hub below
        pass
    require_hub(name, "tokenizer")


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
