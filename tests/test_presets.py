"""Every shipped preset loads through the real resolve() of the command its first line names."""

import pytest

from llmkit import presets
from llmkit.config import GenerateConfig  # noqa: I001
from llmkit.config import (QuickstartConfig, TokenizeDatasetConfig, TokenizeShowConfig, TokenizeTrainConfig,
                           TokenizeVocabConfig)
from llmkit.config import PeftConfig, PretrainConfig, SFTConfig
from llmkit.configio import resolve

COMMAND_CONFIGS = {
    "llmkit tokenize train": (TokenizeTrainConfig, {"corpus": ["c.txt"], "output_dir": "o"}),
    "llmkit tokenize dataset": (TokenizeDatasetConfig, {"tokenizer": "t", "data": "d.jsonl", "output_dir": "o"}),
    "llmkit tokenize stats": (TokenizeDatasetConfig, {"tokenizer": "t", "data": "d.jsonl"}),
    "llmkit tokenize show": (TokenizeShowConfig, {"tokenizer": "t", "texts": ["x"]}),
    "llmkit tokenize vocab": (TokenizeVocabConfig, {"tokenizer": "t"}),
    "llmkit quickstart": (QuickstartConfig, {}),
    "llmkit pretrain": (PretrainConfig, {"data": "d.jsonl", "output_dir": "o", "tokenizer": "t"}),
    "llmkit generate": (GenerateConfig, {"model": "m", "prompt": "x"}),
    "llmkit sft": (SFTConfig, {"model": "m", "data": "d.jsonl", "output_dir": "o"}),
    "llmkit launch": (__import__("llmkit.config", fromlist=["LaunchConfig"]).LaunchConfig, {}),
    "llmkit peft": (PeftConfig, {"model": "m", "data": "d.jsonl", "output_dir": "o"}),
}

ALL = [(kind, name) for kind in presets.list_kinds() for name in presets.list_presets(kind)]


def test_there_are_presets():
    assert ("tokenize", "bpe-4k") in ALL and ("quickstart", "fast") in ALL


@pytest.mark.parametrize("kind, name", ALL, ids=lambda v: str(v))
def test_preset_starts_with_its_command_line_and_loads(kind, name):
    text = presets.preset_text(kind, name)
    first = text.splitlines()[0]
    assert first.startswith("# llmkit "), first
    assert f"{name}" in first or kind == "models", first
    data = presets.load_preset(kind, name)
    assert isinstance(data, dict) and data
    command = next((c for c in COMMAND_CONFIGS if first[2:].startswith(c)), None)
    if command is None:
        pytest.skip(f"{kind}/{name} is loaded by its own command's tests ({first[2:40]}...)")
    cls, required = COMMAND_CONFIGS[command]
    cfg = resolve(cls, preset=name, overrides=required)
    for key, value in data.items():
        assert getattr(cfg, key) == (tuple(value) if isinstance(value, list) else value)
