"""Bad input across commands: one `Error:` line and a hint, the documented exit code, nothing written or changed."""

import json

import pytest

from helpers import assert_clean_error


def test_yaml_numbers_without_a_dot_are_numbers(cli, tmp_path):
    settings = tmp_path / "train.yaml"
    settings.write_text("lr: 1e-4\nweight_decay: 1e-2\n")   # YAML 1.1 reads both as text
    result = cli("pretrain", "--config", settings, "--model", "m", "--data", "d", "-o", "o", "--print-config",
                 "--json")
    assert result.exit_code == 0, result.stderr
    config = json.loads(result.stdout)
    assert config["lr"] == 1e-4 and config["weight_decay"] == 1e-2


def test_json_configs_are_parsed_as_json(cli, tmp_path):
    good, bad = tmp_path / "good.json", tmp_path / "bad.json"
    good.write_text(json.dumps({"lr": 0.001, "batch_size": 2}))
    bad.write_text("lr: 0.001\n")   # YAML, not JSON
    result = cli("pretrain", "--config", good, "--model", "m", "--data", "d", "-o", "o", "--print-config", "--json")
    assert result.exit_code == 0 and json.loads(result.stdout)["batch_size"] == 2
    assert_clean_error(cli("pretrain", "--config", bad, "--model", "m", "--data", "d", "-o", "o"), 2,
                       "cannot parse config file", "line 1", "must be JSON")


@pytest.mark.parametrize("value", ["nan", "inf", "-inf", "1e40"])   # 1e40: past float32, overflowed the optimizer
def test_a_learning_rate_that_is_not_a_finite_number_is_refused(cli, tmp_path, value):
    result = cli("sft", "--model", "m", "--data", "d", "-o", tmp_path / "run", "--lr", value)
    assert_clean_error(result, 2, "--lr", "finite")
    assert not (tmp_path / "run").exists()


def test_generate_length_bounds_and_fill_mask_top_k(cli, tmp_path):
    assert_clean_error(cli("generate", "-m", tmp_path / "nope", "--prompt", "x", "--min-new-tokens", 5,
                           "--max-new-tokens", 2), 2, "--min-new-tokens 5 is more than --max-new-tokens 2")
    assert_clean_error(cli("generate", "-m", tmp_path / "nope", "--prompt", "x", "--min-length", 9, "--max-length",
                           3), 2, "--min-length 9 is more than --max-length 3")
    assert_clean_error(cli("generate", "-m", tmp_path / "nope", "--task", "fill-mask", "--prompt", "x [MASK]",
                           "--top-k", 0), 2, "--top-k", "at least 1")


def test_a_main_address_that_is_not_a_host_is_refused(cli, tmp_path):
    out = tmp_path / "launch"
    result = cli("launch", "--cpu", "--nodes", 2, "--main-ip", "10.0.0.1;touch X", "--write-config", out, "--",
                 "llmkit", "pretrain", "--model", "m", "--data", "d", "-o", "o")
    assert_clean_error(result, 2, "--main-ip", "is not a host name or IP address")
    assert not out.exists()


def test_write_config_never_writes_into_a_non_empty_dir_without_overwrite(cli, tmp_path):
    out = tmp_path / "launch"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    training = ["--no-check-sources", "--", "llmkit", "pretrain", "--model", "m", "--data", "d", "-o", "o"]
    assert_clean_error(cli("launch", "--cpu", "--write-config", out, *training), 2, "--write-config", "is not empty",
                       "--overwrite")
    assert sorted(p.name for p in out.iterdir()) == ["notes.txt"]
    result = cli("launch", "--cpu", "--write-config", out, "--overwrite", *training)
    assert result.exit_code == 0, result.stderr
    assert (out / "accelerate_config.yaml").is_file() and (out / "notes.txt").read_text() == "mine"


def test_quickstart_never_writes_into_a_foreign_non_empty_dir(cli, tmp_path):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "thesis.tex").write_text("years of work")
    assert_clean_error(cli("quickstart", "--fast", "-o", out), 2, "exists and is not empty", "--overwrite")
    assert sorted(p.name for p in out.iterdir()) == ["thesis.tex"]


def test_a_loss_that_stops_being_a_number_stops_the_run(cli, configs, bpe_dir, docs_file, tmp_path,  # noqa: F811
                                                        monkeypatch):
    """From step 5 on the loss is NaN (as after a blow-up; the Trainer's own NaN filter would only hide it from the
    logs and let the update make every weight NaN): the run stops before that update, keeps its last good
    checkpoint, saves no model, and metrics.jsonl stays JSON."""
    import torch

    from llmkit.training import objectives, trainer  # noqa: F401 - trainer binds the real token_loss (evaluation)

    real, calls = objectives.token_loss, []

    def blowing_up(logits, labels, shift, num_items=None):
        calls.append(1)
        loss = real(logits, labels, shift, num_items)
        return loss * torch.tensor(float("nan")) if len(calls) >= 5 else loss

    monkeypatch.setattr(objectives, "token_loss", blowing_up)
    run = tmp_path / "run"
    result = cli("pretrain", "--model", configs["llama"], "--from-scratch", "-t", bpe_dir, "--data", docs_file,
                 "-o", run, "--seq-len", 32, "--batch-size", 4, "--max-steps", 30, "--logging-steps", 1,
                 "--save-steps", 2)
    assert result.exit_code == 1 and "Traceback" not in result.stderr and result.stdout == ""
    error, hint = result.stderr.strip().splitlines()[-2:]   # after the run's progress lines
    assert error.startswith("Error: the training loss became nan at step 5") and "no model was saved" in error
    assert hint.startswith("Hint: ") and "checkpoint-4 (--resume auto" in hint
    assert not (run / "model").exists() and (run / "checkpoints" / "checkpoint-4").is_dir()
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]   # valid JSON
    assert [r["step"] for r in rows if "loss" in r] == [1, 2, 3, 4]


@pytest.fixture(scope="module")
def bert_classifier(tmp_path_factory, wordpiece_dir):
    from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification

    tokenizer = AutoTokenizer.from_pretrained(wordpiece_dir)
    out = tmp_path_factory.mktemp("bad") / "bert-cls"
    BertForSequenceClassification(BertConfig(vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=1,
                                             num_attention_heads=2, intermediate_size=64)).save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


def test_an_encoder_head_refuses_empty_text(cli, bert_classifier, tmp_path):
    """An empty prompt reached BERT as a 0-token batch: a reshape traceback."""
    assert_clean_error(cli("generate", "-m", bert_classifier, "--prompt", " "), 2, "--prompt is empty")
    assert_clean_error(cli("generate", "-m", bert_classifier, "--task", "question-answering", "--question", "Who?",
                           "--context", ""), 2, "--context is empty")
    batch = tmp_path / "in.jsonl"
    batch.write_text('{"text": "a fine film"}\n{"text": ""}\n')
    result = cli("generate", "-m", bert_classifier, "--input", batch, "--output", tmp_path / "out.jsonl")
    assert_clean_error(result, 1, f"{batch}:2", "`text` is empty")
    assert [json.loads(line)["line"] for line in (tmp_path / "out.jsonl").read_text().splitlines()] == [1]


def test_a_wrongly_typed_config_field_is_named(cli, bert_classifier, tmp_path):
    import shutil

    broken = tmp_path / "broken"
    shutil.copytree(bert_classifier, broken)
    config = json.loads((broken / "config.json").read_text())
    config["num_hidden_layers"] = "two"
    (broken / "config.json").write_text(json.dumps(config))
    assert_clean_error(cli("generate", "-m", broken, "--prompt", "hi"), 1, "config.json is invalid",
                       "num_hidden_layers")
    assert_clean_error(cli("memory-estimate", "--model", broken / "config.json"), 2,
                       "num_hidden_layers must be a positive whole number (got 'two')")


def test_a_one_class_classifier_is_refused_before_the_run_dir(cli, bert_classifier, tmp_path):
    data = tmp_path / "reviews.jsonl"
    data.write_text("".join(json.dumps({"text": f"review {i}", "label": "good"}) + "\n" for i in range(6)))
    result = cli("sft", "--task", "seq-cls", "-m", bert_classifier, "--data", data, "-o", tmp_path / "run",
                 "--max-steps", 1)
    assert_clean_error(result, 1, "every example has the same label (good)", "at least two classes")
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("argv, message", [
    (["generate", "-m", "./no-model", "--prompt", "x"], "no such model directory: ./no-model"),
    (["sft", "-m", "./no-model", "--data", "d.jsonl", "-o", "run"], "no such model directory: ./no-model"),
    (["pretrain", "-m", "./no.json", "--from-scratch", "-t", "./no-tok", "--data", "d.jsonl", "-o", "run"],
     "no such model config file: ./no.json"),
    (["peft", "-m", "./no-model", "--data", "d.jsonl", "-o", "run"], "no such model directory: ./no-model"),
    (["merge", "--adapter", "./no-adapter", "-o", "merged"], "no such adapter directory: ./no-adapter"),
    (["quantize", "model", "-m", "./no-model", "-o", "q"], "no such model directory: ./no-model"),
    (["tokenize", "show", "-t", "./no-tok", "hello"], "no such tokenizer directory: ./no-tok"),
    (["tokenize", "dataset", "-t", "./no-tok", "--data", "d.jsonl", "-o", "ds"], "no such tokenizer directory"),
    (["tokenize", "train", "--corpus", "missing.txt", "-o", "tok"], "no such file or directory: missing.txt"),
    # hub ids neither in the HF cache nor reachable (the tests run with HF_HUB_OFFLINE=1)
    (["generate", "-m", "no-org/no-model", "--prompt", "x"], "cannot load model 'no-org/no-model'"),
    (["sft", "-m", "no-org/no-model", "--data", "d.jsonl", "-o", "run"], "cannot load model 'no-org/no-model'"),
    (["tokenize", "stats", "-t", "no-org/no-tok", "--data", "d.jsonl"], "cannot load tokenizer 'no-org/no-tok'"),
], ids=lambda v: " ".join(v[:2]) if isinstance(v, list) else None)
def test_a_source_that_cannot_load_fails_before_any_heavy_import(cli, argv, message, tmp_path, monkeypatch):
    """A typo in -m took 16.9 s (torch and transformers were imported first): now the path is checked first."""
    from helpers import heavy_modules_after

    monkeypatch.chdir(tmp_path)
    (tmp_path / "d.jsonl").write_text('{"text": "a"}\n')
    assert_clean_error(cli(*argv), 1, message)
    code, heavy, _ = heavy_modules_after(argv)   # a fresh interpreter: what the check needed
    assert code == 1 and heavy == []
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d.jsonl"]


def test_quantize_model_refuses_a_classifier_before_loading_it(cli, bert_classifier, tmp_path):
    """A BERT classifier loaded as a causal LM got a new head that bitsandbytes never quantized: a traceback."""
    result = cli("quantize", "model", "-m", bert_classifier, "--method", "int8", "-o", tmp_path / "q")
    assert_clean_error(result, 2, "BertForSequenceClassification", "measures causal LMs", "--load-in-8bit")
    assert not (tmp_path / "q").exists()


def test_damaged_weights_and_unsafe_pickles_are_errors_not_tracebacks(cli, bert_classifier, tmp_path):
    import pickle
    import shutil

    truncated = tmp_path / "truncated"
    shutil.copytree(bert_classifier, truncated)
    weights = truncated / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])   # an interrupted download
    assert_clean_error(cli("generate", "-m", truncated, "--prompt", "hi"), 1, "damaged or incomplete")

    class RunsCode:
        def __reduce__(self):
            return (print, ("this pickle ran code",))

    unsafe = tmp_path / "unsafe"
    shutil.copytree(bert_classifier, unsafe, ignore=shutil.ignore_patterns("model.safetensors"))
    (unsafe / "pytorch_model.bin").write_bytes(pickle.dumps(RunsCode()))
    result = cli("generate", "-m", unsafe, "--prompt", "hi")
    assert_clean_error(result, 1, "will not load safely")
    assert "this pickle ran code" not in result.stderr + result.stdout


@pytest.mark.parametrize("size", ["12QB", "0GB", "2G", "1.5GB"])
def test_merge_checks_the_shard_size_before_merging(cli, tmp_path, size):
    """A bad --max-shard-size was found by save_pretrained, after the whole merge."""
    assert_clean_error(cli("merge", "--adapter", tmp_path, "-o", tmp_path / "out", "--max-shard-size", size), 2,
                       f"--max-shard-size '{size}' is not a size save_pretrained takes")


def test_a_run_refused_for_this_machine_leaves_nothing_that_blocks_its_rerun(cli, bert_classifier, tmp_path):
    """fp16 on a CPU was refused after the run dir (resolved_config.yaml, metrics.jsonl) was created: the corrected
    rerun was then refused for a non-empty --output-dir."""
    import torch

    if torch.cuda.is_available():
        pytest.skip("fp16 runs where there is a GPU")
    data = tmp_path / "reviews.jsonl"
    data.write_text("".join(json.dumps({"text": f"review {i}", "label": i % 2}) + "\n" for i in range(6)))
    result = cli("sft", "--task", "seq-cls", "-m", bert_classifier, "--data", data, "-o", tmp_path / "run",
                 "--max-steps", 1, "--mixed-precision", "fp16")
    assert_clean_error(result, 2, "--mixed-precision fp16 needs a GPU")
    assert not (tmp_path / "run").exists()


def test_a_data_file_without_the_field_is_exit_1_in_every_command(cli, bert_classifier, tmp_path):
    """The same missing field exited 2 in tokenize and pretrain and 1 in sft --task and generate --input."""
    data = tmp_path / "rows.jsonl"
    data.write_text('{"body": "a film"}\n{"body": "a book"}\n')
    for argv, fragment in (
            (["tokenize", "stats", "-t", bert_classifier, "--data", data], "no field 'text'"),
            (["tokenize", "dataset", "-t", bert_classifier, "--data", data, "-o", tmp_path / "ds"], "no field 'text'"),
            (["pretrain", "-m", bert_classifier, "--objective", "masked-lm", "--data", data, "-o", tmp_path / "r1"],
             "no field 'text'"),
            (["sft", "--task", "seq-cls", "-m", bert_classifier, "--data", data, "-o", tmp_path / "r2"],
             "no field 'label'"),
            (["generate", "-m", bert_classifier, "--input", data, "--output", tmp_path / "out.jsonl"], "`text`")):
        assert_clean_error(cli(*argv), 1, fragment)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["rows.jsonl"]
