"""Tiny models for the `llmkit generate` tests, built locally and saved with their tokenizers (session fixtures).

Import the fixtures into a test module with `from _generate_models import *`.
"""

import json
import shutil
from pathlib import Path

import pytest

CHAT_TEMPLATE = ("{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}</s>{% endfor %}"
                 "{% if add_generation_prompt %}<|assistant|>{% endif %}")
CAUSAL = dict(num_hidden_layers=2, hidden_size=32, intermediate_size=64, num_attention_heads=4, num_key_value_heads=2,
              bos_token_id=0, eos_token_id=1, pad_token_id=2, max_position_embeddings=64, tie_word_embeddings=False,
              initializer_range=0.2)


def _one_thread():
    import torch

    torch.set_num_threads(1)


@pytest.fixture(scope="session")
def causal_dir(tmp_path_factory, bpe_dir) -> Path:
    """A 2-layer Qwen2-shaped causal LM (untied, wide init: varied greedy output) with the BPE tokenizer."""
    _one_thread()
    from llmkit.modeling import build_model, load_tokenizer

    tok = load_tokenizer(str(bpe_dir))
    model = build_model("qwen2.5-0.5b", overrides=CAUSAL, vocab_size=len(tok), seed=0)
    out = tmp_path_factory.mktemp("gen") / "causal"
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return out


@pytest.fixture(scope="session")
def chat_dir(tmp_path_factory, causal_dir) -> Path:
    """The causal model with a chat template saved in its tokenizer (as a run saves it)."""
    from transformers import AutoTokenizer

    out = tmp_path_factory.mktemp("gen") / "chat"
    shutil.copytree(causal_dir, out)
    tok = AutoTokenizer.from_pretrained(out)
    tok.chat_template = CHAT_TEMPLATE
    tok.save_pretrained(out)
    return out


@pytest.fixture(scope="session")
def t5_dir(tmp_path_factory, unigram_dir) -> Path:
    _one_thread()
    from llmkit.modeling import build_model, load_tokenizer

    tok = load_tokenizer(str(unigram_dir))
    model = build_model("t5-base", "seq2seq", vocab_size=len(tok), seed=0, overrides=dict(
        d_model=32, d_kv=8, d_ff=64, num_layers=2, num_decoder_layers=2, num_heads=4, pad_token_id=2,
        eos_token_id=1, decoder_start_token_id=2, tie_word_embeddings=False, initializer_factor=5.0,
        task_specific_params={"summarization": {"prefix": "summarize: "}}))
    out = tmp_path_factory.mktemp("gen") / "t5"
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return out


@pytest.fixture(scope="session")
def bert_dir(tmp_path_factory, wordpiece_dir) -> Path:
    _one_thread()
    from llmkit.modeling import build_model, load_tokenizer

    tok = load_tokenizer(str(wordpiece_dir))
    model = build_model("bert-base", "masked-lm", vocab_size=len(tok), seed=0, overrides=dict(
        hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64, max_position_embeddings=64))
    out = tmp_path_factory.mktemp("gen") / "bert"
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return out


@pytest.fixture(scope="session")
def bert_cls_dir(tmp_path_factory, wordpiece_dir) -> Path:
    from llmkit.modeling import build_model, load_tokenizer

    tok = load_tokenizer(str(wordpiece_dir))
    model = build_model("bert-base", "seq-cls", vocab_size=len(tok), seed=0, overrides=dict(
        hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64, max_position_embeddings=64,
        architectures=["BertForSequenceClassification"]))
    out = tmp_path_factory.mktemp("gen") / "bert-cls"
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return out


def load_causal(path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    return AutoModelForCausalLM.from_pretrained(path).eval(), AutoTokenizer.from_pretrained(path)


def run_json(cli, *args, **kwargs) -> dict:
    result = cli("generate", *args, "--json", **kwargs)
    assert result.exit_code == 0, (result.stdout, result.stderr, result.exception)
    return json.loads(result.stdout)


__all__ = ["causal_dir", "chat_dir", "t5_dir", "bert_dir", "bert_cls_dir", "load_causal", "run_json",
           "CHAT_TEMPLATE"]
