"""`llmkit pretrain` end to end on tiny models: the run dir, the invariants, the memory levers, bad input."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from helpers import assert_clean_error, base_config


def _weights(model_dir):
    from safetensors.torch import load_file

    return load_file(str(model_dir / "model.safetensors"))


def _losses(run_dir):
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [(r["step"], r["loss"]) for r in rows if "loss" in r]


def _run(**fields):
    from llmkit.training.pretrain import run_pretrain

    return run_pretrain(base_config(**fields))


def _cli_args(configs, bpe_dir, docs_file, out, *extra):
    return ["pretrain", "--model", configs["llama"], "--from-scratch", "-t", bpe_dir, "--data", docs_file,
            "-o", out, "--seq-len", "64", "--batch-size", "4", *extra]


# ---------------------------------------------------------------------------------------------- run directory

def test_cli_run_writes_a_loadable_run_dir(cli, configs, bpe_dir, docs_file, tmp_path):
    out = tmp_path / "run"
    result = cli(*_cli_args(configs, bpe_dir, docs_file, out, "--pack", "--max-steps", "4", "--save-steps", "2",
                            "--eval-split", "0.1", "--eval-steps", "2", "--logging-steps", "1", "--json"))
    assert result.exit_code == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["status"] == "completed" and report["steps"] == 4 and report["objective"] == "causal-lm"
    assert report["perplexity"] == pytest.approx(2.718281828 ** report["eval_loss"], rel=1e-4)
    assert report["initial_perplexity"] > report["perplexity"]
    assert len(report["sparkline"]) == 4
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(out / "model")
    tokenizer = AutoTokenizer.from_pretrained(out / "model")
    assert model.config.vocab_size == len(tokenizer) and (out / "model" / "model.safetensors").exists()
    AutoModelForCausalLM.from_pretrained(out / "checkpoints" / "checkpoint-4")
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in rows if "loss" in r]
    evals = [r for r in rows if "eval_loss" in r]
    assert [r["step"] for r in train] == [1, 2, 3, 4]
    assert all({"step", "loss", "lr", "tokens_per_second"} <= set(r) and r["tokens_per_second"] > 0 for r in train)
    assert [r["step"] for r in evals] == [0, 2, 4, 4] and all("perplexity" in r for r in evals)
    assert (out / "loss_curve.png").read_bytes()[:4] == b"\x89PNG"
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["versions"]["llmkit"] and manifest["versions"]["transformers"]
    assert manifest["data"]["fingerprint"].startswith("sha256:") and manifest["wall_seconds"] > 0
    assert manifest["peak_rss_bytes"] > 0
    from llmkit.config import PretrainConfig
    from llmkit.configio import resolve

    cfg = resolve(PretrainConfig, file=out / "resolved_config.yaml")
    assert cfg.pack and cfg.max_steps == 4
    assert not [p for p in out.iterdir() if p.name.startswith(".")]   # no scratch dir left behind


def test_human_summary_has_sparkline_and_paths(cli, configs, bpe_dir, docs_file, tmp_path):
    result = cli(*_cli_args(configs, bpe_dir, docs_file, tmp_path / "r", "--max-steps", "2", "--eval-split", "4"))
    assert result.exit_code == 0, result.stderr
    for fragment in ("loss curve", "perplexity", "metrics.jsonl", "model and tokenizer"):
        assert fragment in result.stdout


def test_pretokenized_dataset_dir_is_accepted(cli, bpe_dir, docs_file, configs, tmp_path):
    tok = cli("tokenize", "dataset", "-t", bpe_dir, "--data", docs_file, "-o", tmp_path / "tok", "--json")
    assert tok.exit_code == 0, tok.stderr
    result = cli(*_cli_args(configs, bpe_dir, tmp_path / "tok", tmp_path / "r", "--pack", "--max-steps", "1",
                            "--json"))
    assert result.exit_code == 0, result.stderr
    assert json.loads(result.stdout)["train_rows"] > 0


# ----------------------------------------------------------------------------------------------- invariants

def test_grad_accumulation_equals_the_large_batch(configs, bpe_dir, docs_file, tmp_path):
    """k=2 micro-batches of 2 unequal-length documents == one batch of 4 (per-token normalisation)."""
    common = dict(model=str(configs["llama"]), tokenizer=str(bpe_dir), data=str(docs_file), max_steps=1,
                  optimizer="sgd", lr=1.0, max_grad_norm=0.0)
    big = _run(output_dir=str(tmp_path / "big"), batch_size=4, grad_accum=1, **common)
    small = _run(output_dir=str(tmp_path / "acc"), batch_size=2, grad_accum=2, **common)
    assert big.train_loss == pytest.approx(small.train_loss, abs=1e-5)
    a, b = _weights(tmp_path / "big" / "model"), _weights(tmp_path / "acc" / "model")
    init = base_config(**common, output_dir="x")
    assert any(not torch.equal(a[k], _weights_init(init, bpe_dir)[k]) for k in a)
    for k in a:
        assert torch.allclose(a[k], b[k], atol=1e-6), k


def _weights_init(cfg, bpe_dir):
    from llmkit.training.models import build_scratch_model, load_model_and_tokenizer

    _, tok, fields = load_model_and_tokenizer(cfg)
    return build_scratch_model(cfg, fields, tok).state_dict()


def test_interrupted_then_resumed_equals_uninterrupted(configs, bpe_dir, docs_file, tmp_path):
    from transformers import TrainerCallback

    from llmkit.training.pretrain import run_pretrain
    from llmkit.training.run import TrainingInterrupted

    common = dict(model=str(configs["llama"]), tokenizer=str(bpe_dir), data=str(docs_file), max_steps=6,
                  save_steps=100, lr=3e-3, scheduler="cosine", warmup_ratio=0.2)
    _run(output_dir=str(tmp_path / "full"), **common)

    class CtrlC(TrainerCallback):
        def on_step_begin(self, args, state, control, **kwargs):
            if state.global_step == 3:
                os.kill(os.getpid(), signal.SIGINT)   # what Ctrl-C does, at a known step

    with pytest.raises(TrainingInterrupted) as stop:
        run_pretrain(base_config(output_dir=str(tmp_path / "cut"), **common), callbacks=[CtrlC()])
    assert stop.value.result.status == "interrupted" and stop.value.result.steps == 4
    assert (tmp_path / "cut" / "checkpoints" / "checkpoint-4").is_dir()
    assert not (tmp_path / "cut" / "model").exists()            # no final model from an interrupted run
    resumed = _run(output_dir=str(tmp_path / "cut"), resume="auto", **common)
    assert resumed.resumed_from.endswith("checkpoint-4") and resumed.steps == 6
    full, cut = _losses(tmp_path / "full"), _losses(tmp_path / "cut")
    assert [s for s, _ in cut] == [1, 2, 3, 4, 5, 6]
    assert [l for _, l in cut] == pytest.approx([l for _, l in full], abs=1e-6)
    a, b = _weights(tmp_path / "full" / "model"), _weights(tmp_path / "cut" / "model")
    assert all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)


def _spawn(args, env_extra=None):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", **(env_extra or {})}
    return subprocess.Popen([sys.executable, "-m", "llmkit", *map(str, args)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env)


def _wait_for(predicate, proc, timeout=120):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if predicate():
            return
        if proc.poll() is not None:
            raise AssertionError(f"exited early ({proc.returncode}): {proc.stderr.read()[-2000:]}")
        time.sleep(0.2)
    proc.kill()
    raise AssertionError("timed out")


@pytest.mark.slow
@pytest.mark.parametrize("signum, code, said", [(signal.SIGINT, 130, "Interrupted."),
                                                 (signal.SIGTERM, 143, "terminated (SIGTERM) at step")])
def test_a_stop_signal_saves_a_checkpoint_and_exits(configs, bpe_dir, docs_file, tmp_path, signum, code, said):
    """Ctrl-C, and SIGTERM (what SLURM and Kubernetes send on preemption): a checkpoint, then exit 130 / 143."""
    from llmkit.training.rundir import checkpoint_problem, checkpoints

    out = tmp_path / "run"
    proc = _spawn(_cli_args(configs, bpe_dir, docs_file, out, "--max-steps", "100000", "--save-steps", "100000",
                            "--logging-steps", "1"))
    metrics = out / "metrics.jsonl"
    _wait_for(lambda: metrics.exists() and len(metrics.read_text().splitlines()) >= 2, proc)
    proc.send_signal(signum)
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == code, stderr
    assert "Traceback" not in stderr and said in stderr
    saved = checkpoints(out)
    assert saved and checkpoint_problem(saved[-1]) is None
    assert not (out / "model").exists()


@pytest.mark.slow
def test_kill_9_leaves_the_last_checkpoint_resumable(configs, bpe_dir, docs_file, tmp_path):
    from llmkit.training.rundir import checkpoint_problem, checkpoints

    out = tmp_path / "run"
    proc = _spawn(_cli_args(configs, bpe_dir, docs_file, out, "--max-steps", "100000", "--save-steps", "2",
                            "--save-total-limit", "3", "--logging-steps", "1"))
    _wait_for(lambda: len(checkpoints(out)) >= 2, proc)
    proc.kill()                                                    # SIGKILL: no handler runs
    proc.communicate(timeout=30)
    intact = [c for c in checkpoints(out) if checkpoint_problem(c) is None]
    assert intact
    step = int(intact[-1].name.split("-")[1])
    result = _run(model=str(configs["llama"]), tokenizer=str(bpe_dir), data=str(docs_file),
                  output_dir=str(out), resume="auto", max_steps=step + 1, save_steps=2)
    assert result.status == "completed" and result.steps == step + 1
    assert (out / "model" / "model.safetensors").exists()


def test_non_empty_output_dir_is_refused(cli, configs, bpe_dir, docs_file, tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    result = cli(*_cli_args(configs, bpe_dir, docs_file, out, "--max-steps", "1"))
    assert_clean_error(result, 2, "not empty", "--overwrite")
    assert (out / "keep.txt").read_text() == "mine"
    result = cli(*_cli_args(configs, bpe_dir, docs_file, out, "--max-steps", "1", "--overwrite", "--json"))
    assert result.exit_code == 0, result.stderr
    assert not (out / "keep.txt").exists() and (out / "model").is_dir()


# -------------------------------------------------------------------------------------------- memory levers

def test_freeze_base_keeps_frozen_weights_byte_identical(configs, bpe_dir, docs_file, tmp_path):
    common = dict(model=str(configs["llama"]), tokenizer=str(bpe_dir), data=str(docs_file), lr=1e-2)
    result = _run(output_dir=str(tmp_path / "f"), freeze_base=True, **common)
    assert result.trainable_parameters < result.parameters
    before = _weights_init(base_config(output_dir="x", **common), bpe_dir)
    after = _weights(tmp_path / "f" / "model")
    for name, tensor in after.items():
        if name == "lm_head.weight":
            assert not torch.equal(tensor, before[name])
        else:
            assert torch.equal(tensor, before[name]), name
    result = _run(output_dir=str(tmp_path / "t"), trainable_layers=1, **common)
    after = _weights(tmp_path / "t" / "model")
    assert torch.equal(after["model.layers.0.self_attn.q_proj.weight"], before["model.layers.0.self_attn.q_proj.weight"])
    assert torch.equal(after["model.embed_tokens.weight"], before["model.embed_tokens.weight"])
    assert not torch.equal(after["model.layers.1.self_attn.q_proj.weight"],
                           before["model.layers.1.self_attn.q_proj.weight"])


def test_optimizers_and_their_state_size(configs, bpe_dir, docs_file, tmp_path):
    """Adafactor (factored second moments, no first moment) and 8-bit AdamW keep less state than AdamW; SGD none."""
    common = dict(model=str(configs["llama"]), tokenizer=str(bpe_dir), data=str(docs_file), max_steps=1,
                  save_steps=1)
    sizes = {}
    for optimizer in ("adamw", "adamw-fused", "adafactor", "adamw-8bit", "sgd", "sgd-momentum"):
        result = _run(output_dir=str(tmp_path / optimizer), optimizer=optimizer, **common)
        assert result.status == "completed" and result.train_loss is not None
        sizes[optimizer] = (tmp_path / optimizer / "checkpoints" / "checkpoint-1" / "optimizer.pt").stat().st_size
    assert sizes["adafactor"] < sizes["adamw"] / 2
    assert sizes["adamw-8bit"] < sizes["adamw"] * 0.8    # tensors under 4,096 elements stay 32-bit in bnb
    assert sizes["sgd"] < sizes["adafactor"]
    assert sizes["sgd"] * 1.5 < sizes["sgd-momentum"] < sizes["adamw"]    # one momentum buffer against two states
    # torch's fused AdamW takes the step plain AdamW takes
    fused, plain = _weights(tmp_path / "adamw-fused" / "model"), _weights(tmp_path / "adamw" / "model")
    assert all(torch.allclose(fused[k], plain[k], atol=1e-6) for k in plain)


def test_grad_checkpointing_and_bf16_runs(configs, bpe_dir, docs_file, tmp_path):
    common = dict(model=str(configs["llama"]), tokenizer=str(bpe_dir), data=str(docs_file), max_steps=1,
                  optimizer="sgd", lr=0.5, max_grad_norm=0.0)
    plain = _run(output_dir=str(tmp_path / "p"), **common)
    ckpt = _run(output_dir=str(tmp_path / "c"), grad_checkpointing=True, **common)
    assert plain.train_loss == pytest.approx(ckpt.train_loss, abs=1e-6)
    a, b = _weights(tmp_path / "p" / "model"), _weights(tmp_path / "c" / "model")
    assert all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)
    bf16 = _run(output_dir=str(tmp_path / "b"), mixed_precision="bf16", **common)
    assert bf16.train_loss == pytest.approx(plain.train_loss, abs=0.05)
    assert _weights(tmp_path / "b" / "model")["lm_head.weight"].dtype == torch.float32  # autocast, fp32 weights


# ------------------------------------------------------------------------------------------ other objectives

def test_masked_lm_seq2seq_prefix_lm_train(configs, bpe_dir, wordpiece_dir, unigram_dir, docs_file, tmp_path):
    from transformers import AutoModelForMaskedLM, AutoModelForSeq2SeqLM, AutoTokenizer

    mlm = _run(model=str(configs["bert"]), tokenizer=str(wordpiece_dir), data=str(docs_file), objective="masked-lm",
               whole_word_masking=True, pack=True, output_dir=str(tmp_path / "mlm"), eval_split=0.1)
    assert mlm.eval_loss is not None and AutoModelForMaskedLM.from_pretrained(tmp_path / "mlm" / "model")
    s2s = _run(model=str(configs["t5"]), tokenizer=str(unigram_dir), data=str(docs_file), objective="seq2seq",
               output_dir=str(tmp_path / "t5"))
    assert any("sentinel" in w for w in s2s.warnings)
    model = AutoModelForSeq2SeqLM.from_pretrained(tmp_path / "t5" / "model")
    tok = AutoTokenizer.from_pretrained(tmp_path / "t5" / "model")
    assert tok.convert_tokens_to_ids("<extra_id_0>") != tok.unk_token_id
    assert model.get_input_embeddings().weight.shape[0] >= len(tok)
    plm = _run(model=str(configs["llama"]), tokenizer=str(bpe_dir), data=str(docs_file), objective="prefix-lm",
               output_dir=str(tmp_path / "plm"))
    assert plm.status == "completed"


# ------------------------------------------------------------------------------------------------- bad input

@pytest.fixture
def cli_base(cli, configs, bpe_dir, docs_file, tmp_path):
    def run(*extra, model="llama", tokenizer=bpe_dir, data=docs_file):
        return cli("pretrain", "--model", configs[model] if model in configs else model, "--from-scratch", "-t",
                   tokenizer, "--data", data, "-o", tmp_path / "out", "--max-steps", "1", "--seq-len", "64", *extra)
    return run


def test_bad_text_field(cli_base):
    assert_clean_error(cli_base("--text-field", "body"), 1, "no field 'body'", "text")


def test_empty_dataset(cli_base, tmp_path):
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    assert_clean_error(cli_base(data=empty), 1, "empty")


def test_documents_shorter_than_a_packed_block(cli_base):
    assert_clean_error(cli_base("--pack", "--seq-len", "100000"), 1, "fewer than one packed block", "--seq-len")


def test_masked_lm_tokenizer_without_mask_token(cli_base, bpe_dir, tmp_path):
    from transformers import PreTrainedTokenizerFast

    tok = PreTrainedTokenizerFast(tokenizer_file=str(bpe_dir / "tokenizer.json"), pad_token="<pad>",
                                  eos_token="</s>")
    tok.save_pretrained(tmp_path / "nomask")
    assert_clean_error(cli_base("--objective", "masked-lm", model="bert", tokenizer=tmp_path / "nomask"), 2,
                       "mask token", "[MASK]")


def test_objective_model_mismatch_names_the_fitting_objective(cli_base):
    assert_clean_error(cli_base("--objective", "seq2seq"), 2, "decoder-only", "--objective causal-lm")
    assert_clean_error(cli_base(model="t5"), 2, "encoder-decoder", "--objective seq2seq")
    assert_clean_error(cli_base("--objective", "causal-lm", model="bert"), 2, "--objective masked-lm")


def test_preset_without_from_scratch(cli, bpe_dir, docs_file, tmp_path):
    result = cli("pretrain", "--model", "tiny-llama", "-t", bpe_dir, "--data", docs_file, "-o", tmp_path / "o")
    assert_clean_error(result, 2, "architecture preset", "--from-scratch")


def test_eval_split_larger_than_the_data(cli_base):
    assert_clean_error(cli_base("--eval-split", "5000"), 2, "--eval-split", "of 48 documents")


def test_resume_without_checkpoint(cli_base, tmp_path):
    assert_clean_error(cli_base("--resume", "auto"), 1, "no checkpoint")


def test_corrupted_checkpoint_is_refused_and_nothing_changes(cli_base, tmp_path):
    out = tmp_path / "out"
    assert cli_base("--save-steps", "1", "--json").exit_code == 0
    ckpt = out / "checkpoints" / "checkpoint-1"
    weights = ckpt / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-100])                    # a torn write
    snapshot = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    assert_clean_error(cli_base("--resume", str(ckpt)), 1, "checkpoint-1", "model.safetensors is")
    assert_clean_error(cli_base("--resume", "auto"), 1, "damaged")
    assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file()} == snapshot


def test_config_problems_are_reported_together(cli):
    result = cli("pretrain", "--model", "m", "--data", "d.jsonl", "--batch-size", "0", "--padding-free",
                 "--objective", "seq2seq")
    assert_clean_error(result, 2, "--batch-size", "--output-dir is required", "--padding-free")
