"""Tokens stay in Arrow: the lazy row views equal rows built by hand from the tokenizer's ids, in every layout and
from every kind of source; the data cache is reused, keyed by the tokenizer, and rebuilt when damaged."""

import json
from types import SimpleNamespace

import pytest

SEQ_LEN = 16


@pytest.fixture
def texts(corpus_texts):
    # long and short documents, one empty (dropped) and one that tokenizes to a single token
    return [t[:300] for t in corpus_texts[:12]] + ["", "a", corpus_texts[20][:40]]


@pytest.fixture
def data_file(tmp_path, texts):
    path = tmp_path / "d.jsonl"
    path.write_text("".join(json.dumps({"text": t}) + "\n" for t in texts))
    return path


@pytest.fixture(scope="module")
def tokenizer(bpe_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(bpe_dir))


def _reference_docs(tokenizer, texts):
    eos = tokenizer.eos_token_id
    ids = [tokenizer(t, add_special_tokens=False)["input_ids"] for t in texts]
    return [d if d[-1] == eos else d + [eos] for d in ids if d]


def _reference_rows(docs, layout):
    if layout == "unpacked":
        return [{"input_ids": d[i:i + SEQ_LEN]} for d in docs for i in range(0, len(d), SEQ_LEN)
                if len(d[i:i + SEQ_LEN]) >= 2]
    stream = [t for d in docs for t in d]
    positions = [p for d in docs for p in range(len(d))]
    rows = []
    for b in range(len(stream) // SEQ_LEN):
        row = {"input_ids": stream[b * SEQ_LEN:(b + 1) * SEQ_LEN]}
        if layout == "padding-free":
            shift, row["position_ids"] = positions[b * SEQ_LEN], []
            for p in positions[b * SEQ_LEN:(b + 1) * SEQ_LEN]:   # a document cut by the block restarts at 0 too
                shift = 0 if p == 0 else shift
                row["position_ids"].append(p - shift)
        rows.append(row)
    return rows


def _cfg(layout, **extra):
    return SimpleNamespace(seq_len=SEQ_LEN, pack=layout == "pack", padding_free=layout == "padding-free",
                           objective="causal-lm", **extra)


def _rows(source, tokenizer, layout, cache_dir):
    from llmkit.training import data
    from llmkit.training.pretrain import build_rows

    documents = data.read_documents(str(source), "text", tokenizer, add_special_tokens=False, append_eos=True,
                                    cache_dir=str(cache_dir))
    rows = build_rows(_cfg(layout), documents.docs, str(source), [], documents.prepacked)
    return [rows[i] for i in range(len(rows))], documents


@pytest.mark.parametrize("layout", ["unpacked", "pack", "padding-free"])
def test_rows_equal_the_hand_built_reference(data_file, texts, tokenizer, tmp_path, layout):
    rows, documents = _rows(data_file, tokenizer, layout, tmp_path / "cache")
    expected = _reference_rows(_reference_docs(tokenizer, texts), layout)
    assert rows == expected and len(rows) > 5
    assert sum(len(r["input_ids"]) for r in rows) == (len(rows) * SEQ_LEN if layout != "unpacked" else
                                                      sum(len(r["input_ids"]) for r in expected))
    assert "tokenized into the data cache" in documents.origin


def test_the_eval_split_holds_out_whole_documents(data_file, texts, tokenizer, tmp_path):
    from llmkit.training import data

    documents = data.read_documents(str(data_file), "text", tokenizer, add_special_tokens=False, append_eos=True,
                                    cache_dir=str(tmp_path))
    reference = _reference_docs(tokenizer, texts)
    train, held = data.split_eval_indices(len(documents.docs), 0.25, seed=3)
    assert sorted([*train, *held]) == list(range(len(reference))) and len(held) == round(0.25 * len(reference))
    for indices in (train, held):
        view = data.DocumentRows(documents.docs.subset(indices), None)
        assert [view[i]["input_ids"] for i in range(len(view))] == [reference[i] for i in indices]


@pytest.mark.parametrize("pack", [False, True])
def test_a_pretokenized_dir_is_read_as_written(cli, data_file, texts, tokenizer, bpe_dir, tmp_path, pack):
    out = tmp_path / "tok"
    extra = ["--pack", "--max-length", str(SEQ_LEN)] if pack else []
    assert cli("tokenize", "dataset", "-t", bpe_dir, "--data", data_file, "-o", out, *extra).exit_code == 0
    rows, documents = _rows(out, tokenizer, "unpacked", tmp_path / "cache")
    assert documents.pretokenized and documents.prepacked == pack
    if pack:   # tokenize dataset added special tokens (none for this BPE) and eos; its blocks are the rows
        stream = [t for d in _reference_docs(tokenizer, texts) for t in d]
        assert rows == [{"input_ids": stream[i:i + SEQ_LEN]} for i in range(0, len(stream) - SEQ_LEN + 1, SEQ_LEN)]
    else:      # the stored documents get eos for causal-lm, then are cut as any documents
        assert rows == _reference_rows(_reference_docs(tokenizer, texts), "unpacked")
    assert not list((tmp_path / "cache").glob("tokens/*"))   # read where it is: nothing cached


def test_a_rerun_reads_the_cache_without_tokenizing(data_file, tokenizer, tmp_path, monkeypatch):
    from llmkit.data import tokens

    first, _ = _rows(data_file, tokenizer, "pack", tmp_path)

    def no_tokenizing(*args, **kwargs):
        raise AssertionError("tokenized again")

    monkeypatch.setattr(tokens, "write_tokens", no_tokenizing)
    again, documents = _rows(data_file, tokenizer, "pack", tmp_path)
    assert again == first and "reused from the data cache" in documents.origin


def test_a_cache_written_by_another_tokenizer_is_never_reused(data_file, texts, bpe_dir, tokenizer, tmp_path):
    from transformers import AutoTokenizer

    first, _ = _rows(data_file, tokenizer, "unpacked", tmp_path)
    other = AutoTokenizer.from_pretrained(str(bpe_dir))   # the same eos id and vocabulary, one token more
    other.add_tokens(["the"])
    rows, documents = _rows(data_file, other, "unpacked", tmp_path)
    assert "tokenized into the data cache" in documents.origin
    assert rows == _reference_rows(_reference_docs(other, texts), "unpacked") != first
    assert len(list((tmp_path / "tokens").glob("*/tokens.arrow"))) == 2


def test_a_truncated_cache_entry_is_rebuilt_and_the_run_succeeds(cli, configs, bpe_dir, data_file, tmp_path):
    cache = tmp_path / "cache"
    args = ["pretrain", "--model", configs["llama"], "--from-scratch", "-t", bpe_dir, "--data", data_file,
            "--seq-len", str(SEQ_LEN), "--batch-size", "2", "--max-steps", "1", "--pack", "--data-cache", cache,
            "--json"]
    first = cli(*args, "-o", tmp_path / "r1")
    assert first.exit_code == 0, first.stderr and "tokenized into the data cache" in first.stderr
    [arrow] = cache.glob("tokens/*/tokens.arrow")
    arrow.write_bytes(arrow.read_bytes()[: arrow.stat().st_size // 2])
    second = cli(*args, "-o", tmp_path / "r2")
    assert second.exit_code == 0, second.stderr
    assert "tokenized into the data cache" in second.stderr
    assert json.loads(second.stdout)["train_rows"] == json.loads(first.stdout)["train_rows"]
    third = cli(*args, "-o", tmp_path / "r3")
    assert third.exit_code == 0 and "reused from the data cache" in third.stderr


def test_document_pieces_shorter_than_min_len_are_left_out():
    from llmkit.data.tokens import TokenDocs
    from llmkit.training.data import DocumentRows

    docs = [list(range(1, 6)), [7], [], [8, 9]]
    view = DocumentRows(TokenDocs.from_lists(docs), 2, min_len=2)
    assert [view[i]["input_ids"] for i in range(len(view))] == [[1, 2], [3, 4], [8, 9]]
    assert view.tokens == 6


def test_document_rows_are_the_documents_cut_by_hand():
    import numpy as np

    from llmkit.data.tokens import TokenDocs
    from llmkit.training.data import DocumentRows

    rng = np.random.default_rng(0)
    for _ in range(40):
        docs = [rng.integers(1, 50, size=int(rng.integers(0, 40))).tolist() for _ in range(int(rng.integers(1, 20)))]
        stored = TokenDocs.from_lists(docs)
        for seq_len in (None, 1, 3, 16, 64):
            for min_len in (1, 2, 5):
                pieces = [d[i:i + (seq_len or len(d))] for d in docs if d for i in range(0, len(d), seq_len or len(d))]
                expected = [p for p in pieces if len(p) >= min_len]
                view = DocumentRows(stored, seq_len, min_len)
                assert [view[i]["input_ids"] for i in range(len(view))] == expected, (seq_len, min_len)
                assert view.tokens == sum(map(len, expected))
