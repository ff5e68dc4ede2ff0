"""benchmarks/gpu_memory_check.py without a GPU: the matrix is the one issue #18 asks for, every configuration's
estimate computes, and the script's CPU path says that it measured nothing and succeeds."""

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parent.parent / "benchmarks" / "gpu_memory_check.py"


@pytest.fixture(scope="module")
def check():
    spec = importlib.util.spec_from_file_location("gpu_memory_check", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_matrix_covers_methods_precisions_checkpointing_and_two_families(check):
    options = [o for _, _, o in check.CONFIGS]
    assert len(options) >= 12
    methods = {"qlora" if o.get("quant", "none") != "none" else o.get("peft", "full") for o in options}
    assert methods == {"full", "lora", "qlora"}
    assert {o.get("mixed_precision", "no") for o in options} >= {"no", "bf16", "fp16"}
    assert {bool(o.get("grad_checkpointing")) for o in options} == {True, False}
    assert {f["model_type"] for _, f, _ in check.CONFIGS} == {"llama", "gpt2"}


def test_every_configuration_is_estimated_on_cuda_with_and_without_overhead(check, tmp_path):
    for name, fields, options in check.CONFIGS:
        tensors = check.estimate_for(fields, options, tmp_path, overhead="0")
        total = check.estimate_for(fields, options, tmp_path, overhead=None)
        assert tensors.assumptions["device"] == "cuda", name
        assert 50e6 <= tensors.params_total <= 300e6, name
        assert tensors.per_device["overhead"] == 0 < tensors.per_device["total"], name
        # the default overhead row: the CUDA context plus the allocator's reserve over the same tensors
        assert total.per_device["total"] - tensors.per_device["total"] == total.per_device["overhead"] > 2**29, name


def test_without_cuda_it_measures_nothing_and_succeeds():
    done = subprocess.run([sys.executable, str(SCRIPT)], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "CUDA_VISIBLE_DEVICES": ""})
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().splitlines()[-1] == "no CUDA: nothing measured"
