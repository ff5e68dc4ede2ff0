"""`llmkit quantize model` and `quantize compare`: bitsandbytes models that reload quantized, with real numbers."""

import json

import pytest

from helpers import assert_clean_error, build_llama


LINEARS = 14  # 2 blocks × (q, k, v, o, gate, up, down); lm_head stays full precision


def run_json(cli, *args) -> dict:
    result = cli("quantize", *args, "--json")
    assert result.exit_code == 0, (result.stdout, result.stderr, result.exception)
    return json.loads(result.stdout)


@pytest.fixture(scope="module")
def nf4_run(cli_module, llama_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("qm") / "nf4"
    return out, run_json(cli_module, "model", "-m", llama_dir, "--method", "nf4", "--double-quant", "-o", out,
                         "--eval-tokens", "512")


@pytest.fixture(scope="module")
def cli_module():
    from typer.testing import CliRunner

    from llmkit.commands import app

    runner = CliRunner()
    return lambda *args: runner.invoke(app, [str(a) for a in args])


def test_nf4_double_quant_report(nf4_run):
    out, result = nf4_run
    report = result["report"]
    assert result["output_dir"] == str(out) and result["skipped_modules"] == ["lm_head"]
    assert report["method"] == "nf4" and report["double_quant"] and report["blocksize"] == 64
    assert report["quantized_layers"] == LINEARS and len(report["layers"]) == LINEARS
    bits = report["bits_per_param"]
    assert bits["theory"] == pytest.approx(4.127, abs=5e-4)
    # codes + 8-bit absmax + per layer one fp32 second-level absmax and offset: a little above theory on tiny layers
    assert bits["theory"] < bits["achieved"] < 4.2 and bits["on_disk"] > bits["achieved"]
    size = report["size"]
    assert size["disk_after"] < size["disk_before"] and size["memory_after"] < size["memory_before"]
    # in memory: the quantized linears at their bits per parameter (with tables) + the rest in fp32
    rest = (report["params_total"] - report["params_quantized"]) * 4
    assert size["memory_after"] == pytest.approx(rest + report["params_quantized"] * bits["with_tables"] / 8, rel=1e-3)
    for layer in report["layers"]:
        assert 0.05 < layer["rel_frobenius"] < 0.15 and layer["max_abs"] > 0   # NF4 on Gaussian weights: ~9 %
    ppl = report["perplexity"]
    assert ppl["tokens"] == 512 and ppl["before"] > 1 and ppl["after"] > 1
    assert ppl["change"] == pytest.approx(ppl["after"] - ppl["before"], abs=1e-3)
    assert report["outliers"] is None and report["reload"]["quantized"]
    assert json.loads((out / "llmkit_quantize.json").read_text())["method"] == "nf4"


def test_quantized_model_reloads_quantized_and_generates(nf4_run, llama_dir):
    import bitsandbytes as bnb
    import bitsandbytes.functional as F
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out, result = nf4_run
    model = AutoModelForCausalLM.from_pretrained(out)
    layers = {n: m for n, m in model.named_modules() if isinstance(m, bnb.nn.Linear4bit)}
    assert len(layers) == LINEARS
    q = layers["model.layers.0.self_attn.q_proj"].weight
    assert q.quant_state.quant_type == "nf4" and q.quant_state.nested and q.quant_state.blocksize == 64
    # the reported error is the error of the saved weights
    original = AutoModelForCausalLM.from_pretrained(llama_dir).model.layers[0].self_attn.q_proj.weight.detach()
    diff = original - F.dequantize_4bit(q.data, q.quant_state)
    reported = next(e for e in result["report"]["layers"] if e["name"] == "model.layers.0.self_attn.q_proj")
    assert float(diff.norm() / original.norm()) == pytest.approx(reported["rel_frobenius"], rel=1e-4)
    assert float(diff.abs().max()) == pytest.approx(reported["max_abs"], rel=1e-4)
    tok = AutoTokenizer.from_pretrained(out)
    ids = tok("The for statement", return_tensors="pt")
    with torch.inference_mode():
        generated = model.generate(**ids, max_new_tokens=5, do_sample=False)
    assert generated.shape[1] == ids["input_ids"].shape[1] + 5


def test_int8_outlier_columns_are_found(cli, llama_dir, bpe_dir, tmp_path):
    """An embedding feature 400× larger than the rest survives RMSNorm as |x| ≈ 8 ≥ 6: an LLM.int8 outlier column."""
    import torch
    from transformers import AutoModelForCausalLM

    src = build_llama(tmp_path / "spiky", bpe_dir)
    model = AutoModelForCausalLM.from_pretrained(src)
    with torch.no_grad():
        model.model.embed_tokens.weight[:, 5] = 8.0
    model.save_pretrained(src)
    result = run_json(cli, "model", "-m", src, "--method", "int8", "-o", tmp_path / "int8", "--eval-tokens", "256")
    report = result["report"]
    outliers = {o["name"]: o for o in report["outliers"]["layers"]}
    for proj in ("q_proj", "k_proj", "v_proj"):
        layer = outliers[f"model.layers.0.self_attn.{proj}"]
        assert layer["outlier_columns"] >= 1 and layer["max_abs_input"] >= 6.0
    assert report["outliers"]["threshold"] == 6.0 and 0 < report["outliers"]["share"] < 0.5
    assert report["bits_per_param"]["theory"] == pytest.approx(report["bits_per_param"]["achieved"], abs=1e-3)
    assert report["bits_per_param"]["theory"] > 8
    assert max(e["rel_frobenius"] for e in report["layers"]) < 0.02
    import bitsandbytes as bnb

    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path / "int8")
    assert sum(isinstance(m, bnb.nn.Linear8bitLt) for m in reloaded.modules()) == LINEARS


def test_blocksize_128_is_kept_through_save_and_reload(cli, wide_llama_dir, tmp_path, jsonl_file):
    import bitsandbytes as bnb
    from transformers import AutoModelForCausalLM

    result = run_json(cli, "model", "-m", wide_llama_dir, "--method", "fp4", "--blocksize", "128",
                      "-o", tmp_path / "fp4", "--eval-tokens", "128", "--eval-data", jsonl_file)
    assert result["eval_source"] == str(jsonl_file) and result["report"]["perplexity"]["tokens"] == 128
    assert result["report"]["bits_per_param"]["theory"] == pytest.approx(4.25)
    assert result["report"]["bits_per_param"]["achieved"] == pytest.approx(4.25)
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "fp4")
    states = [m.weight.quant_state for m in model.modules() if isinstance(m, bnb.nn.Linear4bit)]
    assert len(states) == LINEARS and {(s.blocksize, s.quant_type) for s in states} == {(128, "fp4")}


def test_compare_side_by_side(cli, llama_dir):
    result = run_json(cli, "compare", "-m", llama_dir, "--eval-tokens", "256")
    reports = result["reports"]
    assert [(r["method"], r["double_quant"]) for r in reports] == [("int8", False), ("nf4", False), ("fp4", False),
                                                                   ("nf4", True)]
    by = {r["method"] + ("+dq" if r["double_quant"] else ""): r for r in reports}
    assert [r["perplexity"]["before"] for r in reports] == [pytest.approx(result["perplexity_before"], abs=1e-3)] * 4
    err = {k: r["error"]["mean_rel_frobenius"] for k, r in by.items()}
    assert err["int8"] < err["nf4"] < err["fp4"]        # NF4's levels fit Gaussian weights better than FP4's
    assert err["nf4+dq"] == pytest.approx(err["nf4"], rel=0.02)
    bits = {k: r["bits_per_param"]["theory"] for k, r in by.items()}
    assert bits["nf4"] == bits["fp4"] == 4.5 and bits["nf4+dq"] == pytest.approx(4.127, abs=5e-4)
    assert by["int8"]["outliers"] is not None and by["nf4"]["outliers"] is None


# ------------------------------------------------------------------------------------------------ bad input

def test_unknown_method(cli, llama_dir, tmp_path):
    result = cli("quantize", "model", "-m", llama_dir, "--method", "int4", "-o", tmp_path / "o")
    assert_clean_error(result, 2, "int4")


@pytest.mark.parametrize("blocksize, message", [("100", "not supported by bitsandbytes"),
                                                ("128", "not a multiple of it")])
def test_unsupported_blocksize(cli, llama_dir, tmp_path, blocksize, message):
    result = cli("quantize", "model", "-m", llama_dir, "--blocksize", blocksize, "-o", tmp_path / "o")
    assert_clean_error(result, 2, message)
    assert not (tmp_path / "o").exists()


def test_no_linear_layers_to_quantize(cli, llama_dir, tmp_path):
    result = cli("quantize", "model", "-m", llama_dir, "-o", tmp_path / "o",
                 "--skip-modules", "q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj")
    assert_clean_error(result, 2, "no linear layers to quantize")


def test_already_quantized_model(cli, nf4_run, tmp_path):
    out, _ = nf4_run
    result = cli("quantize", "model", "-m", out, "--method", "int8", "-o", tmp_path / "again")
    assert_clean_error(result, 2, "already quantized", "nf4")


def test_existing_output_dir_needs_overwrite(cli, llama_dir, tmp_path):
    out = tmp_path / "taken"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    result = cli("quantize", "model", "-m", llama_dir, "-o", out)
    assert_clean_error(result, 2, "not empty", "--overwrite")
    assert [p.name for p in out.iterdir()] == ["keep.txt"]


def test_int8_takes_no_blocksize(cli, llama_dir, tmp_path):
    result = cli("quantize", "model", "-m", llama_dir, "--method", "int8", "--blocksize", "64", "-o", tmp_path / "o")
    assert_clean_error(result, 2, "--blocksize applies to nf4 and fp4")


@pytest.mark.parametrize("argv", [["quantize", "model", "-m", "x", "-o", "y", "--print-config"],
                                  ["quantize", "compare", "-m", "x", "--methods", "nf4,fp4+dq", "--print-config"],
                                  ["merge", "--adapter", "x", "-o", "y", "--no-verify", "--print-config"]])
def test_print_config_imports_nothing_heavy(argv):
    from helpers import heavy_modules_after

    code, heavy, out = heavy_modules_after(argv)
    assert code == 0 and heavy == [] and out.startswith(("model: x", "adapter: x"))


def test_json_stdout_is_one_document_in_a_fresh_process(llama_dir, lora_dir, tmp_path):
    """In a fresh process, importing DeepSpeed (through transformers) printed its accelerator notice on stdout
    before the JSON document of `quantize model` and `merge`."""
    import subprocess
    import sys

    for argv in (["quantize", "model", "-m", str(llama_dir), "--method", "int8", "-o", str(tmp_path / "q")],
                 ["merge", "--adapter", str(lora_dir), "--base", str(llama_dir), "-o", str(tmp_path / "m")]):
        proc = subprocess.run([sys.executable, "-m", "llmkit", *argv, "--json"], capture_output=True, text=True,
                              timeout=300)
        assert proc.returncode == 0, proc.stderr
        assert isinstance(json.loads(proc.stdout), dict), proc.stdout[:200]   # one document, nothing before it
