"""`llmkit merge`: LoRA and IA3 folded into the base equal base + adapter; QLoRA strategies; refusals."""

import json
import shutil

import pytest

from helpers import CHAT_TEMPLATE, assert_clean_error


TEXTS = ["The while statement is used for repeated execution as long as an expression is true.",
         "Names refer to objects."]


def run_json(cli, *args) -> dict:
    result = cli("merge", *args, "--json")
    assert result.exit_code == 0, (result.stdout, result.stderr, result.exception)
    return json.loads(result.stdout)


def logits(model, tokenizer):
    import torch

    with torch.no_grad():  # a grad-mode forward: bitsandbytes' CPU repacking (inference only) stays out of it
        return [model(**tokenizer(t, return_tensors="pt")).logits.float() for t in TEXTS]


def adapter_logits(base, adapter):
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32), adapter).eval()
    return logits(model, AutoTokenizer.from_pretrained(base))


def merged_logits(path):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    return logits(AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval(),
                  AutoTokenizer.from_pretrained(path))


def max_rel(a, b) -> float:
    return max(float((x - y).abs().max() / x.abs().max()) for x, y in zip(a, b))


def test_merged_lora_equals_base_plus_adapter(cli, llama_dir, lora_dir, tmp_path):
    out = tmp_path / "merged"
    result = run_json(cli, "--adapter", lora_dir, "-o", out, "--max-shard-size", "100KB")  # base from the adapter
    assert result["base"] == str(llama_dir) and result["method"] == "lora" and result["strategy"] == "plain"
    assert result["merged_modules"] == 6 and result["dtype"] == "fp32" and not result["saved_quantized"]
    v = result["verification"]
    assert v["max_rel_logit_diff"] <= 1e-5 and v["kl_mean"] < 1e-6 and v["probes"] == 4
    assert max_rel(adapter_logits(llama_dir, lora_dir), merged_logits(out)) <= 1e-5
    # sharded safetensors with an index, tokenizer with the chat template, generation config, plain model config
    assert len(result["files"]) > 1 and (out / "model.safetensors.index.json").is_file()
    from transformers import AutoTokenizer, GenerationConfig

    assert AutoTokenizer.from_pretrained(out).chat_template == CHAT_TEMPLATE
    assert GenerationConfig.from_pretrained(out).max_new_tokens == 7
    config = json.loads((out / "config.json").read_text())
    assert "quantization_config" not in config
    assert not any(k.endswith(("lora_A.weight", "lora_B.weight")) for k in json.loads(
        (out / "model.safetensors.index.json").read_text())["weight_map"])
    assert json.loads((out / "llmkit_merge.json").read_text())["strategy"] == "plain"


def test_merged_ia3_equals_base_plus_adapter(cli, llama_dir, ia3_dir, tmp_path):
    out = tmp_path / "merged"
    run = cli("merge", "--base", llama_dir, "--adapter", ia3_dir, "-o", out, "--probe", "Hello there, names.",
              "--strategy", "original", "--json")
    assert run.exit_code == 0, run.stderr
    assert "--strategy original applies to adapters trained on a quantized base" in run.stderr
    result = json.loads(run.stdout)
    assert result["method"] == "ia3" and result["merged_modules"] == 6 and result["files"] == ["model.safetensors"]
    assert result["strategy"] == "plain" and result["verification"]["probes"] == 1
    assert result["verification"]["max_rel_logit_diff"] <= 1e-5
    assert max_rel(adapter_logits(llama_dir, ia3_dir), merged_logits(out)) <= 1e-5


@pytest.mark.parametrize("kind", ["loha", "lokr", "adalora"])
def test_other_mergeable_adapters(cli, llama_dir, tmp_path, kind):
    import torch
    from peft import AdaLoraConfig, LoHaConfig, LoKrConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    targets = ["q_proj", "v_proj"]
    config = {"loha": LoHaConfig(r=4, target_modules=targets, init_weights=False),
              "lokr": LoKrConfig(r=4, target_modules=targets, init_weights=False),
              "adalora": AdaLoraConfig(r=4, target_modules=targets, total_step=10, init_lora_weights=False)}[kind]
    torch.manual_seed(0)
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(llama_dir, dtype=torch.float32), config)
    model.save_pretrained(tmp_path / "adapter")
    result = run_json(cli, "--adapter", tmp_path / "adapter", "-o", tmp_path / "merged")
    assert result["method"] == kind and result["merged_modules"] == 4
    assert result["verification"]["max_rel_logit_diff"] <= 1e-5
    assert max_rel(adapter_logits(llama_dir, tmp_path / "adapter"), merged_logits(tmp_path / "merged")) <= 1e-5


def test_qlora_strategies_differ_as_documented(cli, llama_dir, qlora_dir, tmp_path):
    import bitsandbytes as bnb
    import bitsandbytes.functional as F
    import torch
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    results = {s: run_json(cli, "--adapter", qlora_dir, "--strategy", s, "-o", tmp_path / s)
               for s in ("dequantize", "original", "requantize")}
    for strategy, result in results.items():
        assert result["strategy"] == strategy and result["quantized_base"] == "nf4"
        assert result["verification"]["max_rel_logit_diff"] <= 1e-4  # the fold itself is exact
    # the weights: W_merged = Ŵ + ΔW (dequantize), W + ΔW (original), where ΔW = B·A·alpha/r
    original = AutoModelForCausalLM.from_pretrained(llama_dir).model.layers[0].self_attn.q_proj.weight.detach()
    adapter = load_file(qlora_dir / "adapter_model.safetensors")
    key = "base_model.model.model.layers.0.self_attn.q_proj"
    delta = adapter[f"{key}.lora_B.weight"] @ adapter[f"{key}.lora_A.weight"] * (8 / 4)
    packed, state = F.quantize_4bit(original, quant_type="nf4", blocksize=64, compress_statistics=True)
    dequantized = F.dequantize_4bit(packed, state)
    weight = lambda s: load_file(tmp_path / s / "model.safetensors")["model.layers.0.self_attn.q_proj.weight"]  # noqa
    assert torch.allclose(weight("dequantize"), dequantized + delta, atol=1e-6)
    assert torch.allclose(weight("original"), original + delta, atol=1e-6)
    assert not torch.allclose(weight("dequantize"), weight("original"), atol=1e-4)
    # against the model as trained (nf4 base + adapter): dequantize is closest; original and requantize drift
    drift = {s: r["drift_from_trained"]["max_abs_logit_diff"] for s, r in results.items()}
    assert drift["dequantize"] * 5 < drift["original"] and drift["dequantize"] * 5 < drift["requantize"]
    requantized = AutoModelForCausalLM.from_pretrained(tmp_path / "requantize")
    layers = [m for m in requantized.modules() if isinstance(m, bnb.nn.Linear4bit)]
    assert len(layers) == 14 and layers[0].weight.quant_state.quant_type == "nf4"
    assert results["requantize"]["saved_quantized"]


def test_sequence_classification_lora(cli, llama_dir, tmp_path):
    """An adapter for a task model (peft task_type SEQ_CLS, the new head in modules_to_save) merges into that task's
    model, head included."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    torch.manual_seed(0)
    base = AutoModelForSequenceClassification.from_pretrained(llama_dir, num_labels=3, dtype=torch.float32)
    adapter = tmp_path / "cls-adapter"
    get_peft_model(base, LoraConfig(task_type="SEQ_CLS", r=4, target_modules=["q_proj", "v_proj"],
                                    init_lora_weights=False)).save_pretrained(adapter)
    result = run_json(cli, "--adapter", adapter, "-o", tmp_path / "merged")
    assert result["verification"]["max_rel_logit_diff"] <= 1e-5
    merged = AutoModelForSequenceClassification.from_pretrained(tmp_path / "merged").eval()
    tok = AutoTokenizer.from_pretrained(tmp_path / "merged")
    with torch.no_grad():
        scores = merged(**tok(TEXTS[0], return_tensors="pt")).logits
    assert scores.shape == (1, 3)


def test_no_verify(cli, lora_dir, tmp_path):
    result = run_json(cli, "--adapter", lora_dir, "-o", tmp_path / "m", "--no-verify")
    assert result["verification"] is None and result["tolerance"] is None
    assert (tmp_path / "m" / "model.safetensors").is_file()


# ------------------------------------------------------------------------------------------------ bad input

@pytest.mark.parametrize("fixture, method", [("prompt_tuning_dir", "prompt-tuning"),
                                             ("prefix_tuning_dir", "prefix-tuning")])
def test_virtual_token_adapters_are_refused(cli, request, tmp_path, fixture, method):
    adapter = request.getfixturevalue(fixture)
    result = cli("merge", "--adapter", adapter, "-o", tmp_path / "m")
    assert_clean_error(result, 2, f"a {method} adapter cannot be merged", "virtual tokens",
                       f"llmkit generate --model BASE --adapter {adapter}")
    assert not (tmp_path / "m").exists()


def test_adapter_for_another_base_is_refused(cli, lora_dir, wide_llama_dir, tmp_path):
    result = cli("merge", "--base", wide_llama_dir, "--adapter", lora_dir, "-o", tmp_path / "m")
    assert_clean_error(result, 2, "was trained on", str(wide_llama_dir))
    # the same claim with the name edited: the shapes still give it away, before anything is loaded
    moved = tmp_path / "moved"
    shutil.copytree(lora_dir, moved)
    config = json.loads((moved / "adapter_config.json").read_text())
    config["base_model_name_or_path"] = str(wide_llama_dir)
    (moved / "adapter_config.json").write_text(json.dumps(config))
    result = cli("merge", "--adapter", moved, "-o", tmp_path / "m")
    assert_clean_error(result, 2, "does not fit", "takes 128 inputs, the adapter's lora_A 64")
    assert not (tmp_path / "m").exists()


def test_existing_output_dir_needs_overwrite(cli, lora_dir, tmp_path):
    out = tmp_path / "taken"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    assert_clean_error(cli("merge", "--adapter", lora_dir, "-o", out), 2, "not empty", "--overwrite")
    assert [p.name for p in out.iterdir()] == ["keep.txt"]
    assert run_json(cli, "--adapter", lora_dir, "-o", out, "--overwrite", "--no-verify")["output_dir"] == str(out)
    assert not (out / "keep.txt").exists()


def test_failed_verification_leaves_nothing(cli, lora_dir, tmp_path):
    out = tmp_path / "merged"
    result = cli("merge", "--adapter", lora_dir, "-o", out, "--dtype", "bf16", "--tolerance", "1e-9")
    assert result.exit_code == 1 and result.stdout == "" and "Traceback" not in result.stderr
    lines = result.stderr.splitlines()  # progress lines first, then the error and its hint
    assert lines[-2].startswith("Error: verification failed") and "nothing was written" in lines[-2]
    assert lines[-1].startswith("Hint: ") and "--dtype fp32" in lines[-1]
    assert list(tmp_path.iterdir()) == []
