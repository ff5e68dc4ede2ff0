"""Host RAM (`host_ram_bytes`) against a measured load, ZeRO-3's buffers against the DeepSpeed config `llmkit launch`
writes, and the estimate's device reaching the training-run forecast."""

import json
import subprocess
import sys

import pytest

from llmkit import memory
from llmkit.config import MemoryEstimateConfig

# Loads a saved model in a fresh interpreter and prints the growth of its peak RSS over the RSS before the load.
# The warm-up loads a one-layer model the same way first: the library code pages and allocator arenas that any first
# load faults in belong to the process, not to the model. The peak is the kernel's VmHWM, reset after the warm-up
# (clear_refs 5), as ru_maxrss cannot be reset and the warm-up's own peak may lie above the RSS before the load. Touching every parameter (as the first forward or the move
# to a GPU does) reads the pages a memory-mapped parameter aliases; max() reads without making a copy.
_MEASURE = r"""
import json, sys
import torch
from transformers import AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM

def status(field):
    with open("/proc/self/status") as lines:
        return next(int(line.split()[1]) * 1024 for line in lines if line.startswith(field + ":"))

warm_dir, model_dir, dtype = sys.argv[1], sys.argv[2], getattr(torch, sys.argv[3])
warm = LlamaForCausalLM(LlamaConfig(hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                    num_attention_heads=2, vocab_size=64))
for saved_dtype in (torch.float32, torch.bfloat16):
    warm.to(saved_dtype).save_pretrained(f"{warm_dir}/{saved_dtype}")
    for load_dtype in (torch.float32, torch.bfloat16):
        model = AutoModelForCausalLM.from_pretrained(f"{warm_dir}/{saved_dtype}", dtype=load_dtype)
        [p.max() for p in model.parameters()]
del model, warm
with open("/proc/self/clear_refs", "w") as clear:
    clear.write("5")
before = status("VmRSS")
model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=dtype)
[p.max() for p in model.parameters()]
print(json.dumps({"peak_growth": status("VmHWM") - before}))
"""

TOLERANCE = 0.08   # RSS moves by a few MiB with the allocator's arenas; the model here is 50-75 MB


@pytest.fixture(scope="module")
def saved_llama(tmp_path_factory):
    """A ~12.6M-parameter LLaMA (50 MB in fp32) saved in fp32 and in bf16, sharded like a hub checkpoint."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    root = tmp_path_factory.mktemp("host-ram")
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(hidden_size=384, intermediate_size=1024, num_hidden_layers=4,
                                         num_attention_heads=6, vocab_size=8000, tie_word_embeddings=False))
    model.save_pretrained(root / "fp32", max_shard_size="20MB")
    model.to(torch.bfloat16).save_pretrained(root / "bf16", max_shard_size="20MB")
    return root


def _measured_load(root, saved: str, loaded: str) -> int:
    done = subprocess.run([sys.executable, "-c", _MEASURE, str(root / "warm"), str(root / saved),
                           {"fp32": "float32", "bf16": "bfloat16"}[loaded]],
                          capture_output=True, text=True, check=True, timeout=300)
    return json.loads(done.stdout.strip().splitlines()[-1])["peak_growth"]


@pytest.mark.parametrize("saved, loaded", [("fp32", "fp32"), ("bf16", "fp32"), ("fp32", "bf16")])
def test_load_host_ram_is_the_measured_peak_of_loading(saved_llama, saved, loaded):
    est = memory.estimate(MemoryEstimateConfig(model=str(saved_llama / saved), precision=loaded))
    measured = _measured_load(saved_llama, saved, loaded)
    assert abs(est.host_ram_bytes["load"] - measured) <= TOLERANCE * measured, (est.host_ram_bytes, measured)


def test_every_process_of_a_node_loads_its_copy_and_offload_is_the_cpu_ram():
    one = memory.estimate(MemoryEstimateConfig(params="1B", zero=3, offload="optimizer+params", gpus=1))
    four = memory.estimate(MemoryEstimateConfig(params="1B", zero=3, offload="optimizer+params", gpus=4))
    assert four.host_ram_bytes["load"] == 4 * one.host_ram_bytes["load"] == 4 * 4 * one.params_total
    for est in (one, four):
        host = est.host_ram_bytes
        assert host["offload"] == est.cpu_ram > 0
        assert host["total"] == max(host["load"], host["offload"])


def test_qlora_loads_the_16_bit_checkpoint_through_the_host(tmp_path):
    config = tmp_path / "config.json"
    config.write_text(json.dumps(dict(model_type="llama", hidden_size=256, intermediate_size=512, num_hidden_layers=2,
                                      num_attention_heads=4, vocab_size=1000, dtype="bfloat16")))
    est = memory.estimate(MemoryEstimateConfig(model=str(config), peft="lora", quant="nf4"))
    assert est.host_ram_bytes["load"] == 2 * est.params_total


def test_zero3_buffers_are_the_ones_llmkit_launch_configures():
    from llmkit.launch import deepspeed_config

    zero = deepspeed_config("zero3-offload")["zero_optimization"]
    assert (zero["reduce_bucket_size"], zero["stage3_prefetch_bucket_size"], zero["stage3_max_reuse_distance"]) == (
        memory.ZERO3_REDUCE_BUCKET, memory.ZERO3_PREFETCH_BUCKET, memory.ZERO3_MAX_REUSE_DISTANCE)
    assert zero["contiguous_gradients"]   # what makes DeepSpeed allocate the whole reduce bucket up front
    # a 400M-parameter fp32 LoRA run (peft's bart-large figure): under the reuse distance the model stays whole
    # on the GPU, and the fp32 reduce bucket is there whatever trains
    est = memory.estimate(MemoryEstimateConfig(params="400M", peft="lora", zero=3, offload="optimizer+params",
                                               overhead="0"))
    assert est.per_device["weights"] >= 4 * est.params_total
    assert est.per_device["gradients"] >= zero["reduce_bucket_size"] * 4
