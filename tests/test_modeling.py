"""Models: built from a preset (random init), saved, loaded back; clear errors for what cannot load."""

import pytest

from llmkit.errors import ConfigError, ModelLoadError
from llmkit.modeling import build_model, load_model

TINY = dict(num_hidden_layers=2, hidden_size=32, intermediate_size=64, num_attention_heads=4, num_key_value_heads=2,
            bos_token_id=0, eos_token_id=1)


def test_build_from_preset_save_and_load_gives_the_same_weights(tmp_path):
    import torch

    model = build_model("qwen2.5-0.5b", overrides=TINY, vocab_size=300, seed=0)
    assert type(model).__name__ == "Qwen2ForCausalLM" and model.config.vocab_size == 300
    model.save_pretrained(tmp_path / "m")
    loaded = load_model(str(tmp_path / "m"))
    for (name, a), (_, b) in zip(model.state_dict().items(), loaded.state_dict().items()):
        assert torch.equal(a, b), name


def test_seed_makes_random_init_reproducible():
    import torch

    a = build_model("qwen2.5-0.5b", overrides=TINY, vocab_size=300, seed=3)
    b = build_model("qwen2.5-0.5b", overrides=TINY, vocab_size=300, seed=3)
    assert all(torch.equal(x, y) for x, y in zip(a.parameters(), b.parameters()))


def test_errors(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelLoadError, match="no config.json"):
        load_model(str(tmp_path / "empty"))
    with pytest.raises(ModelLoadError, match="no such model directory"):
        load_model(str(tmp_path / "missing"))
    with pytest.raises(ModelLoadError, match="Hub cannot be reached"):
        load_model("some-org/some-model")
    with pytest.raises(ConfigError, match="neither a model preset nor a config.json"):
        build_model("no-such-preset")
    model = build_model("qwen2.5-0.5b", overrides=TINY, vocab_size=300)
    model.save_pretrained(tmp_path / "m")
    with pytest.raises(ConfigError, match="cannot be loaded for seq2seq"):
        load_model(str(tmp_path / "m"), task="seq2seq")
