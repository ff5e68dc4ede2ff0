"""What llmkit writes about its sources works from any directory: a relative path typed at training time is
recorded as an absolute path, so `merge`, `generate --adapter` and peft's own Auto classes find the base later."""

import json
import os


def test_adapter_trained_from_a_relative_base_path_loads_from_another_directory(cli, llama_base, tmp_path,
                                                                                 monkeypatch):
    data = tmp_path / "qa.jsonl"
    data.write_text("\n".join(json.dumps({"instruction": f"Add {i} and 1.", "output": str(i + 1)})
                              for i in range(8)) + "\n", encoding="utf-8")
    monkeypatch.chdir(llama_base.parent)
    result = cli("peft", "--method", "lora", "-m", os.path.join(".", llama_base.name), "--data", str(data),
                 "--template", "chatml", "-o", str(tmp_path / "run"), "--max-steps", "1", "--batch-size", "4",
                 "--seq-len", "32", "--json")
    assert result.exit_code == 0, result.stderr
    adapter = tmp_path / "run" / "adapter"
    recorded = json.loads((adapter / "adapter_config.json").read_text())["base_model_name_or_path"]
    assert os.path.isabs(recorded) and os.path.samefile(recorded, llama_base)

    monkeypatch.chdir(tmp_path)   # elsewhere: peft itself resolves the base from the adapter
    from peft import AutoPeftModelForCausalLM

    assert AutoPeftModelForCausalLM.from_pretrained(adapter) is not None


def test_tokenized_dataset_records_absolute_sources(cli, bpe_dir, tmp_path, monkeypatch, corpus_texts):
    (tmp_path / "corpus.jsonl").write_text("\n".join(json.dumps({"text": t}) for t in corpus_texts[:20]) + "\n",
                                           encoding="utf-8")
    monkeypatch.chdir(tmp_path)
    result = cli("tokenize", "dataset", "--data", "corpus.jsonl", "-t", str(bpe_dir), "-o", "tokenized", "--json")
    assert result.exit_code == 0, result.stderr
    meta = json.loads((tmp_path / "tokenized" / "llmkit_dataset.json").read_text())
    assert meta["source"] == str(tmp_path / "corpus.jsonl") and os.path.isabs(meta["tokenizer"])
