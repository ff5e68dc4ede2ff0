"""Tiny LLaMA models and PEFT adapters for the `quantize model` and `merge` tests, built locally (session fixtures).

bitsandbytes' CPU 4-bit kernels need layer input sizes that are multiples of the blocksize, so the models use
hidden 64/128. Import the fixtures into a test module with `from _quantize_fixtures import *`.
"""

import json
from pathlib import Path

import pytest

CHAT_TEMPLATE = ("{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}</s>{% endfor %}"
                 "{% if add_generation_prompt %}<|assistant|>{% endif %}")
LLAMA = dict(num_hidden_layers=2, hidden_size=64, intermediate_size=128, num_attention_heads=4, num_key_value_heads=2,
             bos_token_id=0, eos_token_id=1, pad_token_id=2, max_position_embeddings=128, tie_word_embeddings=False)


def build_llama(out: Path, bpe_dir: Path, seed: int = 0, **overrides) -> Path:
    import torch

    torch.set_num_threads(1)
    from llmkit.modeling import build_model, load_tokenizer

    tok = load_tokenizer(str(bpe_dir))
    tok.chat_template = CHAT_TEMPLATE
    model = build_model("llama-2-7b", overrides={**LLAMA, **overrides}, vocab_size=len(tok), seed=seed)
    model.generation_config.max_new_tokens = 7
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return out


@pytest.fixture(scope="session")
def llama_dir(tmp_path_factory, bpe_dir) -> Path:
    return build_llama(tmp_path_factory.mktemp("q") / "llama", bpe_dir)


@pytest.fixture(scope="session")
def wide_llama_dir(tmp_path_factory, bpe_dir) -> Path:
    """Hidden 128 / MLP 256, so every layer input is a multiple of blocksize 128."""
    return build_llama(tmp_path_factory.mktemp("q") / "wide", bpe_dir, seed=1, hidden_size=128, intermediate_size=256)


def _fp(base):
    import torch
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)


def _save(peft_model, out: Path, base: Path) -> Path:
    from transformers import AutoTokenizer

    peft_model.save_pretrained(out)
    AutoTokenizer.from_pretrained(base).save_pretrained(out)
    return out


@pytest.fixture(scope="session")
def lora_dir(tmp_path_factory, llama_dir) -> Path:
    import torch
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(0)
    model = get_peft_model(_fp(llama_dir), LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj",
                                                                                          "down_proj"],
                                                       init_lora_weights=False))
    return _save(model, tmp_path_factory.mktemp("a") / "lora", llama_dir)


@pytest.fixture(scope="session")
def ia3_dir(tmp_path_factory, llama_dir) -> Path:
    import torch
    from peft import IA3Config, get_peft_model

    torch.manual_seed(0)
    model = get_peft_model(_fp(llama_dir), IA3Config(target_modules=["k_proj", "v_proj", "down_proj"],
                                                     feedforward_modules=["down_proj"], init_ia3_weights=False))
    return _save(model, tmp_path_factory.mktemp("a") / "ia3", llama_dir)


@pytest.fixture(scope="session")
def prompt_tuning_dir(tmp_path_factory, llama_dir) -> Path:
    from peft import PromptTuningConfig, get_peft_model

    model = get_peft_model(_fp(llama_dir), PromptTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=4))
    return _save(model, tmp_path_factory.mktemp("a") / "prompt", llama_dir)


@pytest.fixture(scope="session")
def prefix_tuning_dir(tmp_path_factory, llama_dir) -> Path:
    from peft import PrefixTuningConfig, get_peft_model

    model = get_peft_model(_fp(llama_dir), PrefixTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=4))
    return _save(model, tmp_path_factory.mktemp("a") / "prefix", llama_dir)


@pytest.fixture(scope="session")
def qlora_dir(tmp_path_factory, llama_dir) -> Path:
    """A LoRA trained (here: randomly initialised) over the nf4 + double-quant base, as `llmkit peft --quant nf4`
    writes it, with llmkit_adapter.json."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    torch.manual_seed(0)
    nf4 = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                             bnb_4bit_compute_dtype=torch.float32)
    base = AutoModelForCausalLM.from_pretrained(llama_dir, device_map={"": "cpu"}, quantization_config=nf4)
    model = get_peft_model(base, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"],
                                            init_lora_weights=False))
    with torch.no_grad():  # larger B: the strategies then differ clearly
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.mul_(20)
    out = _save(model, tmp_path_factory.mktemp("a") / "qlora", llama_dir)
    (out / "llmkit_adapter.json").write_text(json.dumps(
        {"method": "lora", "base_model": str(llama_dir), "quant": "nf4", "double_quant": True, "blocksize": 64,
         "compute_dtype": "fp32"}), encoding="utf-8")
    return out


__all__ = ["llama_dir", "wide_llama_dir", "lora_dir", "ia3_dir", "prompt_tuning_dir", "prefix_tuning_dir",
           "qlora_dir", "build_llama", "CHAT_TEMPLATE"]
