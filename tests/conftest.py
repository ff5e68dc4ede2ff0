"""Tiny, real fixtures built locally: tokenizers trained on a few KB of the embedded corpus, small data files.

Nothing is downloaded: HF_HUB_OFFLINE is set for the whole session so a stray hub call fails at once.
"""

import json
import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

HEAVY_MODULES = ("torch", "transformers", "tokenizers", "datasets", "peft", "bitsandbytes", "accelerate", "deepspeed")


@pytest.fixture(scope="session")
def corpus_texts() -> list[str]:
    from llmkit import corpus

    train, _ = corpus.documents()
    return [r["text"] for r in train[:400]]


def _train(kind: str, out: Path, texts: list[str], vocab_size: int) -> Path:
    from llmkit.config import TokenizeTrainConfig
    from llmkit.tokenization import train_tokenizer

    corpus_file = out.parent / f"{kind}-corpus.txt"
    corpus_file.write_text("\n".join(texts), encoding="utf-8")
    train_tokenizer(TokenizeTrainConfig(corpus=(str(corpus_file),), output_dir=str(out), type=kind,
                                        vocab_size=vocab_size, lowercase=kind == "wordpiece"))
    return out


@pytest.fixture(scope="session")
def bpe_dir(tmp_path_factory, corpus_texts) -> Path:
    return _train("bpe", tmp_path_factory.mktemp("tok") / "bpe", corpus_texts, 600)


@pytest.fixture(scope="session")
def wordpiece_dir(tmp_path_factory, corpus_texts) -> Path:
    return _train("wordpiece", tmp_path_factory.mktemp("tok") / "wordpiece", corpus_texts, 600)


@pytest.fixture(scope="session")
def unigram_dir(tmp_path_factory, corpus_texts) -> Path:
    return _train("unigram", tmp_path_factory.mktemp("tok") / "unigram", corpus_texts, 400)


@pytest.fixture
def jsonl_file(tmp_path, corpus_texts) -> Path:
    path = tmp_path / "docs.jsonl"
    with path.open("w", encoding="utf-8") as f:
        for i, text in enumerate(corpus_texts[:60]):
            f.write(json.dumps({"id": i, "text": text}) + "\n")
    return path


@pytest.fixture
def runner():
    from typer.testing import CliRunner

    return CliRunner()


@pytest.fixture
def cli(runner):
    """Invoke llmkit in-process; returns click's Result (exit_code, stdout, stderr)."""
    from llmkit.commands import app

    def invoke(*args: str, **kwargs):
        return runner.invoke(app, [str(a) for a in args], **kwargs)

    return invoke


def assert_clean_error(result, exit_code: int, *fragments: str) -> None:
    """One `Error:` line (plus an optional hint), the right exit code, and no traceback."""
    assert result.exit_code == exit_code, (result.exit_code, result.stdout, result.stderr, result.exception)
    assert "Traceback" not in result.stderr and "Traceback" not in result.stdout
    assert result.stderr.startswith("Error: "), result.stderr
    assert result.stdout == ""
    for fragment in fragments:
        assert fragment in result.stderr, (fragment, result.stderr)


# a tiny LLaMA whose linear layers' inputs are multiples of 64: bitsandbytes' CPU 4-bit kernels need them (QLoRA)
LLAMA_BASE = dict(num_hidden_layers=2, hidden_size=64, intermediate_size=128, num_attention_heads=4,
                  num_key_value_heads=2, max_position_embeddings=256, tie_word_embeddings=False)


@pytest.fixture(scope="session")
def llama_base(tmp_path_factory, bpe_dir):
    """A pretrained-looking tiny LLaMA whose tokenizer already has the chatml tokens (an adapter cannot add any)."""
    from transformers import AutoTokenizer

    from llmkit.data import sft
    from llmkit.modeling import build_model

    tok = AutoTokenizer.from_pretrained(bpe_dir)
    sft.prepare_tokenizer(tok, "chatml")
    model = build_model({"model_type": "llama", **LLAMA_BASE}, vocab_size=len(tok), seed=0,
                        overrides={"pad_token_id": tok.pad_token_id, "eos_token_id": tok.eos_token_id})
    out = tmp_path_factory.mktemp("peft") / "base"
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return out
