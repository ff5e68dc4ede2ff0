"""A run's record is written once and says what ran: `llmkit peft` trains through the sft recipe, yet its
resolved_config.yaml and manifest.json are the peft command's from their first (and only) write."""

import dataclasses
import json
import os
import pathlib


def _values(config) -> dict:
    return {f.name: getattr(config, f.name) for f in dataclasses.fields(config)}


def test_peft_run_writes_its_record_once_as_the_peft_command(llama_base, tmp_path, monkeypatch):
    from llmkit.config import PeftConfig
    from llmkit.configio import resolve
    from llmkit.training.peft import run_peft

    data = tmp_path / "qa.jsonl"
    data.write_text("".join(json.dumps({"prompt": f"What is {i} plus one?", "completion": f" It is {i + 1}."}) + "\n"
                            for i in range(8)), encoding="utf-8")
    run = tmp_path / "run"
    cfg = PeftConfig(model=str(llama_base), data=str(data), output_dir=str(run), method="lora", lora_rank=4,
                     lora_targets=("q_proj",), template="chatml", seq_len=48, batch_size=4, max_steps=2,
                     logging_steps=1, save_steps=100, scheduler="constant")

    writes: dict[str, list[str]] = {}   # file name in the run dir -> the text of each write that landed there
    write_text, replace = pathlib.Path.write_text, os.replace

    def spy_write_text(path, text, *args, **kwargs):
        if path.parent == run:
            writes.setdefault(path.name, []).append(text)
        return write_text(path, text, *args, **kwargs)

    def spy_replace(src, dst, *args, **kwargs):
        dst = pathlib.Path(dst)
        if dst.parent == run:   # an atomic write: the text went to the scratch file first
            writes.setdefault(dst.name, []).append(writes.pop(pathlib.Path(src).name, [None])[-1])
        return replace(src, dst, *args, **kwargs)

    monkeypatch.setattr(pathlib.Path, "write_text", spy_write_text)
    monkeypatch.setattr(os, "replace", spy_replace)
    run_peft(cfg)
    monkeypatch.undo()

    assert len(writes["resolved_config.yaml"]) == 1, "resolved_config.yaml was rewritten"
    assert len(writes["manifest.json"]) == 1, "manifest.json was rewritten"
    assert writes["resolved_config.yaml"][0] == (run / "resolved_config.yaml").read_text(encoding="utf-8")
    assert _values(resolve(PeftConfig, file=run / "resolved_config.yaml")) == _values(cfg)

    manifest = json.loads(writes["manifest.json"][0])
    assert manifest == json.loads((run / "manifest.json").read_text(encoding="utf-8"))
    assert manifest["command"] == "llmkit peft" and manifest["status"] == "completed"
    peft = manifest["peft"]
    assert (peft["method"], peft["base_model"], peft["objective"], peft["targets"]) == \
        ("lora", str(llama_base), "sft", ["q_proj"])
    lora = 2 * (64 * 4 + 4 * 64)   # 2 layers of q_proj 64 -> 64 (conftest.LLAMA_BASE), rank 4: A and B
    assert [row["parameters"] for row in peft["parameter_table"] if row["trainable"]] == [lora]
    assert manifest["model"]["trainable_parameters"] == lora
    adapter_info = json.loads((run / "adapter" / "llmkit_adapter.json").read_text(encoding="utf-8"))
    assert (adapter_info["method"], adapter_info["base_model"]) == ("lora", str(llama_base))
