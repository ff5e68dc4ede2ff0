"""The memory model: exact bytes for small hand-computed cases, and the rules behind each term."""

import json

import pytest

from llmkit import memory
from llmkit.errors import ConfigError
from llmkit.config import MemoryEstimateConfig, parse_size

TINY = dict(model_type="llama", hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=4, vocab_size=100, tie_word_embeddings=False)
P = 95_040                      # parameters of TINY (see test_modelspec)
LINEAR = 2 * (4 * 64 * 64 + 3 * 64 * 128)  # values in the blocks' linear layers


@pytest.fixture()
def tiny(tmp_path):
    path = tmp_path / "config.json"
    path.write_text(json.dumps(TINY))
    return str(path)


def est(model, **kwargs):
    return memory.estimate(MemoryEstimateConfig(model=model, overhead="0", **kwargs))


def test_full_finetune_fp32_adamw_is_20_bytes_per_param_at_the_step(tiny):
    # weights 4 + gradients 4 + AdamW 8 + foreach sqrt(v) temporary 4 (activations are tiny at b=1 s=8)
    result = est(tiny, seq_len=8, optimizer="adamw")
    assert result.peak_phase == "optimizer_step"
    assert result.per_device == {"weights": 4 * P, "gradients": 4 * P, "optimizer": 12 * P, "activations": 0,
                                 "overhead": 0, "total": 20 * P}
    assert result.params_total == result.params_trainable == P


def test_fused_adamw_has_no_temporaries_and_sgd_no_state(tiny):
    assert est(tiny, seq_len=8, optimizer="adamw-fused").phases["optimizer_step"] == 16 * P
    assert est(tiny, seq_len=8, optimizer="sgd").phases["optimizer_step"] == 8 * P
    assert est(tiny, seq_len=8, optimizer="sgd-momentum").phases["optimizer_step"] == 12 * P


def test_pure_bf16_halves_weights_gradients_and_states(tiny):
    result = est(tiny, seq_len=8, precision="bf16", optimizer="adamw")
    assert result.phases["optimizer_step"] == 10 * P


def test_adafactor_factored_states(tiny):
    # row + column vectors per matrix, a full vector per 1-D tensor, all fp32
    assert memory._optimizer_state_bytes("adafactor", 64 * 128, (64, 128), 4) == 4 * (64 + 128)
    assert memory._optimizer_state_bytes("adafactor", 64, (64,), 4) == 4 * 64
    matrices = 2 * (4 * (64 + 64) + 3 * (64 + 128)) + 2 * (100 + 64)     # blocks, embedding, head
    vectors = 2 * 2 * 64 + 64                                             # norms
    result = est(tiny, seq_len=8, optimizer="adafactor")
    assert result.explain["optimizer"].split("= ")[1].startswith(f"{4 * (matrices + vectors):,} B")


def test_adamw_8bit_states_small_tensors_stay_32bit():
    assert memory._optimizer_state_bytes("adamw-8bit", 64, (64,), 4) == 8 * 64
    assert memory._optimizer_state_bytes("adamw-8bit", 4096 * 256, (4096, 256), 4) == 2 * 4096 * 256 + 8 * 4096


def test_nf4_weights_are_4_5_bits_and_4_127_with_double_quant(tiny):
    rest = P - LINEAR                                   # embeddings, head, norms stay bf16
    plain = est(tiny, mode="inference", quant="nf4", seq_len=8).per_device["weights"]
    double = est(tiny, mode="inference", quant="nf4", double_quant=True, seq_len=8).per_device["weights"]
    assert plain == int(LINEAR * 4.5 / 8 + rest * 2)
    assert double == int(LINEAR * (0.5 + 1 / 64 + 4 / (64 * 256)) + rest * 2)
    assert round(8 * (0.5 + 1 / 64 + 4 / (64 * 256)), 3) == 4.127


def test_int8_weights_have_a_row_scale(tiny):
    rest = P - LINEAR
    scales = 2 * 4 * (4 * 64 + 2 * 128 + 64)            # one fp32 per output row of every linear layer
    assert est(tiny, mode="inference", quant="int8", seq_len=8).per_device["weights"] == LINEAR + scales + rest * 2


def test_inference_kv_cache_and_one_step(tiny):
    result = est(tiny, mode="inference", batch_size=2, seq_len=16)
    kv = 2 * 2 * 4 * 16 * 16 * 2 * 2                    # 2 * layers * kv_heads * head_dim * seq * batch * bf16
    step = 2 * 16 * (2 * 64 + 3 * 128) * 2
    logits = 2 * 100 * (2 + 4)
    assert result.per_device["activations"] == kv + step + logits
    assert result.per_device["weights"] == 2 * P and result.peak_phase == "inference"


def test_lora_counts_and_frozen_base(tiny):
    qv = est(tiny, seq_len=8, peft="lora")
    assert qv.params_trainable == 2 * 2 * 8 * (64 + 64)
    every = est(tiny, seq_len=8, peft="lora", lora_targets=("all-linear",), lora_rank=4)
    assert every.params_trainable == 2 * 4 * (4 * (64 + 64) + 3 * (64 + 128))
    assert qv.per_device["total"] < est(tiny, seq_len=8).per_device["total"]


def test_ia3_and_prompt_methods_count(tiny):
    assert est(tiny, seq_len=8, peft="ia3").params_trainable == 2 * (64 + 64 + 128)
    assert est(tiny, seq_len=8, peft="prompt-tuning", num_virtual_tokens=10).params_trainable == 10 * 64
    assert est(tiny, seq_len=8, peft="prefix-tuning", num_virtual_tokens=10).params_trainable == 10 * 2 * 2 * 64
    assert est(tiny, seq_len=8, peft="p-tuning", num_virtual_tokens=10).params_trainable == \
        10 * 64 + 3 * 64 * 64 + 3 * 64


def test_freezing():
    head_only = est("bert-base", task="seq-cls", freeze_base=True)
    assert head_only.params_trainable == 768 * 2 + 2
    last_two = est("llama-2-7b", trainable_layers=2)
    per_block = 4 * 4096 * 4096 + 3 * 4096 * 11008 + 2 * 4096
    assert last_two.params_trainable == 2 * per_block + 4096 + 32000 * 4096


def test_activation_terms(tiny):
    base = dict(batch_size=8, seq_len=512, optimizer="sgd")
    plain = est("llama-2-7b", **base)
    ckpt = est("llama-2-7b", grad_checkpointing=True, **base)
    eager = est("llama-2-7b", attention="eager", **base)
    assert plain.peak_phase == "forward_backward"
    assert ckpt.per_device["activations"] < plain.per_device["activations"] / 4
    assert eager.per_device["activations"] > plain.per_device["activations"]
    # doubling the batch roughly doubles activations
    double = est("llama-2-7b", batch_size=16, seq_len=512, optimizer="sgd")
    assert 1.9 < double.per_device["activations"] / plain.per_device["activations"] < 2.1


def test_grad_accum_keeps_gradients_alive(tiny):
    one = est("llama-2-7b", batch_size=4, seq_len=1024, optimizer="sgd")
    accum = est("llama-2-7b", batch_size=4, seq_len=1024, optimizer="sgd", grad_accum=4)
    assert accum.per_device["gradients"] >= one.per_device["gradients"]
    assert accum.per_device["gradients"] == 4 * 6_738_415_616


def test_zero_partitioning_offload_and_communication():
    p = 6_738_415_616
    ddp = est("llama-2-7b", gpus=8, mixed_precision="bf16", optimizer="adamw-fused")
    assert ddp.communication_bytes_per_step == int(round(2 * p * 4 * 7 / 8))
    z1 = est("llama-2-7b", gpus=8, zero=1, mixed_precision="bf16")
    assert z1.per_device["weights"] == 2 * p                            # DeepSpeed trains the model in bf16
    assert z1.phases["optimizer_step"] >= 2 * p + 2 * p + 12 * p // 8   # + fp32 master and Adam states / 8
    z3 = est("llama-2-7b", gpus=8, zero=3, mixed_precision="bf16")
    assert z3.per_device["weights"] < 2 * p / 4
    assert z3.communication_bytes_per_step > z1.communication_bytes_per_step
    off = est("llama-2-7b", gpus=8, zero=3, offload="optimizer+params", mixed_precision="bf16")
    assert off.cpu_ram > 12 * p and off.per_device["optimizer"] == 0


def test_json_keys(tiny):
    data = est(tiny, gpu_memory="1GiB").to_json()
    for key in ("params_total", "params_trainable", "per_device", "cpu_ram", "peak_phase",
                "communication_bytes_per_step", "assumptions", "fits"):
        assert key in data
    assert set(data["per_device"]) == {"weights", "gradients", "optimizer", "activations", "overhead", "total"}
    assert all(isinstance(v, int) for v in data["per_device"].values())
    assert data["fits"] is True


@pytest.mark.parametrize("text, value", [("24GiB", 24 * 2**30), ("8GB", 8 * 10**9), ("512MiB", 2**29),
                                         ("0", 0), (1000, 1000)])
def test_parse_size(text, value):
    assert parse_size(text, "--gpu-memory") == value


def test_default_overhead_is_its_own_row(tiny):
    result = memory.estimate(MemoryEstimateConfig(model=tiny))
    tensors = max(result.phases.values())
    # CUDA context (512 MiB) + the caching allocator's 10 % over the tensor peak; nothing of it on CPU
    assert result.per_device["overhead"] == 512 * 2**20 + int(0.10 * tensors)
    assert result.assumptions["overhead_calibrated"] is False
    assert memory.estimate(MemoryEstimateConfig(model=tiny, device="cpu")).per_device["overhead"] == 0


@pytest.mark.parametrize("kwargs, needle", [
    (dict(params="1.4B", quant="nf4"), "only adapters can train"),
    (dict(params="1.4B", quant="nf4", peft="lora", zero=3), "ZeRO-3"),
    (dict(params="1.4B", gpus=0), "--gpus"),
    (dict(params="1.4B", offload="optimizer+params", zero=2), "--zero 3"),
    (dict(params="1.4B", model="gpt2"), "exactly one"),
    (dict(params="1.4B", plan=True), "--gpu-memory"),
    (dict(params="1.4B", precision="bf16", mixed_precision="bf16"), "--mixed-precision"),
])
def test_contradictions(kwargs, needle):
    with pytest.raises(ConfigError, match=needle.replace("-", r"\-").replace("+", r"\+")):
        MemoryEstimateConfig(**kwargs)


