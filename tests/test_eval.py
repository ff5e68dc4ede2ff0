"""`llmkit eval`: perplexity against hand-written transformers loops, task metrics against the training run's own
evaluation and transformers' forward, --compare on merge and quantize outputs, and the refusals."""

import json
import math
import shutil
import sys

import pytest

from helpers import assert_clean_error, heavy_modules_after

SEQ_LEN = 48


@pytest.fixture(scope="module")
def texts(corpus_texts) -> list[str]:
    return [t[:300] for t in corpus_texts[:16]]


@pytest.fixture(scope="module")
def text_file(tmp_path_factory, texts):
    path = tmp_path_factory.mktemp("eval") / "texts.jsonl"
    path.write_text("".join(json.dumps({"text": t}) + "\n" for t in texts), encoding="utf-8")
    return path


def _eval(cli, *args) -> dict:
    result = cli("eval", *args, "--json")
    assert result.exit_code == 0, (result.stdout, result.stderr, result.exception)
    return json.loads(result.stdout)


def _stream(model_dir, texts):
    """The documents as pretrain tokenizes them: no special tokens, eos after each, concatenated."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_dir)
    ids = []
    for text in texts:
        ids += tok(text, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
    return ids


def _hand_packed(model, ids, seq_len):
    """Blocks of seq_len (the tail dropped), each scored by the model's own loss, weighted by its seq_len - 1
    predicted tokens."""
    import torch

    nll, count = 0.0, 0
    with torch.no_grad():
        for start in range(0, len(ids) - seq_len + 1, seq_len):
            block = torch.tensor([ids[start:start + seq_len]])
            nll += float(model(input_ids=block, labels=block).loss) * (seq_len - 1)
            count += seq_len - 1
    return nll / count, count


def _hand_sliding(model, ids, max_length, stride):
    """transformers' perplexity guide (perplexity.md), each window's loss weighted by the labels it scores after
    the shift (the guide's `num_valid_tokens - batch_size` is one short for every window after the first, whose
    first label is already -100)."""
    import torch

    encodings = torch.tensor([ids])
    seq_len = encodings.size(1)
    nll_sum, n_tokens, prev_end_loc = 0.0, 0, 0
    with torch.no_grad():
        for begin_loc in range(0, seq_len, stride):
            end_loc = min(begin_loc + max_length, seq_len)
            trg_len = end_loc - prev_end_loc
            input_ids = encodings[:, begin_loc:end_loc]
            target_ids = input_ids.clone()
            target_ids[:, :-trg_len] = -100
            outputs = model(input_ids, labels=target_ids)
            num_loss_tokens = (target_ids[:, 1:] != -100).sum().item()
            nll_sum += float(outputs.loss) * num_loss_tokens
            n_tokens += num_loss_tokens
            prev_end_loc = end_loc
            if end_loc == seq_len:
                break
    return nll_sum / n_tokens, n_tokens


@pytest.mark.parametrize("stride", [None, 20, SEQ_LEN])
def test_perplexity_equals_a_hand_written_transformers_loop(cli, llama_dir, text_file, texts, stride):
    from helpers import load_causal

    model, _ = load_causal(llama_dir)
    ids = _stream(llama_dir, texts)
    if stride is None:
        loss, tokens = _hand_packed(model, ids, SEQ_LEN)
        out = _eval(cli, "-m", llama_dir, "--data", text_file, "--seq-len", SEQ_LEN, "-b", 3)
    else:
        loss, tokens = _hand_sliding(model, ids, SEQ_LEN, stride)
        out = _eval(cli, "-m", llama_dir, "--data", text_file, "--seq-len", SEQ_LEN, "--stride", stride, "-b", 3)
        if stride < SEQ_LEN:                           # overlapping windows: every token but the first scored once
            assert tokens == len(ids) - 1
    assert out["task"] == "text-generation"
    assert out["details"]["tokens"] == tokens
    assert abs(out["metrics"]["loss"] - loss) < 1e-4
    assert abs(out["metrics"]["perplexity"] - math.exp(loss)) / math.exp(loss) < 1e-4
    assert out["details"]["tokens_per_s"] > 0


# ------------------------------------------------------------------------------------------------ task heads

def _rows(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def _sentiment(n, offset=0):
    good, bad = ["good", "great", "fine", "nice"], ["bad", "awful", "poor", "sad"]
    return [{"text": f"the value is {(good if i % 2 else bad)[(i // 2) % 4]} and {(good if i % 2 else bad)[i % 3]}",
             "label": "positive" if i % 2 else "negative"} for i in range(offset, offset + n)]


def _ner(n, offset=0):
    rows = []
    for i in range(offset, offset + n):
        tokens = ["alice" if i % 3 else "bob", "is", "in", "new", "paris" if i % 2 else "london"]
        rows.append({"tokens": tokens, "tags": ["B-PER", "O", "O", "B-LOC", "I-LOC"]})
    return rows


CONTEXT = "the for statement is used to iterate over the elements of a sequence such as a string"


def _squad(n, offset=0):
    words = CONTEXT.split()
    rows = []
    for i in range(offset, offset + n):
        word = words[1 + i % (len(words) - 1)]
        start = CONTEXT.index(" " + word) + 1
        rows.append({"question": f"where is {word}", "context": CONTEXT,
                     "answers": {"text": [word], "answer_start": [start]}})
    return rows


@pytest.mark.parametrize("task, make", [("seq-cls", _sentiment), ("token-cls", _ner), ("extractive-qa", _squad)])
def test_task_metrics_equal_the_training_runs_final_eval(cli, configs, wordpiece_dir, tmp_path, task, make):
    train = _rows(tmp_path / "train.jsonl", make(32))
    evaluation = _rows(tmp_path / "eval.jsonl", make(12, offset=33))
    trained = cli("sft", "--task", task, "--data", train, "--eval-data", evaluation, "--model", configs["bert"],
                  "--from-scratch", "--tokenizer", wordpiece_dir, "--seq-len", 32, "--batch-size", 4, "--lr", 3e-3,
                  "--max-steps", 40, "--logging-steps", 20, "--save-steps", 1000, "-o", tmp_path / "run", "--seed", 0,
                  "--json")
    assert trained.exit_code == 0, (trained.stderr, trained.exception)
    final = json.loads(trained.stdout)["metrics"]
    out = _eval(cli, "-m", tmp_path / "run" / "model", "--data", evaluation, "--seq-len", 32, "-b", 4)
    assert out["examples"] == 12
    assert set(out["metrics"]) == set(final)
    for name, value in final.items():
        assert out["metrics"][name] == pytest.approx(value, abs=2e-6), name


def test_accuracy_equals_transformers_own_forward(cli, bert_cls_dir, tmp_path):
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    rows = [{"text": r["text"], "label": i % 2} for i, r in enumerate(_sentiment(10))]
    data = _rows(tmp_path / "dev.jsonl", rows)
    model = AutoModelForSequenceClassification.from_pretrained(bert_cls_dir).eval()
    tok = AutoTokenizer.from_pretrained(bert_cls_dir)
    with torch.no_grad():
        predicted = [int(model(**tok(r["text"], return_tensors="pt")).logits.argmax(-1)) for r in rows]
    accuracy = sum(p == r["label"] for p, r in zip(predicted, rows)) / len(rows)
    out = _eval(cli, "-m", bert_cls_dir, "--data", data)
    assert out["task"] == "text-classification"
    assert out["metrics"]["accuracy"] == pytest.approx(accuracy, abs=1e-9)


# --------------------------------------------------------------------------------------------------- compare

def test_compare_an_adapter_with_its_merge_output_and_a_model_with_its_quantized_copy(cli, llama_dir, lora_dir,
                                                                                      text_file, tmp_path):
    merged = tmp_path / "merged"
    assert cli("merge", "--adapter", lora_dir, "-o", merged, "--json").exit_code == 0
    out = _eval(cli, "--compare", lora_dir, merged, "--data", text_file, "--seq-len", SEQ_LEN)
    assert out["a"]["adapter"] == str(lora_dir) and out["b"]["model"] == str(merged)
    a, b = out["a"]["metrics"], out["b"]["metrics"]
    assert abs(a["loss"] - b["loss"]) < 1e-4 and abs(a["perplexity"] - b["perplexity"]) / a["perplexity"] < 1e-4
    assert out["delta"]["perplexity"] == pytest.approx(b["perplexity"] - a["perplexity"], abs=1e-6)

    int8 = tmp_path / "int8"
    quantized = cli("quantize", "model", "-m", llama_dir, "--method", "int8", "-o", int8, "--eval-tokens", 128,
                    "--json")
    assert quantized.exit_code == 0, quantized.stderr
    out = _eval(cli, "--compare", llama_dir, int8, "--data", text_file, "--seq-len", SEQ_LEN)
    a, b = out["a"]["metrics"], out["b"]["metrics"]
    assert a["perplexity"] != b["perplexity"]
    assert out["delta"]["perplexity"] == pytest.approx(b["perplexity"] - a["perplexity"], abs=1e-6)
    assert out["a"]["details"]["tokens"] == out["b"]["details"]["tokens"]


# ---------------------------------------------------------------------------------------------- bad input

def test_help_imports_nothing_heavy():
    code, heavy, out = heavy_modules_after(["eval", "--help"])
    assert code == 0 and heavy == [] and "--stride" in out


def test_harness_without_lm_eval_is_a_config_error(cli, llama_dir, monkeypatch):
    monkeypatch.setitem(sys.modules, "lm_eval", None)    # absent, even where it is installed
    result = cli("eval", "-m", llama_dir, "--harness", "hellaswag")
    assert_clean_error(result, 2, "--harness needs EleutherAI's lm-eval", "pip install lm-eval")


def test_perplexity_on_a_classifier(cli, bert_cls_dir, text_file):
    result = cli("eval", "-m", bert_cls_dir, "--data", text_file, "--metric", "perplexity")
    assert_clean_error(result, 2, "--metric perplexity does not fit this model: it is a text-classification model",
                       "fits accuracy")


def test_a_metric_whose_package_is_missing(cli, t5_dir, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "rouge_score", None)
    data = _rows(tmp_path / "pairs.jsonl", [{"prompt": "a text", "completion": "a summary"}])
    result = cli("eval", "-m", t5_dir, "--data", data, "--metric", "rouge")
    assert_clean_error(result, 2, "--metric rouge needs the rouge-score package", "pip install rouge-score")


def test_a_model_without_a_tokenizer(cli, llama_dir, text_file, tmp_path):
    bare = tmp_path / "bare"
    bare.mkdir()
    for name in ("config.json", "model.safetensors"):
        shutil.copy(llama_dir / name, bare / name)
    result = cli("eval", "-m", bare, "--data", text_file)
    assert_clean_error(result, 1, "has no tokenizer files")


def test_missing_data_and_bad_flags(cli, llama_dir, tmp_path):
    assert_clean_error(cli("eval", "-m", llama_dir, "--data", tmp_path / "none.jsonl"), 1,
                       "no such file or directory", "--data")
    assert_clean_error(cli("eval", "--compare", llama_dir, "--data", tmp_path / "none.jsonl"), 2,
                       "--compare takes two models")
    assert_clean_error(cli("eval", "-m", llama_dir, "--data", "x.txt", "--seq-len", 8, "--stride", 9), 2,
                       "--stride 9 is more than --seq-len 8")
    assert_clean_error(cli("eval", "-m", llama_dir, "--data", "x.txt", "--metric", "bleurt"), 2,
                       "--metric: unknown bleurt")


# ------------------------------------------------------------------------------------------------ generation

def _reference_generations(model_dir, prompts, *, chat, prefix="", max_new_tokens=5):
    """transformers' own greedy generate, one prompt at a time."""
    import torch
    from transformers import AutoModelForCausalLM, AutoModelForSeq2SeqLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_dir)
    auto = AutoModelForCausalLM if chat else AutoModelForSeq2SeqLM
    model = auto.from_pretrained(model_dir).eval()
    texts = []
    for prompt in prompts:
        if chat:
            text = tok.apply_chat_template([{"role": "user", "content": prompt}], tokenize=False,
                                           add_generation_prompt=True)
            ids = tok(text, add_special_tokens=False, return_tensors="pt")["input_ids"]
        else:
            ids = tok(prefix + prompt, return_tensors="pt")["input_ids"]
        with torch.no_grad():
            out = model.generate(ids, max_new_tokens=max_new_tokens, do_sample=False)
        new = out[0, 1:] if not chat else out[0, ids.shape[1]:]
        texts.append(tok.decode(new, skip_special_tokens=True))
    return texts


@pytest.fixture
def scored_by_a_stub(monkeypatch):
    """llmkit.text_metrics replaced by one that records what it was asked to score."""
    import types

    seen = {}

    def record(name):
        def score(predictions, references):
            seen[name] = (list(predictions), list(references))
            return {"rouge1": 0.0} if name == "rouge" else 0.0
        return score

    stub = types.ModuleType("llmkit.text_metrics")
    for name in ("rouge", "bleu", "chrf", "exact_match"):
        setattr(stub, name, record(name))
    monkeypatch.setitem(sys.modules, "llmkit.text_metrics", stub)
    import llmkit

    monkeypatch.setattr(llmkit, "text_metrics", stub, raising=False)
    return seen


PROMPTS = ["The for statement", "A list comprehension is", "Exceptions are raised"]


@pytest.mark.parametrize("fixture, chat", [("chat_dir", True), ("t5_dir", False)])
def test_generation_metrics_score_what_transformers_generates(cli, request, tmp_path, scored_by_a_stub, fixture,
                                                              chat):
    model_dir = request.getfixturevalue(fixture)
    data = _rows(tmp_path / "pairs.jsonl", [{"prompt": p, "completion": f"reference {i}"}
                                            for i, p in enumerate(PROMPTS)])
    out = _eval(cli, "-m", model_dir, "--data", data, "--metric", "exact-match,rouge", "--max-new-tokens", 5,
                "--greedy", "-b", 2)
    expected = _reference_generations(model_dir, PROMPTS, chat=chat, prefix="" if chat else "summarize: ")
    assert out["details"]["predictions"] == expected
    assert out["details"]["chat_template"] is chat
    assert scored_by_a_stub["exact_match"] == (expected, [f"reference {i}" for i in range(3)])
    assert scored_by_a_stub["rouge"][0] == expected


def test_rouge_of_the_generated_texts_against_themselves_is_100(cli, chat_dir, tmp_path):
    pytest.importorskip("llmkit.text_metrics")
    expected = _reference_generations(chat_dir, PROMPTS, chat=True)
    data = _rows(tmp_path / "pairs.jsonl", [{"prompt": p, "completion": e} for p, e in zip(PROMPTS, expected)])
    out = _eval(cli, "-m", chat_dir, "--data", data, "--metric", "rouge", "--max-new-tokens", 5, "--greedy")
    assert out["metrics"]["rouge1"] == pytest.approx(100.0)
    assert out["metrics"]["rougeL"] == pytest.approx(100.0)
