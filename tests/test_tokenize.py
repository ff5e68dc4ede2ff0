"""`llmkit tokenize`: every field equals transformers' own call; trained tokenizers load; datasets are exact."""

import json
from pathlib import Path

import pytest
from helpers import assert_clean_error

TEXTS = ["The for statement iterates over a sequence.", "Hello  world, naïve café!"]


def hf_tokenizer(path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(path))


def show_json(cli, *args):
    result = cli("tokenize", "show", *args, "--json")
    assert result.exit_code == 0, result.stderr
    return json.loads(result.stdout)


@pytest.mark.parametrize("fixture", ["bpe_dir", "wordpiece_dir", "unigram_dir"])
def test_show_fields_equal_the_transformers_call(cli, request, fixture):
    path = request.getfixturevalue(fixture)
    data = show_json(cli, "-t", path, *TEXTS)
    tokenizer = hf_tokenizer(path)
    expected = tokenizer(TEXTS, return_offsets_mapping=True, return_special_tokens_mask=True)
    for i, item in enumerate(data["texts"]):
        assert item["input_ids"] == expected["input_ids"][i]
        assert item["attention_mask"] == expected["attention_mask"][i]
        assert item["offsets"] == [list(o) for o in expected["offset_mapping"][i]]
        assert item["word_ids"] == expected.word_ids(i)
        assert item["tokens"] == tokenizer.convert_ids_to_tokens(expected["input_ids"][i])
        assert item["special_tokens_mask"] == expected["special_tokens_mask"][i]
        assert ("token_type_ids" in item) == ("token_type_ids" in expected)


def test_offsets_point_into_the_original_text(cli, bpe_dir):
    data = show_json(cli, "-t", bpe_dir, TEXTS[1])
    item = data["texts"][0]
    spans = [tuple(o) for o in item["offsets"]]
    # A character split across byte-level tokens gives each of them the same span: drop repeats, then they tile.
    unique = list(dict.fromkeys(spans))
    assert "".join(TEXTS[1][a:b] for a, b in unique) == TEXTS[1]
    assert all(b1 <= a2 for (_, b1), (a2, _) in zip(unique, unique[1:]))
    assert item["decoded"] == TEXTS[1]  # byte-level BPE is lossless


def test_pair_with_padding_and_truncation(cli, wordpiece_dir):
    data = show_json(cli, "-t", wordpiece_dir, TEXTS[0], "--pair", "a second segment here", "--max-length", "10",
                     "--padding", "max_length")
    tokenizer = hf_tokenizer(wordpiece_dir)
    expected = tokenizer(TEXTS[0], "a second segment here", max_length=10, truncation=True, padding="max_length")
    item = data["texts"][0]
    assert item["input_ids"] == expected["input_ids"] and len(item["input_ids"]) == 10
    assert item["token_type_ids"] == expected["token_type_ids"] and 1 in item["token_type_ids"]
    assert item["sequence_ids"].count(1) > 0


def test_padding_longest_masks_the_pads(cli, bpe_dir):
    data = show_json(cli, "-t", bpe_dir, "short", TEXTS[0], "--padding", "longest")
    short, long = data["texts"]
    assert len(short["input_ids"]) == len(long["input_ids"])
    assert short["attention_mask"].count(0) > 0 and long["attention_mask"].count(0) == 0


def test_no_truncation_overrides_the_default(cli, bpe_dir):
    truncated = show_json(cli, "-t", bpe_dir, TEXTS[0], "--max-length", "3")["texts"][0]
    full = show_json(cli, "-t", bpe_dir, TEXTS[0], "--max-length", "3", "--no-truncation")["texts"][0]
    assert len(truncated["input_ids"]) == 3 and len(full["input_ids"]) > 3


def test_slow_wordpiece_matches_fast(cli, wordpiece_dir):
    fast = show_json(cli, "-t", wordpiece_dir, *TEXTS)
    slow = show_json(cli, "-t", wordpiece_dir, *TEXTS, "--slow")
    assert slow["is_fast"] is False and fast["is_fast"] is True
    for a, b in zip(fast["texts"], slow["texts"]):
        assert a["input_ids"] == b["input_ids"]
        assert b["offsets"] is None


def test_slow_is_refused_clearly_where_transformers_has_none(cli, bpe_dir):
    assert_clean_error(cli("tokenize", "show", "-t", bpe_dir, "x", "--slow"), 1, "no Python (slow) tokenizer")


def test_human_output_has_a_table_and_decoded_text(cli, wordpiece_dir):
    result = cli("tokenize", "show", "-t", wordpiece_dir, "hello world", "--pair", "again")
    assert result.exit_code == 0
    for column in ("token", "offsets", "word", "special", "mask", "type"):
        assert column in result.stdout
    assert "decoded: '[CLS] hello world [SEP] again [SEP]'" in result.stdout


def test_vocab_lookups(cli, bpe_dir):
    result = cli("tokenize", "vocab", "-t", bpe_dir, "--search", "the", "--ids", "0,1", "--tokens", "<pad>,qqqqq",
                 "--json")
    data = json.loads(result.stdout)
    assert data["vocab_size"] == len(hf_tokenizer(bpe_dir))
    assert data["special_tokens"]["eos_token"] == {"token": "</s>", "id": 1}
    assert all("the" in m["token"] for m in data["search"]) and data["search"]
    assert data["ids"] == [{"id": 0, "token": "<s>"}, {"id": 1, "token": "</s>"}]
    assert data["tokens"] == [{"token": "<pad>", "id": 2}, {"token": "qqqqq", "id": None}]


def test_vocab_rejects_ids_outside_the_vocabulary(cli, bpe_dir):
    assert_clean_error(cli("tokenize", "vocab", "-t", bpe_dir, "--ids", "999999"), 2, "outside the vocabulary")
    assert_clean_error(cli("tokenize", "vocab", "-t", bpe_dir, "--ids", "a,b"), 2, "comma-separated integers")


@pytest.mark.parametrize("kind, specials", [
    ("bpe", {"bos_token": "<s>", "eos_token": "</s>", "pad_token": "<pad>", "unk_token": "<unk>"}),
    ("wordpiece", {"cls_token": "[CLS]", "sep_token": "[SEP]", "mask_token": "[MASK]", "pad_token": "[PAD]",
                   "unk_token": "[UNK]"}),
    ("unigram", {"bos_token": "<s>", "eos_token": "</s>", "pad_token": "<pad>", "unk_token": "<unk>"}),
])
def test_train_saves_a_tokenizer_autotokenizer_loads(cli, tmp_path, corpus_texts, kind, specials):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n".join(corpus_texts[:200]), encoding="utf-8")
    out = tmp_path / "tok"
    result = cli("tokenize", "train", "--corpus", corpus, "--type", kind, "--vocab-size", "500", "-o", out, "--json")
    assert result.exit_code == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["vocab_size"] <= 500 and report["tokens_per_word"] > 1
    tokenizer = hf_tokenizer(out)
    for name, token in specials.items():
        assert getattr(tokenizer, name) == token
        assert tokenizer.convert_tokens_to_ids(token) != tokenizer.unk_token_id or name == "unk_token"
    assert (out / "resolved_config.yaml").exists()


def test_byte_level_bpe_decodes_losslessly(bpe_dir):
    tokenizer = hf_tokenizer(bpe_dir)
    for text in ["  leading spaces", "tabs\tand\nnewlines", "emoji 🙂 and ünïcödé", "x = f(a, *b, **c)  # comment"]:
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        assert tokenizer.decode(ids) == text
        assert tokenizer.unk_token_id not in ids


def test_train_reads_jsonl_with_a_text_field(cli, tmp_path, corpus_texts):
    data = tmp_path / "c.jsonl"
    data.write_text("\n".join(json.dumps({"body": t}) for t in corpus_texts[:100]), encoding="utf-8")
    result = cli("tokenize", "train", "--corpus", data, "--text-field", "body", "--vocab-size", "300", "-o",
                 tmp_path / "t")
    assert result.exit_code == 0, result.stderr
    assert "tokens per word" in result.stdout


def _load_dataset(path):
    import datasets

    return datasets.load_from_disk(str(path))


def test_dataset_ids_equal_the_tokenizer_and_truncation_matches_transformers(cli, tmp_path, jsonl_file, bpe_dir):
    out = tmp_path / "ds"
    result = cli("tokenize", "dataset", "-t", bpe_dir, "--data", jsonl_file, "-o", out, "--max-length", "40", "--json")
    assert result.exit_code == 0, result.stderr
    report = json.loads(result.stdout)
    texts = [json.loads(line)["text"] for line in jsonl_file.read_text().splitlines()]
    tokenizer = hf_tokenizer(bpe_dir)
    expected = tokenizer(texts, truncation=True, max_length=40)["input_ids"]
    table = _load_dataset(out)
    assert table["input_ids"] == expected
    full = [len(x) for x in tokenizer(texts)["input_ids"]]
    stats = report["stats"]
    assert stats["documents"] == len(texts) and stats["tokens"] == sum(full) and stats["max"] == max(full)
    assert stats["truncated_share"] == pytest.approx(sum(n > 40 for n in full) / len(full), abs=1e-6)
    assert stats["tokens_kept"] == sum(min(n, 40) for n in full)
    meta = json.loads((out / "llmkit_dataset.json").read_text())
    assert meta["packed"] is False and meta["max_length"] == 40


def test_dataset_pack_cuts_blocks_with_eos_between_documents(cli, tmp_path, jsonl_file, bpe_dir):
    out = tmp_path / "packed"
    result = cli("tokenize", "dataset", "-t", bpe_dir, "--data", jsonl_file, "-o", out, "--pack", "--max-length", "64",
                 "--json")
    assert result.exit_code == 0, result.stderr
    report = json.loads(result.stdout)
    texts = [json.loads(line)["text"] for line in jsonl_file.read_text().splitlines()]
    tokenizer = hf_tokenizer(bpe_dir)
    stream = [t for ids in tokenizer(texts)["input_ids"] for t in ids + [tokenizer.eos_token_id]]
    rows = _load_dataset(out)["input_ids"]
    assert all(len(r) == 64 for r in rows)
    assert [t for r in rows for t in r] == stream[: len(rows) * 64]
    assert report["stats"]["blocks"] == len(rows) == len(stream) // 64
    assert report["stats"]["packing_efficiency"] == pytest.approx(len(rows) * 64 / len(stream), abs=1e-6)


def test_stats_writes_nothing_and_prints_percentiles(cli, tmp_path, jsonl_file, bpe_dir):
    before = set(tmp_path.iterdir())
    result = cli("tokenize", "stats", "-t", bpe_dir, "--data", jsonl_file, "--max-length", "30")
    assert result.exit_code == 0, result.stderr
    for word in ("documents", "p50", "p90", "p99", "max", "share truncated", "padding efficiency"):
        assert word in result.stdout
    assert set(tmp_path.iterdir()) == before


def test_dataset_refuses_a_non_empty_output_dir(cli, tmp_path, jsonl_file, bpe_dir):
    out = tmp_path / "ds"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    assert_clean_error(cli("tokenize", "dataset", "-t", bpe_dir, "--data", jsonl_file, "-o", out), 2, "--overwrite")
    assert (out / "keep.txt").read_text() == "mine"
    assert cli("tokenize", "dataset", "-t", bpe_dir, "--data", jsonl_file, "-o", out, "--overwrite").exit_code == 0
    assert not (out / "keep.txt").exists()


# ------------------------------------------------------------------------------------------------- bad input

def _no_output(tmp_path: Path) -> None:
    assert not (tmp_path / "out").exists()
    assert not [p for p in tmp_path.iterdir() if ".partial-" in p.name]


def test_missing_file(cli, tmp_path, bpe_dir):
    assert_clean_error(cli("tokenize", "dataset", "-t", bpe_dir, "--data", tmp_path / "none.jsonl", "-o",
                           tmp_path / "out"), 1, "no such file", "none.jsonl")
    _no_output(tmp_path)


def test_empty_file(cli, tmp_path, bpe_dir):
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    assert_clean_error(cli("tokenize", "dataset", "-t", bpe_dir, "--data", empty, "-o", tmp_path / "out"), 1,
                       "empty.jsonl is empty")
    _no_output(tmp_path)


def test_malformed_jsonl_line_names_file_and_line(cli, tmp_path, bpe_dir):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "fine"}\n{"text": "also fine"}\n{"text": broken}\n')
    assert_clean_error(cli("tokenize", "dataset", "-t", bpe_dir, "--data", bad, "-o", tmp_path / "out"), 1,
                       f"{bad}:3: invalid JSON")
    _no_output(tmp_path)


def test_missing_text_field_lists_the_fields(cli, tmp_path, bpe_dir):
    data = tmp_path / "d.jsonl"
    data.write_text('{"title": "a", "body": "b"}\n')
    assert_clean_error(cli("tokenize", "stats", "-t", bpe_dir, "--data", data), 1, "no field 'text'",
                       "fields found: title, body", "--text-field")


def test_binary_garbage(cli, tmp_path, bpe_dir):
    garbage = tmp_path / "garbage.jsonl"
    garbage.write_bytes(bytes(range(256)) * 10)
    assert_clean_error(cli("tokenize", "dataset", "-t", bpe_dir, "--data", garbage, "-o", tmp_path / "out"), 1,
                       "binary")
    latin1 = tmp_path / "latin1.txt"
    latin1.write_bytes("caf\xe9 au lait\n".encode("latin-1"))
    assert_clean_error(cli("tokenize", "train", "--corpus", latin1, "-o", tmp_path / "out"), 1, "not valid UTF-8")
    _no_output(tmp_path)


def test_tokenizer_dir_without_tokenizer_files(cli, tmp_path):
    (tmp_path / "empty-model").mkdir()
    assert_clean_error(cli("tokenize", "show", "-t", tmp_path / "empty-model", "x"), 1, "has no tokenizer files")


def test_hub_id_while_offline_fails_fast_naming_the_id(cli, monkeypatch):
    import time

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    started = time.perf_counter()
    assert_clean_error(cli("tokenize", "show", "-t", "some-org/some-model", "x"), 1, "'some-org/some-model'",
                       "Hub cannot be reached")
    assert time.perf_counter() - started < 10


def test_hub_unreachable_without_offline_flag_fails_fast(cli, monkeypatch):
    import time

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # the discard port: nothing listens
    started = time.perf_counter()
    assert_clean_error(cli("tokenize", "vocab", "-t", "gpt2"), 1, "'gpt2'", "unreachable")
    assert time.perf_counter() - started < 10


@pytest.mark.parametrize("args, fragment", [
    (["tokenize", "train", "--vocab-size", "0"], "--vocab-size must be greater than 0"),
    (["tokenize", "train", "--vocab-size", "-5"], "--vocab-size must be greater than 0"),
    (["tokenize", "train", "--min-frequency", "0"], "--min-frequency must be greater than 0"),
    (["tokenize", "show", "x", "--max-length", "0"], "--max-length must be greater than 0"),
    (["tokenize", "stats", "--data", "d.jsonl", "--max-length", "-1"], "--max-length must be greater than 0"),
    (["tokenize", "stats", "--data", "d.jsonl", "--num-proc", "0"], "--num-proc must be greater than 0"),
    (["tokenize", "stats", "--data", "d.jsonl", "--pack"], "--pack needs --max-length"),
    (["tokenize", "show", "x", "--padding", "sideways"], "not one of"),
])
def test_zero_negative_and_inconsistent_sizes_exit_2(cli, tmp_path, bpe_dir, args, fragment):
    extra = ["--corpus", "c.txt", "-o", str(tmp_path / "out")] if args[1] == "train" else ["-t", str(bpe_dir)]
    assert_clean_error(cli(*args, *extra), 2, fragment)
    _no_output(tmp_path)


def test_pair_with_a_tokenizer_without_a_pair_template(cli, bpe_dir):
    assert_clean_error(cli("tokenize", "show", "-t", bpe_dir, "x", "--pair", "y"), 2, "no template for text pairs")


def test_pack_with_too_little_text(cli, tmp_path, bpe_dir):
    data = tmp_path / "tiny.jsonl"
    data.write_text('{"text": "hi"}\n')
    assert_clean_error(cli("tokenize", "dataset", "-t", bpe_dir, "--data", data, "-o", tmp_path / "out", "--pack",
                           "--max-length", "512"), 1, "fewer than one block")
    _no_output(tmp_path)
