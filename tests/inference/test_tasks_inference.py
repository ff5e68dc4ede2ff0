"""`llmkit generate --task text-classification|token-classification|question-answering|feature-extraction` (#10):
the outputs equal transformers' own pipelines on the same (tiny, local) model; QA (whose pipeline transformers 5
removed) equals a brute-force span search; embeddings equal a hand-computed mean pooling."""

import json

import numpy as np
import pytest

from helpers import assert_clean_error

SMALL = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
             max_position_embeddings=128, initializer_range=0.5)
TAGS = ["O", "B-PER", "I-PER", "B-LOC", "I-LOC"]
TEXTS = ["The iteration statement: alice went to paris.", "Comprehensions of the generator expression.",
         "while true"]
CONTEXT = ("the for statement is used to iterate over the elements of a sequence such as a string tuple or list "
           "and the while statement is used for repeated execution as long as an expression is true")


@pytest.fixture(autouse=True)
def _one_thread():
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _save(root, name, task, tok, **fields):
    from llmkit.modeling import build_model

    model = build_model("bert-base", task, vocab_size=len(tok), seed=3, overrides={**SMALL, **fields})
    out = root / name
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def models(tmp_path_factory, wordpiece_dir):
    from llmkit.modeling import load_tokenizer

    tok = load_tokenizer(str(wordpiece_dir))
    root = tmp_path_factory.mktemp("task-models")
    return {
        "tok": tok,
        "cls": _save(root, "cls", "seq-cls", tok, num_labels=3, id2label={0: "neg", 1: "neu", 2: "pos"},
                     label2id={"neg": 0, "neu": 1, "pos": 2}),
        "ner": _save(root, "ner", "token-cls", tok, num_labels=5, id2label=dict(enumerate(TAGS)),
                     label2id={t: i for i, t in enumerate(TAGS)}),
        "qa": _save(root, "qa", "extractive-qa", tok),
        "bert": _save(root, "bert", "masked-lm", tok),
    }


def _json(cli, *args):
    result = cli("generate", *args, "--json")
    assert result.exit_code == 0, (result.stdout, result.stderr, result.exception)
    return json.loads(result.stdout)


def _pipeline(task, path, **kwargs):
    from transformers import pipeline

    return pipeline(task, model=str(path), tokenizer=str(path), device="cpu", **kwargs)


def test_text_classification_matches_the_pipeline(cli, models):
    reference = _pipeline("text-classification", models["cls"])
    for text in TEXTS[:2]:
        out = _json(cli, "-m", models["cls"], "--task", "text-classification", "--prompt", text, "--top-k", 3)
        expected = reference(text, top_k=None)
        assert [s["label"] for s in out["scores"]] == [e["label"] for e in expected]
        assert np.allclose([s["score"] for s in out["scores"]], [e["score"] for e in expected], atol=1e-5)
        assert (out["label"], out["score"]) == (out["scores"][0]["label"], out["scores"][0]["score"])
    # the head gives the task when --task is not given
    assert _json(cli, "-m", models["cls"], "--prompt", TEXTS[0])["task"] == "text-classification"


@pytest.mark.parametrize("aggregation", ["simple", "first"])
def test_token_classification_matches_the_pipeline(cli, models, tmp_path, aggregation):
    reference = _pipeline("token-classification", models["ner"], aggregation_strategy=aggregation)
    batch_in = tmp_path / "in.jsonl"
    batch_in.write_text("".join(json.dumps({"id": i, "text": t}) + "\n" for i, t in enumerate(TEXTS)))
    cli("generate", "-m", models["ner"], "--task", "token-classification", "--aggregation", aggregation,
        "--input", batch_in, "--output", tmp_path / "out.jsonl", "--batch-size", 3)
    batch = [json.loads(line) for line in (tmp_path / "out.jsonl").read_text().splitlines()]
    assert [b["id"] for b in batch] == [0, 1, 2]
    for text, row in zip(TEXTS, batch):
        single = _json(cli, "-m", models["ner"], "--task", "token-classification", "--prompt", text,
                       "--aggregation", aggregation)["entities"]
        expected = reference(text)
        assert expected, "the random model should find some entities"
        for got in (single, row["entities"]):
            assert [(e["type"], e["start"], e["end"]) for e in got] == \
                [(e["entity_group"], e["start"], e["end"]) for e in expected]
            assert np.allclose([e["score"] for e in got], [e["score"] for e in expected], atol=1e-5)
            assert all(e["text"] == text[e["start"]:e["end"]] for e in got)


def _brute_force_answer(path, question, context, max_length, stride, max_answer):
    """Every window, every (start, end) pair of context tokens: the best start x end probability."""
    import torch
    from transformers import AutoModelForQuestionAnswering, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(path)
    model = AutoModelForQuestionAnswering.from_pretrained(path).eval()
    enc = tok(question, context, truncation="only_second", max_length=max_length, stride=stride,
              return_overflowing_tokens=True, return_offsets_mapping=True)
    best, nulls = (0.0, None), []
    for w in range(len(enc["input_ids"])):
        with torch.no_grad():
            out = model(input_ids=torch.tensor([enc["input_ids"][w]]),
                        token_type_ids=torch.tensor([enc["token_type_ids"][w]]))
        seq = enc.sequence_ids(w)
        allowed = [i for i, s in enumerate(seq) if s == 1]
        keep = [0] + allowed
        ps = torch.softmax(out.start_logits[0, keep].double(), -1)
        pe = torch.softmax(out.end_logits[0, keep].double(), -1)
        nulls.append(float(ps[0] * pe[0]))
        for a, s in enumerate(keep[1:], start=1):
            for b, e in enumerate(keep[1:], start=1):
                if 0 <= e - s < max_answer and float(ps[a] * pe[b]) > best[0]:
                    offsets = enc["offset_mapping"][w]
                    best = (float(ps[a] * pe[b]), (offsets[s][0], offsets[e][1]))
    return best[0], best[1], min(nulls)


def test_question_answering_finds_the_best_span_over_all_windows(cli, models, tmp_path):
    question = "what is used for repeated execution"
    out = _json(cli, "-m", models["qa"], "--task", "question-answering", "--question", question, "--context", CONTEXT,
                "--max-length", 24, "--doc-stride", 8, "--max-answer-length", 4, "--top-k", 3)
    score, (start, end), null = _brute_force_answer(str(models["qa"]), question, CONTEXT, 24, 8, 4)
    assert (out["start"], out["end"]) == (start, end)
    assert out["answer"] == CONTEXT[start:end]
    assert abs(out["score"] - score) < 1e-5
    assert len(out["answers"]) == 3 and out["answers"][0]["score"] >= out["answers"][1]["score"]
    # --allow-no-answer: the empty answer competes with CLS's start x end probability
    empty = _json(cli, "-m", models["qa"], "--task", "question-answering", "--question", question, "--context",
                  CONTEXT, "--max-length", 24, "--doc-stride", 8, "--max-answer-length", 4, "--allow-no-answer",
                  "--top-k", 1000)
    no_answer = [a for a in empty["answers"] if a["answer"] == ""]
    assert len(no_answer) == 1 and (no_answer[0]["start"], no_answer[0]["end"]) == (0, 0)
    assert abs(no_answer[0]["score"] - null) < 1e-5
    assert not any(a["answer"] == "" for a in out["answers"])     # without the flag it never competes
    # batch: question/context per line
    batch_in = tmp_path / "qa.jsonl"
    batch_in.write_text(json.dumps({"question": question, "context": CONTEXT}) + "\n")
    cli("generate", "-m", models["qa"], "--task", "question-answering", "--input", batch_in, "--output",
        tmp_path / "answers.jsonl", "--max-length", 24, "--doc-stride", 8, "--max-answer-length", 4)
    row = json.loads((tmp_path / "answers.jsonl").read_text())
    assert (row["line"], row["start"], row["end"]) == (1, start, end)


def test_feature_extraction_is_mean_pooling_over_the_attention_mask(cli, models, tmp_path):
    import torch
    from transformers import AutoModel, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(models["bert"])
    encoder = AutoModel.from_pretrained(models["bert"]).eval()
    expected = []
    for text in TEXTS:
        enc = tok(text, return_tensors="pt")
        with torch.no_grad():
            hidden = encoder(**enc).last_hidden_state[0]
        expected.append(hidden.mean(0).numpy())                 # one text: every token is attended
    out = _json(cli, "-m", models["bert"], "--task", "feature-extraction", "--prompt", TEXTS[0])
    assert out["dimensions"] == 32 and np.allclose(out["embedding"], expected[0], atol=1e-5)
    # the pipeline's per-token hidden states, pooled by hand, agree too
    tokens = np.array(_pipeline("feature-extraction", models["bert"])(TEXTS[0])[0])
    assert np.allclose(tokens.mean(0), expected[0], atol=1e-5)
    cls = _json(cli, "-m", models["bert"], "--task", "feature-extraction", "--prompt", TEXTS[0], "--pooling", "cls",
                "--normalize")
    assert np.isclose(np.linalg.norm(cls["embedding"]), 1.0) and cls["pooling"] == "cls"
    # batch into .npy: padded batches give the same vectors as one text at a time
    batch_in = tmp_path / "texts.jsonl"
    batch_in.write_text("".join(json.dumps({"text": t}) + "\n" for t in TEXTS))
    result = cli("generate", "-m", models["bert"], "--task", "feature-extraction", "--input", batch_in, "--output",
                 tmp_path / "vectors.npy", "--batch-size", 3)
    assert result.exit_code == 0, result.stderr
    array = np.load(tmp_path / "vectors.npy")
    assert array.shape == (3, 32) and np.allclose(array, np.stack(expected), atol=1e-5)


# ---------------------------------------------------------------------------------------------- bad input

def test_question_answering_without_context(cli, models):
    result = cli("generate", "-m", models["qa"], "--task", "question-answering", "--question", "who?")
    assert_clean_error(result, 2, "--task question-answering needs --context")


def test_a_head_that_does_not_fit_the_task_names_the_task_it_fits(cli, models):
    result = cli("generate", "-m", models["cls"], "--task", "token-classification", "--prompt", "hi")
    assert_clean_error(result, 2, "does not fit", "BertForSequenceClassification", "sequence-classification head",
                       "use --task text-classification")
    result = cli("generate", "-m", models["bert"], "--task", "question-answering", "--question", "q", "--context", "c")
    assert_clean_error(result, 2, "BertForMaskedLM", "has none", "sft --task extractive-qa")


def test_task_flags_are_checked(cli, models, tmp_path):
    result = cli("generate", "-m", models["cls"], "--task", "text-classification", "--input", tmp_path / "a.jsonl",
                 "--output", tmp_path / "a.npy")
    assert_clean_error(result, 2, "--output .npy holds embeddings")
    result = cli("generate", "-m", models["cls"], "--task", "text-classification", "--prompt", "x",
                 "--temperature", 0.5, "--pooling", "cls")
    assert_clean_error(result, 2, "--temperature: decoding flags do not apply", "--pooling is for --task "
                                                                                "feature-extraction")
