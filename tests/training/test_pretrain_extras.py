"""`llmkit pretrain` integrations: --deepspeed in one CPU process (ZeRO-2 and ZeRO-3), --report-to tensorboard, and
the memory-estimate forecast stored next to the measured peak in manifest.json."""

import json
import os
import subprocess
import sys

import pytest
import torch

from helpers import assert_clean_error


DS_AUTO = {  # what users copy from the transformers docs: the Trainer fills every "auto"
    "train_micro_batch_size_per_gpu": "auto", "train_batch_size": "auto", "gradient_accumulation_steps": "auto",
    "gradient_clipping": "auto",
    # torch_adam: torch's AdamW, not DeepSpeed's FusedAdam (a C++ op JIT-compiled on first use, ~1 min here)
    "optimizer": {"type": "AdamW", "params": {"lr": "auto", "weight_decay": "auto", "torch_adam": True}},
}
DISTRIBUTED_ENV = ("RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")


def _ds_config(path, stage, **zero):
    path.write_text(json.dumps({**DS_AUTO, "zero_optimization": {"stage": stage, **zero}}), encoding="utf-8")
    return path


def _args(configs, bpe_dir, docs_file, out, *extra):
    return ["pretrain", "--model", configs["llama"], "--from-scratch", "-t", bpe_dir, "--data", docs_file, "-o", out,
            "--seq-len", "64", "--batch-size", "4", *extra]


def _lm_loss(model, tokenizer, texts):
    model.eval()
    with torch.no_grad():
        ids = [tokenizer(t, return_tensors="pt")["input_ids"][:, :64] for t in texts]
        return sum(float(model(input_ids=i, labels=i).loss) for i in ids) / len(ids)


# ---------------------------------------------------------------------------------------------------- DeepSpeed

@pytest.mark.parametrize("stage", [2, 3])
def test_deepspeed_runs_in_one_cpu_process(stage, configs, bpe_dir, docs_file, corpus_texts, tmp_path):
    """A plain `llmkit pretrain --deepspeed` (no launcher, no RANK/WORLD_SIZE): llmkit sets a one-process world,
    the Trainer fills the "auto" values, the loss falls, and model/ is whole and loads with from_pretrained."""
    zero = {"stage3_gather_16bit_weights_on_model_save": True} if stage == 3 else {}
    ds = _ds_config(tmp_path / "ds.json", stage, **zero)
    out = tmp_path / "run"
    env = {k: v for k, v in os.environ.items() if k not in DISTRIBUTED_ENV}
    env.update(OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    proc = subprocess.run([sys.executable, "-m", "llmkit", *map(str, _args(
        configs, bpe_dir, docs_file, out, "--deepspeed", ds, "--max-steps", "8", "--lr", "3e-3", "--scheduler",
        "constant", "--logging-steps", "1", "--save-steps", "8", "--eval-split", "4", "--json"))],
        capture_output=True, text=True, env=env, timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "one-process world" in proc.stderr and "Traceback" not in proc.stderr
    report = json.loads(proc.stdout)
    assert report["status"] == "completed" and report["steps"] == 8
    losses = report["loss_curve"]
    assert len(losses) == 8 and sum(losses[-2:]) < sum(losses[:2]) - 0.05
    assert report["eval_loss"] < report["initial_eval_loss"] - 0.05
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["deepspeed"] == {"config": str(ds), "zero_stage": stage}
    assert (out / "checkpoints" / "checkpoint-8" / "global_step8").is_dir()     # a DeepSpeed checkpoint

    from transformers import AutoModelForCausalLM, AutoTokenizer

    from llmkit.training.models import build_scratch_model, load_model_and_tokenizer
    from helpers import base_config

    trained = AutoModelForCausalLM.from_pretrained(out / "model")
    tokenizer = AutoTokenizer.from_pretrained(out / "model")
    cfg = base_config(model=str(configs["llama"]), tokenizer=str(bpe_dir), data=str(docs_file), output_dir="x")
    _, tok, fields = load_model_and_tokenizer(cfg)
    initial = build_scratch_model(cfg, fields, tok)          # the same seed: the run's starting point
    assert sorted(trained.state_dict()) == sorted(initial.state_dict())
    for name, tensor in trained.state_dict().items():        # whole tensors (ZeRO-3 gathered them on save)
        assert tensor.shape == initial.state_dict()[name].shape and tensor.dtype == torch.float32, name
    texts = [t[:400] for t in corpus_texts[:8]]
    assert _lm_loss(trained, tokenizer, texts) < _lm_loss(initial, tokenizer, texts) - 0.05


def test_deepspeed_run_resumes_to_the_same_losses(configs, bpe_dir, docs_file, tmp_path):
    """ZeRO-2, stopped after 3 steps and resumed (--resume auto, DeepSpeed checkpoint) to 6 = one 6-step run."""
    ds = _ds_config(tmp_path / "ds.json", 2)
    env = {k: v for k, v in os.environ.items() if k not in DISTRIBUTED_ENV}
    env.update(OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")

    def run(out, steps, *extra):
        proc = subprocess.run([sys.executable, "-m", "llmkit", *map(str, _args(
            configs, bpe_dir, docs_file, out, "--deepspeed", ds, "--max-steps", steps, "--lr", "3e-3",
            "--scheduler", "constant", "--logging-steps", "1", "--json", *extra))],
            capture_output=True, text=True, env=env, timeout=240)
        assert proc.returncode == 0, proc.stderr[-3000:]
        return json.loads(proc.stdout)

    full = run(tmp_path / "full", 6)
    run(tmp_path / "cut", 3)
    resumed = run(tmp_path / "cut", 6, "--resume", "auto")
    assert resumed["resumed_from"].endswith("checkpoint-3") and resumed["steps"] == 6
    assert resumed["loss_curve"] == pytest.approx(full["loss_curve"], abs=1e-5)


@pytest.fixture
def no_model_loading(monkeypatch):
    """A config problem must be reported before any work: loading a model would be a failure."""
    def refuse(*args, **kwargs):
        raise AssertionError("the model was loaded before the configuration was checked")

    monkeypatch.setattr("llmkit.training.models.load_model_and_tokenizer", refuse)


@pytest.mark.parametrize("content, fragments", [
    (None, ("no such file",)),
    ("{ not json", ("not valid JSON",)),
    ('[{"zero_optimization": {"stage": 2}}]', ("JSON object",)),
    ('{"zero_optimization": {"stage": 4}}', ("stage 4 is not a ZeRO stage", "0, 1, 2 or 3")),
    ('{"zero_optimization": {"stage": "two"}}', ("'two' is not a ZeRO stage",)),
    ('{"zero_optimization": {"stage": 3}}', ("ZeRO-3", "stage3_gather_16bit_weights_on_model_save")),
])
def test_bad_deepspeed_config_fails_before_any_work(content, fragments, cli, configs, bpe_dir, docs_file, tmp_path,
                                                    no_model_loading):
    ds = tmp_path / "ds.json"
    if content is not None:
        ds.write_text(content, encoding="utf-8")
    out = tmp_path / "run"
    result = cli(*_args(configs, bpe_dir, docs_file, out, "--deepspeed", ds, "--max-steps", "1"))
    assert_clean_error(result, 2, "--deepspeed", *fragments)
    assert len([line for line in result.stderr.splitlines() if line.startswith("Error:")]) == 1
    assert not out.exists()


# -------------------------------------------------------------------------------------------------- TensorBoard

def _tensorboard_installed() -> bool:
    import importlib.util

    return importlib.util.find_spec("tensorboard") is not None or importlib.util.find_spec("tensorboardX") is not None


@pytest.mark.skipif(_tensorboard_installed(), reason="tensorboard is installed: the run test below applies")
def test_report_to_tensorboard_without_the_package_names_it(cli, configs, bpe_dir, docs_file, tmp_path,
                                                           no_model_loading):
    out = tmp_path / "run"
    result = cli(*_args(configs, bpe_dir, docs_file, out, "--report-to", "tensorboard", "--max-steps", "1"))
    assert_clean_error(result, 2, "--report-to tensorboard", "pip install tensorboard")
    assert not out.exists()


@pytest.fixture
def summary_writer(tmp_path, monkeypatch):
    """The real tensorboard when installed; otherwise a stand-in tensorboardX whose SummaryWriter writes an event
    file into its log_dir (what transformers' TensorBoardCallback falls back to). Either way the test checks where
    llmkit sends the events, not TensorBoard itself."""
    fake = None
    if not _tensorboard_installed():
        fake = tmp_path / "site"
        (fake / "tensorboardX").mkdir(parents=True)
        (fake / "tensorboardX" / "__init__.py").write_text(
            "import json, os\n"
            "class SummaryWriter:\n"
            "    def __init__(self, log_dir=None, **kwargs):\n"
            "        os.makedirs(log_dir, exist_ok=True)\n"
            "        self.path = os.path.join(log_dir, 'events.out.tfevents.standin')\n"
            "    def _write(self, row):\n"
            "        with open(self.path, 'a') as f:\n"
            "            f.write(json.dumps(row) + '\\n')\n"
            "    def add_scalar(self, tag, value, step=None):\n"
            "        self._write({'tag': tag, 'value': value, 'step': step})\n"
            "    def add_text(self, tag, text, step=None):\n"
            "        self._write({'tag': tag, 'step': step})\n"
            "    def flush(self):\n"
            "        pass\n"
            "    def close(self):\n"
            "        pass\n", encoding="utf-8")
        monkeypatch.syspath_prepend(str(fake))
    yield fake
    if fake is not None:
        sys.modules.pop("tensorboardX", None)


def test_report_to_tensorboard_writes_into_the_run_dir(cli, configs, bpe_dir, docs_file, tmp_path, summary_writer):
    out = tmp_path / "run"
    result = cli(*_args(configs, bpe_dir, docs_file, out, "--report-to", "tensorboard", "--max-steps", "3",
                        "--logging-steps", "1", "--json"))
    assert result.exit_code == 0, result.stderr
    events = sorted((out / "tensorboard").glob("events.out.tfevents*"))
    assert events and all(e.stat().st_size > 0 for e in events)
    assert not list((out / "checkpoints").rglob("events.out.tfevents*"))   # not the Trainer's default dir
    if summary_writer is not None:
        rows = [json.loads(line) for line in events[0].read_text().splitlines()]
        assert [r["step"] for r in rows if r["tag"] == "train/loss"] == [1, 2, 3]


# ---------------------------------------------------------------------------------------------- memory forecast

def test_memory_forecast_is_printed_and_stored_next_to_the_measured_peak(cli, configs, bpe_dir, docs_file,
                                                                         tmp_path):
    out = tmp_path / "run"
    result = cli(*_args(configs, bpe_dir, docs_file, out, "--max-steps", "2", "--grad-checkpointing", "--json"))
    assert result.exit_code == 0, result.stderr
    assert "expected peak memory (memory-estimate)" in result.stderr and "--overhead 0" in result.stderr
    assert "expected peak memory" not in result.stdout
    assert result.stderr.index("expected peak memory") < result.stderr.index("step 1/2")   # before training
    memory = json.loads((out / "manifest.json").read_text())["memory"]
    assert memory["estimated_peak_bytes"] > 0 and memory["measured_peak_bytes"] > 0
    assert memory["estimated"]["overhead"] == 0 and memory["estimate_skipped"] is None
    # the same numbers as `llmkit memory-estimate` for this model and run
    est = cli("memory-estimate", "--model", out / "model", "--batch-size", "4", "--seq-len", "64",
              "--grad-checkpointing", "--overhead", "0", "--json")
    assert est.exit_code == 0, est.stderr
    assert json.loads(est.stdout)["per_device"] == memory["estimated"]


def test_memory_forecast_is_skipped_for_an_architecture_it_cannot_size(cli, bpe_dir, docs_file, tmp_path):
    """Mamba has no attention heads: llmkit.modelspec cannot size it; the run warns and trains anyway."""
    mamba = tmp_path / "mamba.json"
    mamba.write_text(json.dumps(dict(model_type="mamba", hidden_size=32, num_hidden_layers=2, state_size=4,
                                     intermediate_size=64, expand=2, conv_kernel=4)), encoding="utf-8")
    out = tmp_path / "run"
    result = cli("pretrain", "--model", mamba, "--from-scratch", "-t", bpe_dir, "--data", docs_file, "-o", out,
                 "--seq-len", "64", "--batch-size", "4", "--max-steps", "1", "--json")
    assert result.exit_code == 0, result.stderr
    assert "Warning: no memory estimate for this run" in result.stderr and "num_attention_heads" in result.stderr
    memory = json.loads((out / "manifest.json").read_text())["memory"]
    assert memory["estimated_peak_bytes"] is None and "num_attention_heads" in memory["estimate_skipped"]
    assert memory["measured_peak_bytes"] > 0
