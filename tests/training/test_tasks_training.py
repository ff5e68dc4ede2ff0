"""`llmkit sft --task seq-cls|token-cls|extractive-qa` (#10) on tiny BERTs built locally."""

import json
import random

import pytest

from helpers import assert_clean_error


POSITIVE = ["good", "great", "fine", "nice"]
NEGATIVE = ["bad", "awful", "poor", "sad"]


def _write(path, rows):
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n", encoding="utf-8")
    return path


@pytest.fixture
def sentiment(tmp_path):
    rng = random.Random(0)
    rows = []
    for i in range(80):
        positive = i % 2 == 1
        a, b = rng.sample(POSITIVE if positive else NEGATIVE, 2)
        rows.append({"text": f"the value is {a} and {b}", "label": "positive" if positive else "negative"})
    return _write(tmp_path / "sentiment.jsonl", rows)


@pytest.fixture
def ner(tmp_path):
    rng = random.Random(1)
    rows = []
    for _ in range(48):
        tokens, tags = [], []
        for _ in range(5):
            r = rng.random()
            if r < 0.25:
                tokens.append(rng.choice(["alice", "bob", "carol"]))      # several sub-tokens each
                tags.append("B-PER")
            elif r < 0.45:
                tokens += ["new", rng.choice(["paris", "london"])]
                tags += ["B-LOC", "I-LOC"]
            else:
                tokens.append(rng.choice(["the", "for", "statement", "is", "in"]))
                tags.append("O")
        rows.append({"tokens": tokens, "tags": tags})
    return _write(tmp_path / "ner.jsonl", rows)


CONTEXT = "the for statement is used to iterate over the elements of a sequence such as a string tuple or list"


@pytest.fixture
def squad(tmp_path):
    rng = random.Random(2)
    words = CONTEXT.split()
    rows = []
    for i in range(40):
        if i % 5 == 0:
            rows.append({"question": "what is missing", "context": CONTEXT,
                         "answers": {"text": [], "answer_start": []}})
            continue
        word = rng.choice(words[1:])
        start = CONTEXT.index(" " + word) + 1
        rows.append({"id": f"q{i}", "question": f"where is {word}", "context": CONTEXT,
                     "answers": {"text": [word], "answer_start": [start]}})
    return _write(tmp_path / "squad.jsonl", rows)


def _args(configs, wordpiece_dir, tmp_path, **extra):
    args = ["--model", configs["bert"], "--from-scratch", "--tokenizer", wordpiece_dir, "--seq-len", 32,
            "--batch-size", 8, "--lr", 3e-3, "--scheduler", "constant", "--logging-steps", 5, "--save-steps", 1000,
            "-o", tmp_path / "run", "--seed", 0]
    for key, value in extra.items():
        args += [f"--{key.replace('_', '-')}", value]
    return args


def test_seq_cls_learns_a_separable_task_and_saves_its_label_map(cli, configs, wordpiece_dir, tmp_path, sentiment):
    result = cli("sft", "--task", "seq-cls", "--data", sentiment, "--eval-split", 0.25, "--epochs", 5, "--json",
                 *_args(configs, wordpiece_dir, tmp_path))
    assert result.exit_code == 0, (result.stderr, result.exception)
    out = json.loads(result.stdout)
    assert out["task"] == "seq-cls" and out["labels"] == ["negative", "positive"]
    assert out["metrics"]["accuracy"] >= 0.9 and out["metrics"]["macro_f1"] >= 0.9
    assert out["initial_metrics"]["accuracy"] < out["metrics"]["accuracy"]
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    evals = [r for r in rows if "eval_accuracy" in r]
    assert evals[0]["step"] == 0 and evals[-1]["step"] == out["steps"] and len(evals) == 2
    assert evals[-1]["eval_accuracy"] == out["metrics"]["accuracy"]
    config = json.loads((tmp_path / "run" / "model" / "config.json").read_text())
    assert config["architectures"] == ["BertForSequenceClassification"]
    assert config["id2label"] == {"0": "negative", "1": "positive"}
    manifest = json.loads((tmp_path / "run" / "manifest.json").read_text())
    assert manifest["metrics"]["accuracy"] == out["metrics"]["accuracy"]
    # the trained model classifies through `llmkit generate` (its head gives the task)
    ran = cli("generate", "-m", tmp_path / "run" / "model", "--prompt", "the value is great and nice", "--json")
    assert ran.exit_code == 0, ran.stderr
    assert json.loads(ran.stdout)["label"] == "positive"


def test_token_cls_loss_falls_and_entity_f1_is_reported(configs, wordpiece_dir, tmp_path, ner):
    from llmkit.config import SFTConfig
    from llmkit.training.sft import run_sft

    cfg = SFTConfig(task="token-cls", model=str(configs["bert"]), from_scratch=True, tokenizer=str(wordpiece_dir),
                    data=str(ner), eval_split=0.25, seq_len=32, batch_size=8, epochs=4, lr=3e-3,
                    scheduler="constant", logging_steps=2, save_steps=1000, output_dir=str(tmp_path / "run"))
    result = run_sft(cfg)
    assert result.labels == ["O", "B-LOC", "B-PER", "I-LOC", "I-PER"]
    assert result.loss_curve[-1] < 0.5 * result.loss_curve[0]
    assert result.metrics["loss"] < result.initial_metrics["loss"]
    assert set(result.metrics) == {"loss", "precision", "recall", "f1", "token_accuracy"}
    assert result.metrics["f1"] > result.initial_metrics["f1"]


def test_extractive_qa_loss_falls_with_windows_and_unanswerable_examples(configs, wordpiece_dir, tmp_path, squad):
    from llmkit.config import SFTConfig
    from llmkit.training.sft import run_sft

    cfg = SFTConfig(task="extractive-qa", model=str(configs["bert"]), from_scratch=True,
                    tokenizer=str(wordpiece_dir), data=str(squad), eval_split=0.25, seq_len=24, doc_stride=8,
                    batch_size=8, epochs=3, lr=3e-3, scheduler="constant", logging_steps=2, save_steps=1000,
                    output_dir=str(tmp_path / "run"))
    result = run_sft(cfg)
    assert result.train_rows > result.examples                   # long contexts became several windows
    assert any("split into windows" in w for w in result.warnings)
    assert result.loss_curve[-1] < 0.6 * result.loss_curve[0]
    assert result.metrics["loss"] < result.initial_metrics["loss"]
    assert {"exact_match", "f1"} <= set(result.metrics)
    config = json.loads((tmp_path / "run" / "model" / "config.json").read_text())
    assert config["architectures"] == ["BertForQuestionAnswering"]


def test_adapt_model_sees_the_head_before_freezing_and_regression_labels(configs, wordpiece_dir, tmp_path):
    from llmkit.config import SFTConfig
    from llmkit.training.tasks import run_task

    data = _write(tmp_path / "scores.jsonl", [{"text": f"value {i}", "label": i / 10} for i in range(16)])
    seen = {}

    def adapt(model):
        seen["num_labels"] = model.config.num_labels
        seen["problem_type"] = model.config.problem_type
        seen["all_trainable"] = all(p.requires_grad for p in model.parameters())
        return model

    cfg = SFTConfig(task="seq-cls", model=str(configs["bert"]), from_scratch=True, tokenizer=str(wordpiece_dir),
                    data=str(data), eval_split=4, seq_len=16, batch_size=4, max_steps=2, freeze_base=True,
                    logging_steps=1, save_steps=1000, output_dir=str(tmp_path / "run"))
    result = run_task(cfg, adapt_model=adapt)
    assert seen == {"num_labels": 1, "problem_type": "regression", "all_trainable": True}
    assert result.regression and set(result.metrics) == {"loss", "mse", "mae"}
    assert result.trainable_parameters == 32 + 1                 # the classifier only: hidden 32 -> 1, and its bias


# ---------------------------------------------------------------------------------------------- bad input

def test_an_eval_label_missing_from_the_training_labels(cli, configs, wordpiece_dir, tmp_path, sentiment):
    evaluation = _write(tmp_path / "eval.jsonl", [{"text": "the value is good", "label": "positive"},
                                                  {"text": "the value is so so", "label": "neutral"}])
    result = cli("sft", "--task", "seq-cls", "--data", sentiment, "--eval-data", evaluation,
                 *_args(configs, wordpiece_dir, tmp_path))
    assert_clean_error(result, 1, "eval.jsonl: row 2: label 'neutral' is not among the training labels "
                                  "(negative, positive)", "--labels")
    assert not (tmp_path / "run").exists()                        # refused before the run dir is touched


def test_token_and_tag_lists_of_different_lengths(cli, configs, wordpiece_dir, tmp_path):
    data = _write(tmp_path / "ner.jsonl", [{"tokens": ["alice", "is", "here"], "tags": ["B-PER", "O", "O"]},
                                           {"tokens": ["bob", "is"], "tags": ["B-PER"]}])
    result = cli("sft", "--task", "token-cls", "--data", data, *_args(configs, wordpiece_dir, tmp_path))
    assert_clean_error(result, 1, "ner.jsonl: row 2 has 2 tokens but 1 tags", "one tag per word")


def test_an_answer_that_is_not_at_its_start_offset(cli, configs, wordpiece_dir, tmp_path):
    data = _write(tmp_path / "qa.jsonl", [{"question": "what", "context": CONTEXT,
                                           "answers": {"text": ["sequence"], "answer_start": [10]}}])
    result = cli("sft", "--task", "extractive-qa", "--data", data, *_args(configs, wordpiece_dir, tmp_path))
    assert_clean_error(result, 1, "the answer 'sequence' does not occur at its start offset 10",
                       f"it does occur at offset {CONTEXT.index('sequence')}", "counted from 0")


def test_a_context_window_too_small_for_the_stride(cli, configs, wordpiece_dir, tmp_path):
    """A long context is split into windows; only when the question leaves no more than --doc-stride context
    tokens per window could the windows not move forward: that is refused, naming the row and the numbers."""
    data = _write(tmp_path / "qa.jsonl", [{"question": "what does the for statement iterate over", "context": CONTEXT,
                                           "answers": {"text": ["sequence"],
                                                       "answer_start": [CONTEXT.index("sequence")]}}])
    result = cli("sft", "--task", "extractive-qa", "--data", data, "--doc-stride", 12,
                 *_args(configs, wordpiece_dir, tmp_path, seq_len=24))
    assert_clean_error(result, 1, "qa.jsonl: row 1: the question takes", "24-token window",
                       "windows overlap by 12", "raise --seq-len, lower --doc-stride")


def test_task_flag_combinations_are_checked(cli, configs, wordpiece_dir, tmp_path, sentiment):
    result = cli("sft", "--task", "seq-cls", "--data", sentiment, "--pack", "--template", "chatml",
                 *_args(configs, wordpiece_dir, tmp_path))
    assert_clean_error(result, 2, "--pack applies to --task chat", "--template/--chat-template")
    result = cli("sft", "--task", "extractive-qa", "--data", sentiment, "--doc-stride", 40,
                 *_args(configs, wordpiece_dir, tmp_path))
    assert_clean_error(result, 2, "--doc-stride 40 must be smaller than --seq-len 32")
