"""Data for the task heads (#10): sub-word label alignment, QA windows, label maps, metrics, bad input."""

from types import SimpleNamespace

import pytest

from llmkit.data import tasks as td
from llmkit.errors import DataError


@pytest.fixture(scope="module")
def tok(wordpiece_dir):
    from llmkit.modeling import load_tokenizer

    return load_tokenizer(str(wordpiece_dir))


def _cfg(**fields):
    defaults = dict(seq_len=64, label_all_subtokens=False, tokens_field="tokens", tags_field="tags",
                    question_field="question", context_field="context", answers_field="answers", doc_stride=4,
                    text_field="text", text_pair_field=None, label_field="label")
    defaults.update(fields)
    return SimpleNamespace(**defaults)


# ------------------------------------------------------------------------------------------- token-cls alignment

def test_first_subtoken_carries_the_tag_and_the_rest_are_ignored(tok):
    words = ["alice", "is", "in", "paris"]          # al ##ic ##e | is | in | par ##is
    assert tok.tokenize("alice") == ["al", "##ic", "##e"] and tok.tokenize("paris") == ["par", "##is"]
    space = td.label_space(["B-PER", "O", "O", "B-LOC"], (), "tags", "data", bio=True)
    assert space.names == ["O", "B-LOC", "B-PER", "I-LOC", "I-PER"]   # every B-X gets its I-X
    enc = td.encode_token_cls([(words, ["B-PER", "O", "O", "B-LOC"])], _cfg(), tok, space, "data")
    row = enc.rows[0]
    tokens = tok.convert_ids_to_tokens(row["input_ids"])
    named = [None if y == -100 else space.names[y] for y in row["labels"]]
    assert list(zip(tokens, named)) == [
        ("[CLS]", None), ("al", "B-PER"), ("##ic", None), ("##e", None), ("is", "O"), ("in", "O"),
        ("par", "B-LOC"), ("##is", None), ("[SEP]", None)]


def test_label_all_subtokens_continues_b_as_i(tok):
    space = td.label_space(["B-PER", "O", "O", "B-LOC"], (), "tags", "data", bio=True)
    enc = td.encode_token_cls([(["alice", "is", "in", "paris"], ["B-PER", "O", "O", "B-LOC"])],
                              _cfg(label_all_subtokens=True), tok, space, "data")
    named = [None if y == -100 else space.names[y] for y in enc.rows[0]["labels"]]
    assert named == [None, "B-PER", "I-PER", "I-PER", "O", "O", "B-LOC", "I-LOC", None]
    # an I- tag on a split word stays I- on every sub-token
    assert td.align_labels([None, 0, 0, None], [3], True, {3: 3}) == [-100, 3, 3, -100]


def test_token_and_tag_lists_of_different_lengths_are_refused_with_the_row():
    with pytest.raises(DataError, match=r"data: row 2 has 3 tokens but 2 tags"):
        td.read_token_examples([{"tokens": ["a"], "tags": ["O"]}, {"tokens": ["a", "b", "c"], "tags": ["O", "O"]}],
                               _cfg(), "data")


def test_broken_bio_sequences_are_counted():
    assert td.bio_problems(["O", "I-PER", "I-PER", "B-LOC", "I-PER"]) == 2
    assert td.bio_problems(["B-PER", "I-PER", "O", "B-LOC", "I-LOC"]) == 0


# ------------------------------------------------------------------------------------------------ QA windows

CONTEXT = ("the for statement is used to iterate over the elements of a sequence such as a string tuple or list "
           "and the while statement is used for repeated execution as long as an expression is true")


def test_qa_answer_lands_on_the_right_tokens_in_the_right_windows(tok):
    answer = "repeated execution"
    start = CONTEXT.index(answer)
    examples = td.read_qa_examples([{"question": "what is while for", "context": CONTEXT,
                                     "answers": {"text": [answer], "answer_start": [start]}}], _cfg(), "data")
    enc = td.encode_qa(examples, _cfg(seq_len=24, doc_stride=10), tok, "data")
    assert len(enc.rows) > 3 and enc.warnings             # the context needs several windows
    holding = 0
    for row in enc.rows:
        s, e = row["start_positions"], row["end_positions"]
        context_chars = [o for o in row["offsets"] if o is not None]
        whole = context_chars[0][0] <= start and context_chars[-1][1] >= start + len(answer)
        if whole:
            holding += 1
            assert row["offsets"][s][0] == start and row["offsets"][e][1] == start + len(answer)
            assert tok.decode(row["input_ids"][s:e + 1]) == answer
        else:
            assert (s, e) == (0, 0) and row["input_ids"][0] == tok.cls_token_id     # CLS
    assert holding >= 2                                    # overlapping windows both hold it


def test_unanswerable_examples_point_at_cls_in_every_window(tok):
    examples = td.read_qa_examples([{"question": "who", "context": CONTEXT, "answers": {"text": [],
                                                                                         "answer_start": []}}],
                                   _cfg(), "data")
    enc = td.encode_qa(examples, _cfg(seq_len=24, doc_stride=6), tok, "data")
    assert {(r["start_positions"], r["end_positions"]) for r in enc.rows} == {(0, 0)}


def test_answer_text_not_at_its_start_offset_is_refused_and_located():
    with pytest.raises(DataError, match=r"row 1: the answer 'sequence' does not occur at its start offset 3 .*"
                                        r"it does occur at offset 60"):
        td.read_qa_examples([{"question": "q", "context": CONTEXT,
                              "answers": {"text": ["sequence"], "answer_start": [3]}}], _cfg(), "data")


def test_a_question_that_leaves_no_room_for_the_stride_is_refused(tok):
    question = "what does the for statement do with the elements of a sequence"
    with pytest.raises(DataError, match=r"row 1: the question takes \d+ tokens, which leaves \d+ context tokens per "
                                        r"16-token window; windows overlap by 8"):
        td.encode_qa([td.QAExample("0", question, CONTEXT, [], [])], _cfg(seq_len=16, doc_stride=8), tok, "data")


def test_best_span_scores_are_start_times_end_probabilities():
    import numpy as np

    start = np.array([0.5, -1.0, 2.0, 0.1, 3.0])
    end = np.array([0.2, 0.0, 1.0, 2.5, 0.3])
    offsets = [None, None, (0, 3), (4, 7), (8, 11)]        # CLS, question token, three context tokens
    spans, null = td.best_spans(start, end, offsets, max_answer_len=2, top_k=3)
    allowed = [0, 2, 3, 4]
    ps = np.exp(start[allowed]) / np.exp(start[allowed]).sum()
    pe = np.exp(end[allowed]) / np.exp(end[allowed]).sum()
    p = dict(zip(allowed, zip(ps, pe)))
    brute = sorted(((p[s][0] * p[e][1], offsets[s][0], offsets[e][1]) for s in (2, 3, 4) for e in (2, 3, 4)
                    if 0 <= e - s < 2), reverse=True)[:3]
    assert [(round(a, 12), b, c) for a, b, c, _ in spans] == [(round(a, 12), b, c) for a, b, c in brute]
    assert null == pytest.approx(p[0][0] * p[0][1])


# ----------------------------------------------------------------------------------------------- label maps

def test_labels_as_names_ids_or_floats():
    assert td.label_space(["pos", "neg", "pos"], (), "labels", "d").names == ["neg", "pos"]
    ids = td.label_space([0, 2, 1], (), "labels", "d")
    assert ids.names == ["LABEL_0", "LABEL_1", "LABEL_2"] and ids.given_as_ids
    assert td.label_space([0, 1], ("bad", "good"), "labels", "d").id2label == {0: "bad", 1: "good"}
    reg = td.label_space([0.5, 1, 3.25], (), "labels", "d")
    assert reg.regression and reg.num_labels == 1
    with pytest.raises(DataError, match="all names"):
        td.label_space(["pos", 1], (), "labels", "d")


def test_an_eval_label_missing_from_the_training_labels_is_refused():
    space = td.label_space(["neg", "pos"], (), "labels", "train")
    with pytest.raises(DataError, match=r"eval: row 3: label 'neutral' is not among the training labels "
                                        r"\(neg, pos\): the model has no output for it"):
        td.label_id("neutral", space, "label", "eval: row 3", eval_set=True)


# -------------------------------------------------------------------------------------------------- metrics

def test_entity_metrics_are_seqeval_style():
    gold = [["B-PER", "I-PER", "O", "B-LOC"], ["O", "B-LOC", "I-LOC", "O"]]
    pred = [["B-PER", "I-PER", "O", "B-PER"], ["O", "B-LOC", "O", "O"]]
    # gold: PER(0-1), LOC(3), LOC(1-2); predicted: PER(0-1), PER(3), LOC(1) -> one match
    m = td.entity_metrics(pred, gold)
    assert m == pytest.approx({"precision": 1 / 3, "recall": 1 / 3, "f1": 1 / 3})
    assert td.entities(["I-PER", "I-PER", "B-PER", "I-LOC"]) == {("PER", 0, 1), ("PER", 2, 2), ("LOC", 3, 3)}


def test_classification_and_squad_metrics():
    m = td.classification_metrics([0, 1, 1, 2], [0, 1, 2, 2], 3)
    assert m["accuracy"] == 0.75
    assert m["macro_f1"] == pytest.approx((1 + 2 / 3 + 2 / 3) / 3)
    s = td.squad_metrics(["The Paris", "london bridge", ""], [["Paris"], ["London"], []])
    assert s["exact_match"] == pytest.approx(200 / 3)
    assert s["f1"] == pytest.approx(100 * (1 + 2 / 3 + 1) / 3)
