"""--data a,b and weights: the realised mix each run reports against datasets' own interleave and tokens counted
by hand; --eval-data a,b: each source's loss against a hand-written loss of the final model on its documents;
--data-revision and eval weights refused where they cannot apply."""

import json

import pytest
import torch

from helpers import assert_clean_error


def _docs(path, texts):
    path.write_text("".join(json.dumps({"text": t}) + "\n" for t in texts), encoding="utf-8")
    return path


@pytest.fixture
def two_sources(tmp_path, corpus_texts):
    a = _docs(tmp_path / "wiki.jsonl", [t[:300] for t in corpus_texts[:12]])
    b = _docs(tmp_path / "code.jsonl", [t[:120] for t in corpus_texts[12:30]])
    return a, b


def _pretrain(cli, configs, bpe_dir, out, *extra):
    result = cli("pretrain", "--model", configs["llama"], "--from-scratch", "-t", bpe_dir, "-o", out,
                 "--seq-len", "256", "--batch-size", "4", "--max-steps", "2", "--json", *extra)
    assert result.exit_code == 0, result.stderr
    return json.loads(result.stdout)


def _doc_tokens(tokenizer, path):
    """Tokens of each document as pretrain's causal LM sees it: the text's ids and eos."""
    texts = [json.loads(line)["text"] for line in path.read_text().splitlines()]
    return [tokenizer(t, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id] for t in texts]


def test_an_unweighted_mix_reports_each_sources_rows_and_tokens(cli, configs, bpe_dir, two_sources, tmp_path):
    from transformers import AutoTokenizer

    a, b = two_sources
    report = _pretrain(cli, configs, bpe_dir, tmp_path / "run", "--data", f"{a},{b}")
    tokenizer = AutoTokenizer.from_pretrained(bpe_dir)
    expected = {str(p): [len(ids) for ids in _doc_tokens(tokenizer, p)] for p in (a, b)}
    mix = {m["source"]: m for m in report["data_mix"]}
    assert set(mix) == set(expected)
    total = sum(map(sum, expected.values()))
    for source, lengths in expected.items():
        assert mix[source]["rows"] == len(lengths) and mix[source]["tokens"] == sum(lengths)
        assert mix[source]["share_of_tokens"] == pytest.approx(sum(lengths) / total, abs=1e-6)
        assert mix[source]["weight"] is None
    manifest = json.loads((tmp_path / "run" / "manifest.json").read_text())
    assert manifest["data"]["mix"] == report["data_mix"]


def test_a_weighted_mix_reports_the_draw_of_datasets_interleave(cli, configs, bpe_dir, two_sources, tmp_path):
    import datasets
    from transformers import AutoTokenizer

    a, b = two_sources
    report = _pretrain(cli, configs, bpe_dir, tmp_path / "run", "--data", f"{a}:0.7,{b}:0.3", "--seed", "3")
    tokenizer = AutoTokenizer.from_pretrained(bpe_dir)
    lengths = [[len(ids) for ids in _doc_tokens(tokenizer, p)] for p in (a, b)]
    # the reference draw: datasets' interleave called directly, as a user would
    tagged = [datasets.Dataset.from_dict({"source": [k] * len(ls), "doc": list(range(len(ls)))})
              for k, ls in enumerate(lengths)]
    drawn = datasets.interleave_datasets(tagged, probabilities=[0.7, 0.3], seed=3, stopping_strategy="all_exhausted")
    rows, tokens = [0, 0], [0, 0]
    for source, doc in zip(drawn["source"], drawn["doc"]):
        rows[source] += 1
        tokens[source] += lengths[source][doc]
    mix = report["data_mix"]
    assert [m["source"] for m in mix] == [str(a), str(b)] and [m["weight"] for m in mix] == [0.7, 0.3]
    assert [m["rows"] for m in mix] == rows and [m["tokens"] for m in mix] == tokens
    assert sum(m["share_of_tokens"] for m in mix) == pytest.approx(1.0, abs=1e-5)


def _hand_loss(model, documents):
    """Mean next-token cross-entropy over every predicted token of these documents, one at a time."""
    total, count = 0.0, 0
    with torch.no_grad():
        for ids in documents:
            ids = torch.tensor([ids])
            logits = model(input_ids=ids).logits[0, :-1]
            total += torch.nn.functional.cross_entropy(logits.float(), ids[0, 1:], reduction="sum").item()
            count += ids.shape[1] - 1
    return total / count, count


def test_each_eval_source_is_scored_on_its_own(cli, configs, bpe_dir, docs_file, two_sources, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    a, b = two_sources
    out = tmp_path / "run"
    report = _pretrain(cli, configs, bpe_dir, out, "--data", docs_file, "--eval-data", f"{a},{b}")
    model = AutoModelForCausalLM.from_pretrained(out / "model").eval()
    tokenizer = AutoTokenizer.from_pretrained(bpe_dir)
    by_name = {s["name"]: s for s in report["eval_by_source"]}
    assert set(by_name) == {"wiki", "code"}
    sums = []
    for name, path in (("wiki", a), ("code", b)):
        loss, count = _hand_loss(model, _doc_tokens(tokenizer, path))
        assert by_name[name]["source"] == str(path)
        assert by_name[name]["eval_loss"] == pytest.approx(loss, abs=1e-4)
        assert by_name[name]["eval_tokens"] == count
        sums.append((loss * count, count))
    # the overall eval loss is that of all their tokens together
    assert report["eval_loss"] == pytest.approx(sum(s for s, _ in sums) / sum(c for _, c in sums), abs=1e-4)
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    evals = [r for r in rows if "eval_loss" in r]
    assert evals[-1]["eval_wiki_loss"] == pytest.approx(by_name["wiki"]["eval_loss"], abs=1e-6)
    # evaluated before training too, per source
    assert evals[0]["step"] == 0
    assert evals[0]["eval_code_loss"] == pytest.approx(by_name["code"]["initial_eval_loss"], abs=1e-6)


def test_sft_mix_reports_each_sources_examples(cli, bpe_dir, llama_dir, tmp_path):
    def chats(path, n, word):
        rows = [{"messages": [{"role": "user", "content": f"{word} {i}?"},
                              {"role": "assistant", "content": f"{word} answer {i}."}]} for i in range(n)]
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
        return path

    a, b = chats(tmp_path / "a.jsonl", 6, "alpha"), chats(tmp_path / "b.jsonl", 3, "beta")
    result = cli("sft", "-m", llama_dir, "--data", f"{a},{b}", "-o", tmp_path / "run", "--max-steps", "1",
                 "--batch-size", "2", "--template", "chatml", "--json")
    assert result.exit_code == 0, result.stderr
    report = json.loads(result.stdout)
    mix = {m["source"]: m for m in report["data_mix"]}
    assert mix[str(a)]["rows"] == 6 and mix[str(b)]["rows"] == 3
    assert mix[str(a)]["tokens"] > mix[str(b)]["tokens"] > 0


@pytest.mark.parametrize("flag, value, message", [
    ("--data-revision", "v1", "--data-revision v1 applies to hub datasets"),
    ("--eval-data", "{docs}:0.5", "weights do not apply"),
])
def test_flags_that_cannot_apply_are_refused(cli, configs, bpe_dir, docs_file, tmp_path, flag, value, message):
    result = cli("pretrain", "--model", configs["llama"], "--from-scratch", "-t", bpe_dir, "--data", docs_file,
                 "-o", tmp_path / "run", flag, value.format(docs=docs_file))
    assert_clean_error(result, 2, message)
    assert not (tmp_path / "run").exists()
