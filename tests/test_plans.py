"""memory-estimate's plan search and --fit (llmkit.plans): what fits, in what order, and nothing that cannot run.

The reference for "fits" is the estimate of the configuration written out here by hand; --fit is checked against its
own neighbours (N fits, N + 1 does not)."""

import dataclasses
import json

import pytest

from helpers import assert_clean_error
from llmkit import memory
from llmkit.config import MemoryEstimateConfig
from llmkit.plans import largest_fit, search_plans

GIB = 2**30
LLAMA_70B = dict(model="llama-2-7b", layers=80, hidden=8192, heads=64, kv_heads=8, intermediate=28672)


def plans_for(**kwargs):
    cfg = MemoryEstimateConfig(plan=True, **kwargs)
    spec = memory.load_model_spec(cfg)
    return cfg, search_plans(cfg, spec, memory.estimate(cfg, spec))


def test_plan_search_finds_fitting_plans():
    cfg, plans = plans_for(params="1.4B", gpu_memory="8GiB", batch_size=8, seq_len=1024)
    assert plans and any(p.per_device_total <= 8 * GIB and not p.changes_what_is_trained for p in plans)
    assert plans[0].flags and plans[0].hf_training_arguments


def test_qlora_plans_need_no_literal_precision():
    # Llama-2-70B QLoRA, batch 4 x 2048 on 48 GiB: the case that found nothing without --precision bf16
    cfg, plans = plans_for(**LLAMA_70B, peft="lora", quant="nf4", double_quant=True, batch_size=4, seq_len=2048,
                           gpu_memory="48GiB")
    assert plans
    for plan in plans:
        again = memory.estimate(plan.config)
        assert again.per_device["total"] <= 48 * GIB and plan.config.quant == "nf4"


def test_7b_lora_on_16gib_suggests_a_bf16_base_or_qlora_before_offload_or_shorter_sequences():
    cfg, plans = plans_for(model="llama-2-7b", peft="lora", batch_size=4, seq_len=2048, gpu_memory="16GiB")
    on_gpu = [p.rank for p in plans if p.config.offload == "none" and p.config.seq_len == 2048
              and p.config.gpus == 1 and (p.config.effective_precision == "bf16" or p.config.quant == "nf4")]
    assert on_gpu and on_gpu[0] == 1, [p.changes for p in plans]
    later = [p.rank for p in plans if p.config.offload != "none" or p.config.seq_len < 2048]
    assert all(rank > on_gpu[0] for rank in later)
    assert any(p.config.quant == "nf4" and p.config.offload == "none" for p in plans), [p.changes for p in plans]


@pytest.mark.parametrize("kwargs", [
    dict(model="llama-2-7b", batch_size=4, seq_len=2048, gpu_memory="24GiB"),
    dict(model="llama-2-7b", batch_size=4, seq_len=2048, gpu_memory="24GiB", gpus=2),
    dict(params="13B", batch_size=2, seq_len=2048, gpu_memory="40GiB"),
])
def test_more_gpus_are_offered_only_when_they_need_less_memory_each(kwargs):
    cfg, plans = plans_for(**kwargs)
    assert plans
    for plan in plans:
        assert not (plan.config.optimizer.endswith("8bit") and plan.config.offload != "none"), plan.changes
        c = plan.config
        if c.gpus > cfg.gpus:
            # the same run on the GPUs asked for, at the same global batch, with ZeRO only where it partitions
            alone = dataclasses.replace(c, gpus=cfg.gpus, grad_accum=c.grad_accum * c.gpus // cfg.gpus,
                                        **({"zero": 0} if cfg.gpus == 1 and c.offload == "none" else {}))
            assert plan.per_device_total < memory.estimate(alone).per_device["total"], plan.changes
            assert not memory.estimate(alone).fits
        assert c.batch_size * c.grad_accum * c.gpus == cfg.batch_size * cfg.grad_accum * cfg.gpus


def test_inference_plans_search_quantization_batch_and_kv_cache():
    cfg, plans = plans_for(model="llama-2-7b", mode="inference", batch_size=16, seq_len=4096, gpu_memory="16GiB")
    assert plans and any(p.config.quant != "none" for p in plans)
    for plan in plans:
        assert memory.estimate(plan.config).per_device["total"] <= 16 * GIB


@pytest.mark.parametrize("lever, field", [("batch", "batch_size"), ("seq-len", "seq_len")])
@pytest.mark.parametrize("kwargs", [
    dict(model="llama-2-7b", peft="lora", precision="bf16", grad_checkpointing=True, gpu_memory="16GiB"),
    dict(params="350M", mixed_precision="bf16", grad_checkpointing=True, gpu_memory="24GiB"),
    dict(model="gpt2", mode="inference", batch_size=4, gpu_memory="2GiB"),
])
def test_fit_is_the_largest_value_that_fits(lever, field, kwargs):
    cfg = MemoryEstimateConfig(fit=lever, **kwargs)
    fit = largest_fit(cfg, memory.load_model_spec(cfg))
    n = fit["value"]
    assert fit["lever"] == field.replace("_size", "") and n >= 1
    at_n = memory.estimate(dataclasses.replace(cfg, **{field: n}, fit=None))
    assert at_n.fits and at_n.per_device["total"] == fit["per_device_total"]
    assert not memory.estimate(dataclasses.replace(cfg, **{field: n + 1}, fit=None)).fits


def test_fit_through_the_cli(cli):
    flags = ("--model", "llama-2-7b", "--peft", "lora", "--base-dtype", "bf16", "--grad-checkpointing", "--seq-len",
             "2048", "--gpu-memory", "16GiB", "--fit", "batch")
    result = cli("memory-estimate", *flags, "--json")
    assert result.exit_code == 0, result.stderr
    fit = json.loads(result.stdout)["fit"]
    assert fit["lever"] == "batch" and fit["value"] >= 1 and fit["per_device_total"] <= 16 * GIB
    human = cli("memory-estimate", *flags)
    assert f"largest batch that fits: {fit['value']:,}" in human.stdout


def test_fit_when_nothing_fits_is_one_error(cli):
    assert_clean_error(cli("memory-estimate", "--model", "llama-2-7b", "--gpu-memory", "16GiB", "--fit", "seq-len"),
                       1, "--fit seq-len: even --seq-len 1 needs")
    assert_clean_error(cli("memory-estimate", "--model", "llama-2-7b", "--fit", "batch"), 2, "needs --gpu-memory")


def test_every_plan_prints_host_ram_and_the_time_cost(cli):
    result = cli("memory-estimate", "--model", "llama-2-7b", "--batch-size", "4", "--seq-len", "2048",
                 "--gpu-memory", "24GiB", "--plan", "--json")
    plans = json.loads(result.stdout)["plans"]
    offloading = [p for p in plans if "offload" in " ".join(p["changes"])]
    assert offloading and all(p["host_ram"]["total"] >= p["cpu_ram"] > 0 for p in offloading)
    human = cli("memory-estimate", "--model", "llama-2-7b", "--batch-size", "4", "--seq-len", "2048",
                "--gpu-memory", "24GiB", "--plan").stdout
    assert "host RAM" in human and "step time ×" in human
