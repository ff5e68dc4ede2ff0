"""FSDP FULL_SHARD in memory-estimate (`--strategy fsdp`): its model states per GPU against a formula written out
here from the LLaMA architecture, and FSDP in the plan search where `llmkit launch` runs it (and nowhere else)."""

import dataclasses
import json
import shlex

import pytest

from helpers import assert_clean_error
from llmkit import memory
from llmkit.config import MemoryEstimateConfig

GIB = 2**30
# (memory-estimate fields, hidden, intermediate, layers, kv_heads, heads, vocab) of two LLaMA shapes (untied head,
# no biases)
SHAPES = {
    "llama-2-7b": (dict(model="llama-2-7b"), 4096, 11008, 32, 32, 32, 32000),
    "small-gqa": (dict(model="llama-2-7b", layers=4, hidden=1024, heads=8, kv_heads=2, intermediate=2816),
                  1024, 2816, 4, 2, 8, 32000),
}


def llama_units(h, intermediate, layers, kv_heads, heads, vocab):
    """Parameters of one decoder block (FSDP's wrapped unit) and of the root unit (embedding, final norm, head)."""
    kv = h // heads * kv_heads
    block = 2 * h * h + 2 * h * kv + 3 * h * intermediate + 2 * h
    root = 2 * vocab * h + h
    return block, root, layers * block + root


@pytest.mark.parametrize("gpus", [2, 8])
@pytest.mark.parametrize("shape", SHAPES)
def test_fsdp_model_states_per_gpu_are_the_sharded_states_plus_the_gathered_units(shape, gpus):
    fields, *dims = SHAPES[shape]
    block, root, params = llama_units(*dims)
    cfg = MemoryEstimateConfig(**fields, strategy="fsdp", gpus=gpus, mixed_precision="bf16",
                               optimizer="adamw-fused", batch_size=1, seq_len=2048)
    est = memory.estimate(cfg)
    assert est.params_total == params
    # fp32 shards (the master weights), fp32 gradient shards, two fp32 Adam states: each 1/N
    assert est.phases["optimizer_step"] == pytest.approx((4 + 4 + 8) * params / gpus, abs=4)
    assert est.per_device["optimizer"] == pytest.approx(8 * params / gpus, abs=2)
    # in backward: the shard, the root kept gathered in bf16, the block in backward and the one prefetched
    assert est.peak_phase == "forward_backward"
    assert est.per_device["weights"] == pytest.approx(4 * params / gpus + 2 * (root + 2 * block), abs=4)
    # under no_sync (accumulation) every unit keeps its unsharded bf16 gradient
    accumulating = memory.estimate(dataclasses.replace(cfg, grad_accum=2))
    assert accumulating.per_device["gradients"] >= 2 * params


def test_fsdp_lora_shards_only_the_adapters_gradients_and_states():
    # peft wraps each LoRA layer as an FSDP unit of its own: the frozen blocks have no gradient at all
    _, _, params = llama_units(*SHAPES["llama-2-7b"][1:])
    adapters = 32 * 2 * (8 * 4096 + 4096 * 8)       # rank 8 on q_proj and v_proj (4096 x 4096) in 32 blocks
    est = memory.estimate(MemoryEstimateConfig(model="llama-2-7b", peft="lora", strategy="fsdp", gpus=8,
                                               optimizer="adamw-fused", batch_size=1, seq_len=512))
    assert est.params_trainable == adapters
    assert est.phases["optimizer_step"] == pytest.approx((4 * params + (4 + 4 + 8) * adapters) / 8, abs=4)


def test_fsdp_is_not_zero3():
    common = dict(model="llama-2-7b", gpus=8, mixed_precision="bf16", batch_size=1, seq_len=2048)
    fsdp, zero3 = memory.estimate(MemoryEstimateConfig(**common, strategy="fsdp")), \
        memory.estimate(MemoryEstimateConfig(**common, zero=3))
    _, _, params = llama_units(*SHAPES["llama-2-7b"][1:])
    # DeepSpeed keeps bf16 weights and the fp32 masters in its optimizer; FSDP's fp32 shards are the masters
    assert zero3.per_device["optimizer"] == pytest.approx((8 + 4) * params / 8, abs=2)
    assert fsdp.per_device["optimizer"] == pytest.approx(8 * params / 8, abs=2)
    assert fsdp.per_device["weights"] > 4 * params / 8 > zero3.per_device["weights"] - 2 * params / 8
    adafactor = memory.estimate(MemoryEstimateConfig(**common, strategy="fsdp", optimizer="adafactor"))
    assert adafactor.per_device["optimizer"] == pytest.approx(4 * params / 8, abs=2)   # 1-D shards: unfactored


def test_memory_estimate_reports_fsdp_and_refuses_it_on_cpus(cli):
    result = cli("memory-estimate", "--model", "llama-2-7b", "--strategy", "fsdp", "--gpus", "8",
                 "--mixed-precision", "bf16", "--explain", "--json")
    assert result.exit_code == 0, result.stderr
    document = json.loads(result.stdout)
    assert document["assumptions"]["strategy"] == "fsdp" and "gathered" in document["explain"]["weights"]
    assert_clean_error(cli("memory-estimate", "--model", "llama-2-7b", "--strategy", "fsdp", "--gpus", "2",
                           "--device", "cpu"), 2, "--strategy fsdp with --device cpu")


def _plans(cli, *flags):
    result = cli("memory-estimate", *flags, "--plan", "--json")
    assert result.exit_code == 0, result.stderr
    return json.loads(result.stdout)["plans"]


def test_a_7b_full_fine_tune_on_8_gpus_of_24gib_gets_an_fsdp_plan_launch_accepts(cli):
    plans = _plans(cli, "--model", "llama-2-7b", "--gpus", "8", "--gpu-memory", "24GiB", "--batch-size", "1",
                   "--seq-len", "2048")
    fsdp = [p for p in plans if "--strategy fsdp" in p["command"]]
    assert fsdp, [p["command"] for p in plans]
    for plan in fsdp:
        argv = plan["argv"]
        assert argv[:6] == ["llmkit", "launch", "--strategy", "fsdp", "--num-processes", "8"]
        assert argv[6:9] == ["--", "llmkit", "sft"] and "FSDP FULL_SHARD" in plan["changes"]
        assert plan["per_device_total"] <= 24 * GIB and plan["hf_training_arguments"]["fsdp"] == "full_shard auto_wrap"
        launched = cli(*argv[1:6], "--dry-run", "--no-check-sources", "--gpu-memory", "24GiB", "--json", *argv[6:])
        assert launched.exit_code == 0, (plan["command"], launched.stderr)
        memory_of_launch = json.loads(launched.stdout)["memory"]
        assert memory_of_launch["fits"] and memory_of_launch["strategy"] == "fsdp"
        # the plan's memory-estimate flags rebuild the same estimate
        again = cli("memory-estimate", "--model", "llama-2-7b", "--gpu-memory", "24GiB", *plan["flags"], "--json")
        assert json.loads(again.stdout)["per_device"]["total"] == plan["per_device_total"]


@pytest.mark.parametrize("flags", [
    ("--model", "llama-2-7b", "--peft", "lora", "--quant", "nf4", "--batch-size", "8", "--seq-len", "4096",
     "--gpus", "4", "--gpu-memory", "16GiB"),
    ("--model", "llama-2-7b", "--batch-size", "1", "--seq-len", "2048", "--gpus", "8", "--gpu-memory", "24GiB",
     "--device", "cpu"),
], ids=["qlora", "cpu"])
def test_no_fsdp_plan_where_launch_refuses_it(cli, flags):
    plans = _plans(cli, *flags)
    assert plans
    assert not [p["command"] for p in plans if "fsdp" in shlex.split(p["command"])]
