"""`llmkit quickstart --fast`: the embedded pipeline runs offline and reports each stage."""

import json


def test_quickstart_fast_trains_a_lossless_tokenizer(cli, tmp_path):
    out = tmp_path / "qs"
    result = cli("quickstart", "--fast", "-o", out, "--json")
    assert result.exit_code == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["fast"] is True and report["output_dir"] == str(out)
    stage = next(s for s in report["stages"] if s["name"] == "tokenizer")
    assert stage["summary"]["vocab_size"] == 1024
    assert stage["summary"]["lossless_round_trip"] is True
    assert 1.0 < stage["summary"]["tokens_per_word_held_out"] < 3.0
    assert "".join(stage["summary"]["sample_tokens"]) == stage["summary"]["sample_text"]
    assert (out / "tokenizer" / "tokenizer.json").exists()
    assert (out / "data" / "train.jsonl").exists() and (out / "resolved_config.yaml").exists()


def test_quickstart_human_summary(cli, tmp_path):
    result = cli("quickstart", "--fast", "-o", tmp_path / "qs")
    assert result.exit_code == 0, result.stderr
    assert "tokenizer" in result.stdout and "lossless: yes" in result.stdout and "done in" in result.stdout


def test_embedded_corpus_is_the_python_reference():
    from llmkit import corpus

    train, held_out = corpus.documents()
    assert len(train) > 1000 and len(held_out) > 20
    assert {r["topic"] for r in train}.isdisjoint({r["topic"] for r in held_out})
    assert any("for" in r["topic"] for r in train + held_out)
