"""llmkit.text_metrics against scores worked out by hand, and against the packages called directly."""

import math

import pytest

from llmkit import text_metrics
from llmkit.errors import ConfigError


def test_rouge1_and_rouge2_are_the_f_measures_of_shared_unigrams_and_bigrams():
    # prediction "the cat sat", reference "the cat sat down": 3 of 3 unigrams, 3 of 4 in the reference
    scores = text_metrics.rouge(["the cat sat"], ["the cat sat down"])
    p, r = 3 / 3, 3 / 4
    assert scores["rouge1"] == pytest.approx(100 * 2 * p * r / (p + r))
    p, r = 2 / 2, 2 / 3   # bigrams: "the cat", "cat sat" of "the cat", "cat sat", "sat down"
    assert scores["rouge2"] == pytest.approx(100 * 2 * p * r / (p + r))
    assert set(scores) == {"rouge1", "rouge2", "rougeL", "rougeLsum"}


def test_rouge_averages_over_pairs_and_stems():
    scores = text_metrics.rouge(["cats running", "nothing alike"], ["cat runs", "completely different"])
    assert scores["rouge1"] == pytest.approx(50.0)   # stemmed: the first pair matches fully, the second not at all


def test_bleu_is_the_brevity_penalised_geometric_mean_of_ngram_precisions():
    prediction = "the quick brown fox jumps over the dog"          # 8 tokens
    reference = "the quick brown fox jumps over the lazy dog"      # 9 tokens
    # matched n-grams: 8/8, 6/7, 5/6, 4/5 (the n-grams across "the dog" are not in the reference)
    precisions = [8 / 8, 6 / 7, 5 / 6, 4 / 5]
    expected = 100 * math.exp(1 - 9 / 8) * math.exp(sum(map(math.log, precisions)) / 4)
    assert text_metrics.bleu([prediction], [reference]) == pytest.approx(expected, rel=1e-6)


def test_chrf_is_sacrebleus_corpus_chrf():
    import sacrebleu

    predictions, references = ["a small test", "hello there"], ["a smaller test", "hello world"]
    assert text_metrics.chrf(predictions, references) == pytest.approx(
        sacrebleu.metrics.CHRF().corpus_score(predictions, [references]).score)
    assert text_metrics.chrf(references, references) == pytest.approx(100.0)


def test_exact_match_normalises_case_punctuation_and_articles():
    assert text_metrics.exact_match(["The Answer.", "no", " Paris "], ["answer", "yes", "paris"]) == \
        pytest.approx(100 * 2 / 3)


def test_mismatched_lengths_are_refused():
    with pytest.raises(ValueError, match="2 predictions for 1 references"):
        text_metrics.bleu(["a", "b"], ["a"])


def test_a_missing_package_names_the_extra(monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "sacrebleu", None)
    with pytest.raises(ConfigError) as caught:
        text_metrics.bleu(["a"], ["a"])
    assert "llmkit[metrics]" in caught.value.hint
