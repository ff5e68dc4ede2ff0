"""Config resolution: defaults < preset < file < flags, unknown keys with hints, all problems at once."""

import json

import pytest
import yaml

from llmkit.config import TokenizeDatasetConfig, TokenizeTrainConfig
from llmkit.configio import resolve
from llmkit.errors import ConfigError


def test_precedence_defaults_preset_file_flags(tmp_path):
    cfg = resolve(TokenizeTrainConfig, overrides={"corpus": ["a.txt"], "output_dir": "o"})
    assert cfg.vocab_size == 8000 and cfg.type == "bpe"
    cfg = resolve(TokenizeTrainConfig, preset="wordpiece-30k", overrides={"corpus": ["a.txt"], "output_dir": "o"})
    assert cfg.vocab_size == 30522 and cfg.type == "wordpiece" and cfg.lowercase
    file = tmp_path / "c.yaml"
    file.write_text("vocab_size: 1000\nmin_frequency: 3\n")
    cfg = resolve(TokenizeTrainConfig, preset="wordpiece-30k", file=file,
                  overrides={"corpus": ["a.txt"], "output_dir": "o", "min_frequency": 5, "lowercase": None})
    assert (cfg.vocab_size, cfg.min_frequency, cfg.type, cfg.lowercase) == (1000, 5, "wordpiece", True)


def test_unknown_keys_get_a_did_you_mean_and_all_problems_come_together(tmp_path):
    file = tmp_path / "c.yaml"
    file.write_text("vocab_sise: 1000\ntype: sentencepiece\n")
    with pytest.raises(ConfigError) as info:
        resolve(TokenizeTrainConfig, file=file, overrides={"min_frequency": 0})
    problems = info.value.problems
    assert any("unknown key 'vocab_sise'" in p and "did you mean 'vocab_size'" in p for p in problems)
    assert any("'type'" in p and "not one of" in p for p in problems)
    assert any("--min-frequency must be greater than 0" in p for p in problems)
    assert any("--corpus is required" in p for p in problems)
    assert info.value.exit_code == 2
    assert "problems in the configuration" in info.value.message


def test_type_errors_name_the_flag():
    with pytest.raises(ConfigError) as info:
        resolve(TokenizeDatasetConfig, overrides={"tokenizer": "t", "data": "d", "max_length": "long"})
    assert "'max_length'" in info.value.message or "--max-length" in info.value.message


@pytest.mark.parametrize("content, fragment", [("- a\n- b\n", "must hold a mapping"), ("a: [1,\n", "cannot parse")])
def test_bad_config_files(tmp_path, content, fragment):
    file = tmp_path / "c.yaml"
    file.write_text(content)
    with pytest.raises(ConfigError, match=fragment):
        resolve(TokenizeTrainConfig, file=file)


def test_missing_config_file(tmp_path):
    with pytest.raises(ConfigError, match="config file not found"):
        resolve(TokenizeTrainConfig, file=tmp_path / "none.yaml")


def test_print_config_shows_resolved_values_as_yaml_and_json(cli, tmp_path):
    file = tmp_path / "c.yaml"
    file.write_text("vocab_size: 1234\n")
    result = cli("tokenize", "train", "--config", file, "--corpus", "a.txt", "-o", "out", "--min-frequency", "7",
                 "--print-config")
    assert result.exit_code == 0
    data = yaml.safe_load(result.stdout)
    assert data["vocab_size"] == 1234 and data["min_frequency"] == 7 and data["corpus"] == ["a.txt"]
    result = cli("tokenize", "train", "--config", file, "--corpus", "a.txt", "-o", "out", "--print-config", "--json")
    assert json.loads(result.stdout)["vocab_size"] == 1234
    assert not (tmp_path / "out").exists()


def test_cli_config_errors_exit_2_with_every_problem(cli, tmp_path):
    file = tmp_path / "c.yaml"
    file.write_text("vocab_sise: 10\n")
    result = cli("tokenize", "train", "--config", file, "--vocab-size", "0")
    assert result.exit_code == 2
    assert "vocab_sise" in result.stderr and "--vocab-size must be greater than 0" in result.stderr
    assert "--corpus is required" in result.stderr and "Traceback" not in result.stderr
