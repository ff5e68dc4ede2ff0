"""Scores of generated texts against references, on the scale the papers print (0-100).

ROUGE is Google's rouge-score (the package HF `evaluate` wraps, with its defaults: Porter stemming, rougeLsum over
newline-split sentences), BLEU and chrF are sacrebleu's corpus scores (the reported standard, 13a tokenization),
exact match is SQuAD's (the same normalisation as `llmkit sft --task qa`). The packages are the `metrics` extra:
imported here, inside the functions, so a missing one is a ConfigError with the install line.
"""

from __future__ import annotations

from typing import Sequence

from llmkit.errors import ConfigError

ROUGE_TYPES = ("rouge1", "rouge2", "rougeL", "rougeLsum")
PACKAGES = {"rouge": ("rouge_score.rouge_scorer", "rouge-score"), "bleu": ("sacrebleu", "sacrebleu"),
            "chrf": ("sacrebleu", "sacrebleu")}   # metric: (module, the package that installs it)


def _require(module: str, package: str):
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError:
        raise ConfigError(f"this metric needs {package}, which is not installed",
                          hint="pip install 'llmkit[metrics]'") from None


def require(metrics: Sequence[str]) -> None:
    """Fail early, before any work, when a metric's package is missing."""
    for metric in metrics:
        if metric in PACKAGES:
            _require(*PACKAGES[metric])


def _check(predictions: Sequence[str], references: Sequence[str]) -> None:
    if len(predictions) != len(references):
        raise ValueError(f"{len(predictions)} predictions for {len(references)} references")


def rouge(predictions: Sequence[str], references: Sequence[str]) -> dict[str, float]:
    """Mean F-measure of ROUGE-1, ROUGE-2, ROUGE-L and ROUGE-Lsum over the pairs."""
    _check(predictions, references)
    scorer_module = _require(*PACKAGES["rouge"])
    scorer = scorer_module.RougeScorer(list(ROUGE_TYPES), use_stemmer=True)
    totals = dict.fromkeys(ROUGE_TYPES, 0.0)
    for prediction, reference in zip(predictions, references):
        scores = scorer.score(reference, prediction)
        for name in ROUGE_TYPES:
            totals[name] += scores[name].fmeasure
    n = len(predictions)
    return {name: 100 * total / n if n else 0.0 for name, total in totals.items()}


def bleu(predictions: Sequence[str], references: Sequence[str]) -> float:
    """sacrebleu's corpus BLEU with one reference a prediction."""
    _check(predictions, references)
    sacrebleu = _require(*PACKAGES["bleu"])
    return float(sacrebleu.corpus_bleu(list(predictions), [list(references)]).score)


def chrf(predictions: Sequence[str], references: Sequence[str]) -> float:
    """sacrebleu's corpus chrF (character 6-grams, beta 2)."""
    _check(predictions, references)
    sacrebleu = _require(*PACKAGES["chrf"])
    return float(sacrebleu.corpus_chrf(list(predictions), [list(references)]).score)


def exact_match(predictions: Sequence[str], references: Sequence[str]) -> float:
    """% of predictions equal to their reference after SQuAD's normalisation (case, punctuation, articles,
    whitespace)."""
    from llmkit.data.tasks import squad_metrics

    _check(predictions, references)
    return squad_metrics(list(predictions), [[r] for r in references])["exact_match"]
