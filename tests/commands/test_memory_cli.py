"""`llmkit memory-estimate` through the real Typer app: JSON, errors (exit 2, one Error line), plans, start-up."""

import json

import pytest
from typer.testing import CliRunner

from helpers import heavy_modules_after
from llmkit.commands import app

runner = CliRunner()


def invoke(*args):
    return runner.invoke(app, ["memory-estimate", *args])


def test_json_document_with_the_contract_keys():
    result = invoke("--params", "1.4B", "--gpu-memory", "24GiB", "--json")
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["params_total"] == 1_400_000_000 and data["params_trainable"] == 1_400_000_000
    assert set(data["per_device"]) == {"weights", "gradients", "optimizer", "activations", "overhead", "total"}
    assert data["per_device"]["total"] == sum(v for k, v in data["per_device"].items() if k != "total")
    for key in ("cpu_ram", "peak_phase", "communication_bytes_per_step", "assumptions", "fits"):
        assert key in data
    assert data["assumptions"]["layers"] == 24 and "architecture_rule" in data["assumptions"]
    assert "explain" not in data


def test_table_and_explain():
    result = invoke("--model", "llama-2-7b", "--peft", "lora", "--quant", "nf4", "--double-quant",
                    "--mixed-precision", "bf16", "--gpu-memory", "16GiB", "--explain")
    assert result.exit_code == 0, result.output
    for text in ("weights", "gradients", "optimizer", "activations", "overhead", "total", "fits",
                 "how each row is counted", "log-softmax"):
        assert text in result.stdout


@pytest.mark.parametrize("args, needle", [
    (["--params", "1.4X"], "--params"),
    (["--params=-3B"], "--params"),
    (["--params", "0"], "--params"),
    (["--model", "lama-2-7b"], "llama-2-7b"),
    (["--params", "1.4B", "--gpus", "0"], "--gpus"),
    (["--params", "1.4B", "--quant", "nf4"], "only adapters can train"),
    (["--params", "1.4B", "--quant", "nf4", "--peft", "lora", "--zero", "3"], "DeepSpeed"),
    (["--params", "1.4B", "--trainable-layers", "99"], "--trainable-layers"),
    (["--model", "gpt2", "--lora-targets", "nope", "--peft", "lora"], "--lora-targets"),
])
def test_bad_input_exits_2_with_one_error_line(args, needle):
    result = invoke(*args)
    assert result.exit_code == 2, result.output
    errors = [line for line in result.stderr.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1, result.stderr
    assert needle in result.stderr
    assert "Traceback" not in result.output + result.stderr


def test_config_json_lacking_fields(tmp_path):
    path = tmp_path / "config.json"
    path.write_text(json.dumps({"model_type": "llama", "hidden_size": 64, "num_hidden_layers": 2}))
    result = invoke("--model", str(path))
    assert result.exit_code == 2
    assert "num_attention_heads" in result.stderr and "vocab_size" in result.stderr


def test_json_errors_are_one_json_line():
    result = invoke("--params", "0", "--json")
    assert result.exit_code == 2 and result.stdout == ""
    assert json.loads(result.stderr.strip())["exit_code"] == 2


def test_plan_flags_reproduce_a_fit():
    result = invoke("--model", "bloom-1b4", "--gpu-memory", "8GiB", "--plan", "--json")
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["fits"] is False and data["plans"]
    for plan in data["plans"]:
        again = invoke("--model", "bloom-1b4", *plan["flags"], "--gpu-memory", "8GiB", "--json")
        assert again.exit_code == 0, (plan["flags"], again.output)
        assert json.loads(again.stdout)["fits"] is True, plan["flags"]
        assert plan["training_flags"] and "per_device_train_batch_size" in plan["hf_training_arguments"]


def test_print_config_and_config_file(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("model: gpt2\nbatch_size: 4\nlora_targets: c_attn\npeft: lora\n")
    result = invoke("--config", str(path), "--print-config")
    assert result.exit_code == 0 and "batch_size: 4" in result.stdout
    result = invoke("--config", str(path), "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["params_trainable"] == 12 * 8 * (768 + 3 * 768)


def test_full_estimate_imports_nothing_heavy():
    code, heavy, stdout = heavy_modules_after(["memory-estimate", "--params", "1.4B", "--json"])
    assert code == 0 and heavy == []
    assert json.loads(stdout)["params_total"] == 1_400_000_000
    code, heavy, _ = heavy_modules_after(["memory-estimate", "--model", "bloom-1b4", "--gpu-memory", "8GiB",
                                          "--plan", "--explain"])
    assert code == 0 and heavy == []


def test_architecture_flags_fill_fields_a_config_lacks(tmp_path):
    path = tmp_path / "config.json"
    path.write_text(json.dumps({"model_type": "llama", "hidden_size": 64, "num_hidden_layers": 2,
                                "num_attention_heads": 4, "intermediate_size": 128}))
    assert invoke("--model", str(path)).exit_code == 2
    result = invoke("--model", str(path), "--vocab", "1000", "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["assumptions"]["vocab"] == 1000
