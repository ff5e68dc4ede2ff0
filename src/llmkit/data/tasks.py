"""Data for the task heads of `llmkit sft --task seq-cls|token-cls|extractive-qa`, and their metrics.

- seq-cls: a text (and an optional second text) and a label per example; labels are names, class ids, or floats
  (a regression). The label map (`id2label`/`label2id`) is saved in the model config.
- token-cls: CoNLL-style lists of words and of tags per example; tags are aligned to sub-word tokens through the
  tokenizer's word ids: the first sub-token of a word carries the word's tag, the others -100 (ignored by the loss),
  or, with --label-all-subtokens, the tag too, where a B-X becomes I-X after the first sub-token, so a word never
  starts two entities.
- extractive-qa: SQuAD-style question, context and answers (text + character start). A context longer than one
  window is split into windows of --seq-len tokens that overlap by --doc-stride tokens; the answer's start/end
  tokens come from the tokenizer's character offsets. A window that does not hold the whole answer, and every
  window of an unanswerable example, points at the CLS token (position 0 when there is none).

Pure Python and numpy apart from the tokenizer calls; errors name the source and the row.
"""

from __future__ import annotations

import collections
import re
import string
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from llmkit.errors import ConfigError, DataError

IGNORE = -100


# --------------------------------------------------------------------------------------------------- records

def read_records(source: str, revision: str | None = None, seed: int = 0) -> list[dict[str, Any]]:
    """Every record of `source` as a dict, values as written (JSON keeps ints, floats and lists apart); `revision`:
    a hub dataset's, `seed`: a weighted mix's draw."""
    from llmkit.data.loading import load_table, read_json, read_jsonl, source_kind

    kind = source_kind(source)
    path = Path(source).expanduser()
    if kind in ("jsonl", "json"):
        if not path.is_file():
            raise DataError(f"no such file: {source}", hint="check the path")
        rows = (read_jsonl if kind == "jsonl" else read_json)(path)
    else:
        rows = load_table(source, revision=revision, seed=seed).to_list()
    if not rows:
        raise DataError(f"{source} holds no records", hint="give a file with at least one record")
    return rows


def _get(row: dict, name: str, flag: str, source: str, i: int):
    if not isinstance(row, dict) or name not in row:
        keys = ", ".join(sorted(row)) if isinstance(row, dict) else type(row).__name__
        raise DataError(f"{source}: row {i + 1} has no field '{name}' (fields: {keys or 'none'})",
                        hint=f"choose the field with {flag}")
    return row[name]


# ---------------------------------------------------------------------------------------------- label maps

@dataclass
class LabelSpace:
    names: list[str]                    # id -> name; empty for a regression
    regression: bool = False
    given_as_ids: bool = False

    @property
    def num_labels(self) -> int:
        return 1 if self.regression else len(self.names)

    @property
    def id2label(self) -> dict[int, str]:
        return dict(enumerate(self.names))

    @property
    def label2id(self) -> dict[str, int]:
        return {n: i for i, n in enumerate(self.names)}


def _kind(value) -> str:
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int):
        return "int"
    if isinstance(value, float):
        return "float"
    if isinstance(value, str):
        return "str"
    return type(value).__name__


def label_space(values: list, given: tuple[str, ...], what: str, source: str, bio: bool = False) -> LabelSpace:
    """The labels of the training data: names (sorted, or in --labels order), class ids (0..max, or --labels'
    count), or floats (a regression). With `bio`, every B-X gets its I-X (sub-tokens after a word's first)."""
    kinds = {_kind(v) for v in values}
    if kinds - {"int", "float", "str"} or ("str" in kinds and len(kinds) > 1):
        raise DataError(f"{source}: {what} must be all names (strings), all class ids (integers) or all numbers "
                        f"(regression); found {', '.join(sorted(kinds))}",
                        hint="write every label the same way")
    if "float" in kinds:
        if bio:
            raise DataError(f"{source}: {what} are tags, not numbers", hint="give tag names or ids")
        return LabelSpace(names=[], regression=True)
    if kinds == {"int"}:
        top = max(values)
        if min(values) < 0:
            raise DataError(f"{source}: class ids must be 0 or more (found {min(values)})",
                            hint="number the classes 0, 1, 2, ...")
        if given:
            if top >= len(given):
                raise DataError(f"{source}: class id {top} but --labels names only {len(given)} classes",
                                hint="give one name per class id in --labels")
            return LabelSpace(names=list(given), given_as_ids=True)
        return _at_least_two(LabelSpace(names=[f"LABEL_{i}" for i in range(top + 1)], given_as_ids=True), what,
                             source)
    names = list(given) if given else sorted(set(values), key=lambda n: (n != "O", n))
    unknown = sorted(set(values) - set(names))
    if unknown:
        raise DataError(f"{source}: {what} {', '.join(map(repr, unknown[:5]))} not in --labels",
                        hint=f"--labels names {', '.join(names)}")
    if bio:
        for name in list(names):
            if name.startswith("B-") and f"I-{name[2:]}" not in names:
                names.append(f"I-{name[2:]}")
    return _at_least_two(LabelSpace(names=names), what, source)


def _at_least_two(space: LabelSpace, what: str, source: str) -> LabelSpace:
    """A head with one class learns nothing (its softmax is always 1): such data is a mistake, not a task."""
    if len(space.names) < 2:
        raise DataError(f"{source}: every example has the same {what[:-1]} ({', '.join(space.names) or 'none'}); "
                        "a classifier needs at least two classes",
                        hint="add examples of the other classes, or name every class with --labels")
    return space


def label_id(value, space: LabelSpace, what: str, where: str, eval_set: bool):
    if space.regression:
        if _kind(value) not in ("int", "float"):
            raise DataError(f"{where}: {what} {value!r} is not a number (the training labels are a regression)",
                            hint="give numbers")
        return float(value)
    if _kind(value) == "int" and space.given_as_ids:
        if 0 <= value < len(space.names):
            return int(value)
    elif _kind(value) == "str" and not space.given_as_ids and value in space.label2id:
        return space.label2id[value]
    known = ", ".join(map(str, range(len(space.names)))) if space.given_as_ids else ", ".join(space.names)
    raise DataError(f"{where}: {what} {value!r} is not among the training labels ({known})"
                    + (": the model has no output for it" if eval_set else ""),
                    hint="fix the label, or list every label with --labels (the training data then need not "
                         "hold each one)")


# ------------------------------------------------------------------------------------------------- seq-cls

@dataclass
class Encoded:
    rows: list[dict]                    # model features, one per training row
    examples: int                       # source examples (QA: fewer than rows when contexts are windowed)
    truncated: int = 0
    warnings: list[str] = field(default_factory=list)
    qa: list["QAExample"] = field(default_factory=list)   # extractive-qa: what evaluation needs per example
    targets: list[str] = field(default_factory=list)      # seq2seq: the reference text of each row


def encode_seq_cls(records: list[dict], cfg, tokenizer, space: LabelSpace, source: str,
                   eval_set: bool = False) -> Encoded:
    rows, truncated = [], 0
    for i, row in enumerate(records):
        text = _get(row, cfg.text_field, "--text-field", source, i)
        pair = _get(row, cfg.text_pair_field, "--text-pair-field", source, i) if cfg.text_pair_field else None
        value = _get(row, cfg.label_field, "--label-field", source, i)
        if not isinstance(text, str) or (pair is not None and not isinstance(pair, str)):
            raise DataError(f"{source}: row {i + 1}: the text fields must be strings", hint="check the data")
        label = label_id(value, space, "label", f"{source}: row {i + 1}", eval_set)
        full = tokenizer(text, pair, truncation=False)["input_ids"]
        enc = tokenizer(text, pair, truncation=True, max_length=cfg.seq_len)
        truncated += len(full) > len(enc["input_ids"])
        rows.append({**{k: list(v) for k, v in enc.items()}, "labels": label})
    warnings = [f"{source}: {truncated:,} example(s) longer than --seq-len {cfg.seq_len} were truncated"] \
        if truncated else []
    return Encoded(rows=rows, examples=len(records), truncated=truncated, warnings=warnings)


# ----------------------------------------------------------------------------------------------- token-cls

def read_token_examples(records: list[dict], cfg, source: str) -> list[tuple[list[str], list]]:
    out = []
    for i, row in enumerate(records):
        words = _get(row, cfg.tokens_field, "--tokens-field", source, i)
        tags = _get(row, cfg.tags_field, "--tags-field", source, i)
        if not isinstance(words, list) or not all(isinstance(w, str) for w in words):
            raise DataError(f"{source}: row {i + 1}: '{cfg.tokens_field}' must be a list of words (strings)",
                            hint="write the words as a JSON list, CoNLL-style")
        if not isinstance(tags, list):
            raise DataError(f"{source}: row {i + 1}: '{cfg.tags_field}' must be a list of tags",
                            hint="one tag per word, as a JSON list")
        if len(words) != len(tags):
            raise DataError(f"{source}: row {i + 1} has {len(words)} tokens but {len(tags)} tags",
                            hint=f"give exactly one tag per word in '{cfg.tags_field}'")
        out.append((words, tags))
    return out


def continuation(tag: str) -> str:
    """The tag of a word's later sub-tokens under --label-all-subtokens: B-X continues as I-X."""
    return "I-" + tag[2:] if tag.startswith("B-") else tag


def align_labels(word_ids: list[int | None], word_labels: list[int], all_subtokens: bool,
                 continuation_id: dict[int, int] | None = None) -> list[int]:
    """Per-token labels from per-word labels: special tokens -100; a word's first sub-token its label; later
    sub-tokens -100, or (all_subtokens) the label's continuation (B-X -> I-X)."""
    labels, previous = [], None
    for w in word_ids:
        if w is None:
            labels.append(IGNORE)
        elif w != previous:
            labels.append(word_labels[w])
        elif all_subtokens:
            label = word_labels[w]
            labels.append((continuation_id or {}).get(label, label))
        else:
            labels.append(IGNORE)
        previous = w
    return labels


def bio_problems(tags: list[str]) -> int:
    """I-X tags that follow neither B-X nor I-X (an entity without its beginning)."""
    bad, previous = 0, "O"
    for tag in tags:
        if tag.startswith("I-") and previous[2:] != tag[2:]:
            bad += 1
        previous = tag if tag.startswith(("B-", "I-")) else "O"
    return bad


def encode_token_cls(examples: list[tuple[list[str], list]], cfg, tokenizer, space: LabelSpace, source: str,
                     eval_set: bool = False) -> Encoded:
    if not getattr(tokenizer, "is_fast", False):
        raise ConfigError("--task token-cls needs a fast tokenizer (word ids align tags to sub-words)",
                          hint="use a tokenizer with a tokenizer.json")
    continuation_id = {i: space.label2id.get(continuation(n), i) for i, n in enumerate(space.names)}
    rows, truncated, broken = [], 0, 0
    for i, (words, tags) in enumerate(examples):
        ids = [label_id(t, space, "tag", f"{source}: row {i + 1}", eval_set) for t in tags]
        broken += bio_problems([space.names[j] for j in ids])
        enc = tokenizer(words, is_split_into_words=True, truncation=True, max_length=cfg.seq_len)
        word_ids = enc.word_ids()
        labels = align_labels(word_ids, ids, cfg.label_all_subtokens, continuation_id)
        seen = {w for w in word_ids if w is not None}
        truncated += bool(words) and max(seen, default=-1) < len(words) - 1
        rows.append({**{k: list(v) for k, v in enc.items()}, "labels": labels})
    warnings = []
    if truncated:
        warnings.append(f"{source}: {truncated:,} example(s) longer than --seq-len {cfg.seq_len} lost their last "
                        "words")
    if broken:
        warnings.append(f"{source}: {broken:,} I- tag(s) follow neither their B- nor their I- tag (BIO broken); "
                        "they are trained as written, and counted as entity starts by the metrics")
    return Encoded(rows=rows, examples=len(examples), truncated=truncated, warnings=warnings)


# -------------------------------------------------------------------------------------------- extractive-qa

@dataclass
class QAExample:
    id: str
    question: str
    context: str
    answers: list[str]                  # empty: unanswerable
    starts: list[int]


def read_qa_examples(records: list[dict], cfg, source: str) -> list[QAExample]:
    out = []
    for i, row in enumerate(records):
        where = f"{source}: row {i + 1}"
        question = _get(row, cfg.question_field, "--question-field", source, i)
        context = _get(row, cfg.context_field, "--context-field", source, i)
        raw = _get(row, cfg.answers_field, "--answers-field", source, i)
        if not isinstance(question, str) or not isinstance(context, str):
            raise DataError(f"{where}: question and context must be strings", hint="check the data")
        texts, starts = _answers(raw, where)
        for text, start in zip(texts, starts):
            if context[start:start + len(text)] != text:
                found = context.find(text)
                seen = context[start:start + len(text)]
                raise DataError(f"{where}: the answer {text!r} does not occur at its start offset {start} "
                                f"(the context has {seen!r} there)"
                                + (f"; it does occur at offset {found}" if found >= 0 else
                                   "; it does not occur in the context at all"),
                                hint="answer_start is the character offset of the answer in the context, "
                                     "counted from 0")
        out.append(QAExample(id=str(row.get("id", i)), question=question, context=context, answers=texts,
                             starts=starts))
    return out


def _answers(raw, where: str) -> tuple[list[str], list[int]]:
    """SQuAD's {"text": [...], "answer_start": [...]}, one {"text", "answer_start"}, or a list of those."""
    if isinstance(raw, list):
        pairs = [_answers(a, where) for a in raw]
        return [t for p in pairs for t in p[0]], [s for p in pairs for s in p[1]]
    if not isinstance(raw, dict) or "text" not in raw or "answer_start" not in raw:
        raise DataError(f"{where}: answers must be {{\"text\": [...], \"answer_start\": [...]}} (SQuAD) or a "
                        f"list of {{\"text\", \"answer_start\"}} objects", hint="an empty list means unanswerable")
    texts, starts = raw["text"], raw["answer_start"]
    texts = texts if isinstance(texts, list) else [texts]
    starts = starts if isinstance(starts, list) else [starts]
    if len(texts) != len(starts) or not all(isinstance(t, str) for t in texts) or \
            not all(isinstance(s, int) and not isinstance(s, bool) and s >= 0 for s in starts):
        raise DataError(f"{where}: answers need one text (a string) per answer_start (an offset, 0 or more)",
                        hint="e.g. {\"text\": [\"Paris\"], \"answer_start\": [27]}")
    return texts, starts


def cls_index(input_ids: list[int], tokenizer) -> int:
    cls = tokenizer.cls_token_id
    return input_ids.index(cls) if cls is not None and cls in input_ids else 0


def qa_windows(tokenizer, question: str, context: str, max_length: int, stride: int, where: str = "the input"):
    """The tokenizer's overlapping windows of (question, context): a BatchEncoding with one row per window,
    offsets and sequence ids. Refuses when the question leaves no room for a window to move forward."""
    if not getattr(tokenizer, "is_fast", False):
        raise ConfigError("extractive QA needs a fast tokenizer (character offsets and overflowing windows)",
                          hint="use a tokenizer with a tokenizer.json")
    question_tokens = len(tokenizer(question, add_special_tokens=False)["input_ids"])
    room = max_length - question_tokens - tokenizer.num_special_tokens_to_add(pair=True)
    if room <= stride:
        raise DataError(f"{where}: the question takes {question_tokens} tokens, which leaves {max(room, 0)} "
                        f"context tokens per {max_length}-token window; windows overlap by {stride} (the stride), "
                        "so no window could move forward through the context",
                        hint="raise --seq-len, lower --doc-stride, or shorten the question")
    return tokenizer(question, context, truncation="only_second", max_length=max_length, stride=stride,
                     return_overflowing_tokens=True, return_offsets_mapping=True)


def answer_tokens(offsets, sequence_ids, start_char: int, end_char: int) -> tuple[int, int] | None:
    """(start token, end token) of the characters [start_char, end_char) in one window, or None when the
    window's context does not hold them whole."""
    context = [i for i, s in enumerate(sequence_ids) if s == 1]
    if not context:
        return None
    first, last = context[0], context[-1]
    if offsets[first][0] > start_char or offsets[last][1] < end_char:
        return None
    start = first
    while start <= last and offsets[start][1] <= start_char:
        start += 1
    end = last
    while end >= first and offsets[end][0] >= end_char:
        end -= 1
    return (start, end) if start <= end else None


def doc_stride(cfg) -> int:
    """--doc-stride, or by default 128 tokens (transformers' QA default) and at most a quarter of --seq-len."""
    return cfg.doc_stride if cfg.doc_stride is not None else min(128, cfg.seq_len // 4)


def encode_qa(examples: list[QAExample], cfg, tokenizer, source: str) -> Encoded:
    rows, windowed, unanswerable = [], 0, 0
    stride = doc_stride(cfg)
    for n, ex in enumerate(examples):
        enc = qa_windows(tokenizer, ex.question, ex.context, cfg.seq_len, stride, f"{source}: row {n + 1}")
        windows = len(enc["input_ids"])
        windowed += windows > 1
        unanswerable += not ex.answers
        for w in range(windows):
            ids = list(enc["input_ids"][w])
            cls = cls_index(ids, tokenizer)
            span = None
            if ex.answers:
                start_char = ex.starts[0]
                span = answer_tokens(enc["offset_mapping"][w], enc.sequence_ids(w), start_char,
                                     start_char + len(ex.answers[0]))
            start, end = span if span is not None else (cls, cls)
            row = {k: list(enc[k][w]) for k in enc.keys() if k not in ("offset_mapping", "overflow_to_sample_mapping")}
            rows.append({**row, "start_positions": start, "end_positions": end, "example": n,
                         "offsets": [tuple(o) if s == 1 else None
                                     for o, s in zip(enc["offset_mapping"][w], enc.sequence_ids(w))]})
    warnings = []
    if windowed:
        warnings.append(f"{source}: {windowed:,} context(s) longer than one --seq-len {cfg.seq_len} window were "
                        f"split into windows overlapping by --doc-stride {stride} tokens; windows without "
                        "the whole answer point at CLS")
    return Encoded(rows=rows, examples=len(examples), qa=examples, warnings=warnings)


def best_spans(start_logits, end_logits, offsets: list, max_answer_len: int, top_k: int = 1):
    """Candidate answers of one window: (score, start_char, end_char, null_score). Scores are the product of the
    start and end probabilities (softmax over the window's context tokens and CLS, everything else masked), as
    transformers 4's question-answering pipeline computed them; null_score is CLS's start x end probability."""
    import numpy as np

    start_logits = np.asarray(start_logits, dtype=np.float64)
    end_logits = np.asarray(end_logits, dtype=np.float64)
    allowed = np.array([o is not None for o in offsets])
    allowed[0] = True                                       # CLS (or the first token): "no answer"
    start = np.where(allowed, start_logits, -10000.0)
    end = np.where(allowed, end_logits, -10000.0)
    start = np.exp(start - start.max())
    start /= start.sum()
    end = np.exp(end - end.max())
    end /= end.sum()
    null = float(start[0] * end[0])
    start[0] = end[0] = 0.0
    outer = np.outer(start, end)
    candidates = np.tril(np.triu(outer), max_answer_len - 1)
    flat = candidates.flatten()
    order = np.argsort(-flat, kind="stable")
    out = []
    for index in order:
        s, e = np.unravel_index(index, candidates.shape)
        score = float(flat[index])
        if score <= 0 or len(out) >= top_k:
            break
        if offsets[s] is None or offsets[e] is None:
            continue
        out.append((score, int(offsets[s][0]), int(offsets[e][1]), null))
    return out, null


def decode_answers(example_windows: list[tuple[Any, Any, list]], context: str, max_answer_len: int,
                   top_k: int = 1, handle_impossible: bool = True) -> list[dict]:
    """The best answers of an example over all its windows: [{answer, start, end, score}], best first; with
    `handle_impossible`, the empty answer (start = end = 0) competes with the smallest null score."""
    candidates, nulls = [], []
    for start_logits, end_logits, offsets in example_windows:
        spans, null = best_spans(start_logits, end_logits, offsets, max_answer_len, top_k)
        candidates.extend(spans)
        nulls.append(null)
    best: dict[tuple[int, int], float] = {}
    for score, s, e, _ in candidates:
        best[(s, e)] = max(score, best.get((s, e), 0.0))
    answers = [{"answer": context[s:e], "start": s, "end": e, "score": score} for (s, e), score in best.items()]
    if handle_impossible and nulls:
        answers.append({"answer": "", "start": 0, "end": 0, "score": min(nulls)})
    answers.sort(key=lambda a: -a["score"])
    return answers[:top_k]


# ------------------------------------------------------------------------------------------------- seq2seq

def read_pairs(records: list[dict], cfg, source: str) -> list[tuple[str, str]]:
    """(source text, target text) per record: --source-field/--target-field, or, in rows shaped as the hub's
    translation sets ({"translation": {"en": ..., "fr": ...}}), the --source-lang/--target-lang keys."""
    pairs = []
    for i, row in enumerate(records):
        fields = (cfg.source_field, "--source-field"), (cfg.target_field, "--target-field")
        nested = row.get("translation") if isinstance(row, dict) and cfg.source_field not in row else None
        if isinstance(nested, dict):
            if not (cfg.source_lang and cfg.target_lang):
                raise DataError(f"{source}: row {i + 1} holds {{translation: {{{', '.join(sorted(nested))}}}}} and "
                                f"no field '{cfg.source_field}'",
                                hint="name its languages with --source-lang and --target-lang")
            row, fields = nested, ((cfg.source_lang, "--source-lang"), (cfg.target_lang, "--target-lang"))
        texts = tuple(_get(row, name, flag, source, i) for name, flag in fields)
        if not all(isinstance(t, str) for t in texts):
            raise DataError(f"{source}: row {i + 1}: the source and target must be strings", hint="check the data")
        pairs.append(texts)
    return pairs


def source_prefix(cfg) -> str:
    """--source-prefix with its {source_lang} and {target_lang} filled in (other braces are kept as written)."""
    return (cfg.source_prefix or "").replace("{source_lang}", cfg.source_lang or "") \
        .replace("{target_lang}", cfg.target_lang or "")


def encode_seq2seq(pairs: list[tuple[str, str]], cfg, tokenizer, source: str) -> Encoded:
    """Encoder inputs (prefix + source, at most --seq-len tokens) and labels (the target, at most --max-target-len
    tokens, ending with eos so the model learns to stop, also where the tokenizer does not add it)."""
    prefix, eos = source_prefix(cfg), tokenizer.eos_token_id
    rows, targets, truncated = [], [], 0
    for text, target in pairs:
        inputs = tokenizer(prefix + text)["input_ids"]
        labels = list(tokenizer(text_target=target)["input_ids"])
        if eos is not None and labels[-1:] != [eos]:
            labels.append(eos)
        truncated += len(inputs) > cfg.seq_len or len(labels) > cfg.max_target_len
        if len(inputs) > cfg.seq_len:   # the tokenizer's own truncation keeps its special tokens
            inputs = tokenizer(prefix + text, truncation=True, max_length=cfg.seq_len)["input_ids"]
        if len(labels) > cfg.max_target_len:
            labels = labels[:cfg.max_target_len - 1] + [eos] if eos is not None else labels[:cfg.max_target_len]
        rows.append({"input_ids": inputs, "attention_mask": [1] * len(inputs), "labels": labels})
        targets.append(target)
    warnings = [f"{source}: {truncated:,} example(s) with a source longer than --seq-len {cfg.seq_len} or a target "
                f"longer than --max-target-len {cfg.max_target_len} were truncated"] if truncated else []
    return Encoded(rows=rows, examples=len(pairs), truncated=truncated, warnings=warnings, targets=targets)


# ------------------------------------------------------------------------------------------------- metrics

def classification_metrics(predictions: list[int], labels: list[int], num_labels: int) -> dict[str, float]:
    """Accuracy and macro-F1 (the unweighted mean over the classes that occur in labels or predictions)."""
    total = len(labels)
    correct = sum(p == y for p, y in zip(predictions, labels))
    f1s = []
    for c in sorted(set(labels) | set(predictions)):
        tp = sum(p == c and y == c for p, y in zip(predictions, labels))
        fp = sum(p == c and y != c for p, y in zip(predictions, labels))
        fn = sum(p != c and y == c for p, y in zip(predictions, labels))
        f1s.append(2 * tp / (2 * tp + fp + fn) if tp + fp + fn else 0.0)
    return {"accuracy": correct / total if total else 0.0, "macro_f1": sum(f1s) / len(f1s) if f1s else 0.0}


def regression_metrics(predictions: list[float], labels: list[float]) -> dict[str, float]:
    n = len(labels)
    mse = sum((p - y) ** 2 for p, y in zip(predictions, labels)) / n if n else 0.0
    return {"mse": mse, "mae": sum(abs(p - y) for p, y in zip(predictions, labels)) / n if n else 0.0}


def entities(tags: list[str]) -> set[tuple[str, int, int]]:
    """(type, first, last) entity spans of a BIO (or IOB1) tag sequence, as seqeval's default mode reads them: an
    entity starts at B-X, at an I-X whose type differs from the previous tag's, or after O."""
    spans, kind, start = set(), None, 0
    for i, tag in enumerate(list(tags) + ["O"]):
        if tag == "O":
            prefix, typ = "O", None
        elif tag[:2] in ("B-", "I-"):
            prefix, typ = tag[0], tag[2:]
        else:
            prefix, typ = "I", tag
        if kind is not None and (prefix in ("O", "B") or typ != kind):
            spans.add((kind, start, i - 1))
            kind = None
        if prefix in ("B", "I") and kind is None:
            kind, start = typ, i
    return spans


def entity_metrics(predicted: list[list[str]], gold: list[list[str]]) -> dict[str, float]:
    """Entity-level micro precision, recall and F1 (an entity counts when its type and span match exactly)."""
    tp = n_pred = n_gold = 0
    for p, g in zip(predicted, gold):
        ps, gs = entities(p), entities(g)
        tp += len(ps & gs)
        n_pred += len(ps)
        n_gold += len(gs)
    precision = tp / n_pred if n_pred else 0.0
    recall = tp / n_gold if n_gold else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {"precision": precision, "recall": recall, "f1": f1}


def _normalize_answer(text: str) -> str:
    """SQuAD's normalisation: lower case, no punctuation, no articles, single spaces."""
    text = "".join(ch for ch in text.lower() if ch not in set(string.punctuation))
    text = re.sub(r"\b(a|an|the)\b", " ", text)
    return " ".join(text.split())


def _f1(prediction: str, truth: str) -> float:
    p, t = _normalize_answer(prediction).split(), _normalize_answer(truth).split()
    if not p or not t:
        return float(p == t)
    common = collections.Counter(p) & collections.Counter(t)
    same = sum(common.values())
    if same == 0:
        return 0.0
    precision, recall = same / len(p), same / len(t)
    return 2 * precision * recall / (precision + recall)


def squad_metrics(predictions: list[str], answers: list[list[str]]) -> dict[str, float]:
    """Exact match and F1 (SQuAD v2: an unanswerable example's only right answer is the empty string), in %."""
    em = f1 = 0.0
    for prediction, truths in zip(predictions, answers):
        truths = truths or [""]
        em += max(float(_normalize_answer(prediction) == _normalize_answer(t)) for t in truths)
        f1 += max(_f1(prediction, t) for t in truths)
    n = len(predictions)
    return {"exact_match": 100 * em / n if n else 0.0, "f1": 100 * f1 / n if n else 0.0}
