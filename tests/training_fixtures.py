"""Tiny models and data for the training tests (imported by tests/test_pretrain*.py and tests/test_training*.py)."""

import json

import pytest

TINY_LLAMA = dict(model_type="llama", hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256)
TINY_BERT = dict(model_type="bert", hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                 num_attention_heads=4, max_position_embeddings=256, hidden_dropout_prob=0.0,
                 attention_probs_dropout_prob=0.0)
TINY_T5 = dict(model_type="t5", is_encoder_decoder=True, d_model=32, d_kv=8, d_ff=64, num_layers=2,
               num_decoder_layers=2, num_heads=4, dropout_rate=0.0, feed_forward_proj="relu",
               tie_word_embeddings=True)


@pytest.fixture(autouse=True)
def one_thread():
    """Another engineer runs tests on this 2-core machine: one thread per process is also ~10x faster there."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def write_config(path, fields):
    path.write_text(json.dumps(fields), encoding="utf-8")
    return path


@pytest.fixture(scope="session")
def configs(tmp_path_factory):
    root = tmp_path_factory.mktemp("configs")
    return {name: write_config(root / f"{name}.json", fields)
            for name, fields in (("llama", TINY_LLAMA), ("bert", TINY_BERT), ("t5", TINY_T5))}


@pytest.fixture(scope="session")
def docs_file(tmp_path_factory, corpus_texts):
    path = tmp_path_factory.mktemp("data") / "docs.jsonl"
    with path.open("w", encoding="utf-8") as f:
        for text in corpus_texts[:48]:
            f.write(json.dumps({"text": text[:400]}) + "\n")
    return path


def base_config(**fields):
    from llmkit.config import PretrainConfig

    defaults = dict(from_scratch=True, seq_len=64, batch_size=4, max_steps=2, logging_steps=1, save_steps=100,
                    scheduler="constant", lr=1e-3)
    defaults.update(fields)
    return PretrainConfig(**defaults)
