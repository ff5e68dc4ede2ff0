"""Architecture numbers without torch: parameter counts, --params rule, presets, config.json, errors."""

import json

import pytest

from llmkit import modelspec
from llmkit.errors import ConfigError, LlmkitError

TINY_LLAMA = dict(model_type="llama", hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=4, vocab_size=100, tie_word_embeddings=False)


@pytest.mark.parametrize("text, count", [("1.4B", 1_400_000_000), ("330M", 330_000_000), ("7e9", 7_000_000_000),
                                         ("125m", 125_000_000), ("1,000,000", 1_000_000), ("2.5k", 2_500)])
def test_parse_param_count(text, count):
    assert modelspec.parse_param_count(text) == count


@pytest.mark.parametrize("text", ["1.4X", "-3B", "0", "B", "", "nan"])
def test_parse_param_count_rejects(text):
    with pytest.raises(ConfigError, match="--params"):
        modelspec.parse_param_count(text)


def test_tiny_llama_param_count_by_hand():
    spec = modelspec.from_config_dict(TINY_LLAMA, name="tiny", source="config")
    per_block = 4 * 64 * 64 + 3 * 64 * 128 + 2 * 64          # q k v o, gate up down, two RMSNorms
    assert spec.params_total() == 100 * 64 + 2 * per_block + 64 + 100 * 64   # embed, blocks, norm, lm_head


@pytest.mark.parametrize("text", ["1.4B", "330M", "7e9", "125m"])
def test_params_rule_uses_exactly_the_given_count(text):
    count = modelspec.parse_param_count(text)
    spec = modelspec.from_params(count)
    assert spec.params_total() == count
    assert spec.hidden % spec.heads == 0 and spec.family == "decoder"
    assert "architecture_rule" in spec.assumptions()


def test_params_rule_shape_for_1_4b_and_overrides():
    spec = modelspec.from_params(1_400_000_000)
    assert (spec.layers, spec.hidden, spec.heads, spec.vocab) == (24, 2048, 16, 32000)
    custom = modelspec.from_params(1_400_000_000, layers=16, vocab=50000)
    assert (custom.layers, custom.vocab) == (16, 50000) and custom.params_total() == 1_400_000_000


def test_presets_load_and_count():
    assert modelspec.load_spec("llama-2-7b").params_total() == 6_738_415_616
    assert modelspec.load_spec("qwen2.5-0.5b").params_total() == 494_032_768
    assert modelspec.load_spec("bert-base").params_total("masked-lm") == 109_514_298
    t5 = modelspec.load_spec("t5-base")
    assert t5.family == "encoder-decoder" and t5.decoder_layers == 12


def test_unknown_preset_lists_close_names():
    with pytest.raises(ConfigError) as info:
        modelspec.load_spec("lama-2-7b")
    assert "llama-2-7b" in info.value.hint


def test_config_json_file_and_dir(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps(TINY_LLAMA))
    by_dir = modelspec.load_spec(str(tmp_path))
    by_file = modelspec.load_spec(str(tmp_path / "config.json"))
    assert by_dir.params_total() == by_file.params_total() == 95_040


def test_config_json_missing_fields_are_named(tmp_path):
    path = tmp_path / "config.json"
    path.write_text(json.dumps({"model_type": "llama", "hidden_size": 64}))
    with pytest.raises(ConfigError) as info:
        modelspec.load_spec(str(path))
    for name in ("num_hidden_layers", "num_attention_heads", "vocab_size", "intermediate_size"):
        assert name in info.value.message


def test_hub_id_fails_fast_offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(LlmkitError, match="cannot be reached"):
        modelspec.load_spec("someorg/some-model")


def test_unknown_model_type_is_approximated():
    fields = dict(TINY_LLAMA, model_type="newarch", hidden_act="silu")
    spec = modelspec.from_config_dict(fields, name="x", source="config")
    assert spec.approximated and spec.params_total() == 95_040


def _model_presets():
    from llmkit import presets

    return presets.list_presets("models")


@pytest.mark.slow
@pytest.mark.parametrize("name", _model_presets())
def test_preset_param_count_matches_transformers_on_meta_device(name):
    """Each preset builds with transformers; the spec's count equals sum(p.numel()) of the task model."""
    torch = pytest.importorskip("torch")
    from transformers import (AutoConfig, AutoModelForCausalLM, AutoModelForMaskedLM, AutoModelForSeq2SeqLM,
                              AutoModelForSequenceClassification)

    from llmkit import presets

    fields = presets.load_preset("models", name)
    spec = modelspec.load_spec(name)
    config = AutoConfig.for_model(**fields)
    autos = {"causal-lm": AutoModelForCausalLM, "masked-lm": AutoModelForMaskedLM, "seq2seq": AutoModelForSeq2SeqLM}
    tasks = [(spec.default_task, autos[spec.default_task])]
    if spec.family != "encoder-decoder":
        tasks.append(("seq-cls", AutoModelForSequenceClassification))
    for task, auto in tasks:
        with torch.device("meta"):
            model = auto.from_config(config)
        assert spec.params_total(task) == sum(p.numel() for p in model.parameters()), (name, task)
