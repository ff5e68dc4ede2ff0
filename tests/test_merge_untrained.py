"""`llmkit merge` refuses an adapter that never left its initialisation: merging it would save the base itself."""

import json

import pytest

from helpers import assert_clean_error


def _untrained(kind: str, base, out):
    """The adapter exactly as peft's get_peft_model creates it (default initialisation), saved without training."""
    import torch
    from peft import IA3Config, LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

    torch.manual_seed(0)
    if kind == "seq-cls lora":
        model = AutoModelForSequenceClassification.from_pretrained(base, num_labels=3, dtype=torch.float32)
        config = LoraConfig(task_type="SEQ_CLS", r=4, target_modules=["q_proj", "v_proj"])
    else:
        model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
        config = {"lora": LoraConfig(r=4, target_modules=["q_proj", "v_proj", "down_proj"]),
                  "ia3": IA3Config(target_modules=["k_proj", "v_proj", "down_proj"], feedforward_modules=["down_proj"])
                  }[kind]
    get_peft_model(model, config).save_pretrained(out)
    return out


@pytest.mark.parametrize("kind, what", [("lora", "every lora_B is zero"), ("ia3", "every IA3 vector is all ones")])
def test_an_adapter_still_at_its_initialisation_is_refused(cli, llama_dir, tmp_path, kind, what):
    from safetensors.torch import load_file

    adapter = _untrained(kind, llama_dir, tmp_path / "adapter")
    initial = 0.0 if kind == "lora" else 1.0   # what peft initialises B / the IA3 vectors to: checked, not assumed
    checked = [t for k, t in load_file(adapter / "adapter_model.safetensors").items() if "lora_A" not in k]
    assert checked and all(bool((t == initial).all()) for t in checked)

    result = cli("merge", "--adapter", adapter, "-o", tmp_path / "merged")
    assert_clean_error(result, 1, f"the {kind} adapter", "is still its initialisation", what,
                       "would be the base itself", "Hint: ", "metrics.jsonl")
    assert len(result.stderr.strip().splitlines()) == 2     # the Error: line and its Hint:, nothing loaded first
    assert not (tmp_path / "merged").exists()


def test_one_trained_tensor_is_enough_to_merge(cli, llama_dir, tmp_path):
    """A single non-zero B, or a head trained beside an untouched LoRA (modules_to_save), changes the model."""
    from safetensors.torch import load_file, save_file

    adapter = _untrained("lora", llama_dir, tmp_path / "one-b")
    tensors = load_file(adapter / "adapter_model.safetensors")
    key = next(k for k in sorted(tensors) if "lora_B" in k)
    tensors[key][0, 0] = 0.5
    save_file(tensors, adapter / "adapter_model.safetensors", metadata={"format": "pt"})
    result = cli("merge", "--adapter", adapter, "-o", tmp_path / "merged", "--json")
    assert result.exit_code == 0, result.stderr
    assert json.loads(result.stdout)["verification"]["max_rel_logit_diff"] <= 1e-5

    head = _untrained("seq-cls lora", llama_dir, tmp_path / "head")
    result = cli("merge", "--adapter", head, "-o", tmp_path / "merged-head", "--no-verify", "--json")
    assert result.exit_code == 0, result.stderr
