"""`llmkit tokenize stats --data SPEC`: each source's detected format and its first example as training sees it
(the chat formats through the chat template, the trained part marked); bad specs exit 2, missing data 1."""

import gzip
import json

import pytest

USER, REPLY = "What does a for loop do?", "It iterates over a sequence."
CHAT = [{"role": "user", "content": USER}, {"role": "assistant", "content": REPLY}]
RECORDS = {
    "messages.jsonl": {"messages": CHAT},
    "sharegpt.jsonl": {"conversations": [{"from": "human", "value": USER}, {"from": "gpt", "value": REPLY}]},
    "alpaca.jsonl": {"instruction": USER, "input": "", "output": REPLY},
    "pc.jsonl": {"prompt": USER, "completion": REPLY},
    "trl.jsonl": {"prompt": CHAT[:1], "completion": CHAT[1:]},
}
FORMATS = {"messages.jsonl": "messages", "sharegpt.jsonl": "sharegpt", "alpaca.jsonl": "alpaca",
           "pc.jsonl": "prompt-completion", "trl.jsonl": "conversational-prompt-completion"}


@pytest.fixture
def chat_sources(tmp_path):
    for name, record in RECORDS.items():
        (tmp_path / name).write_text(json.dumps(record) + "\n")
    return tmp_path


def _stats(cli, tokenizer, spec, *extra):
    result = cli("tokenize", "stats", "-t", tokenizer, "--data", spec, "--json", *extra)
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def test_every_chat_format_is_detected_and_rendered_through_the_chat_template(cli, bpe_dir, chat_sources):
    from transformers import AutoTokenizer

    from llmkit.data.sft import builtin_template

    spec = ",".join(str(chat_sources / name) for name in RECORDS)
    document = _stats(cli, bpe_dir, spec)
    reference = AutoTokenizer.from_pretrained(bpe_dir).apply_chat_template(
        CHAT, chat_template=builtin_template("chatml"), tokenize=False)   # bpe_dir has no template: chatml
    for preview, name in zip(document["sources"], RECORDS):
        assert preview["format"] == FORMATS[name]
        assert preview["template"] == "chatml"
        assert "".join(p["text"] for p in preview["example"]) == reference
        trained = "".join(p["text"] for p in preview["example"] if p["trained"])
        assert trained.startswith(REPLY) and USER not in trained
    assert document["stats"]["documents"] == len(RECORDS)


def test_tool_calls_and_plain_text_and_pretokenized(cli, bpe_dir, tmp_path, corpus_texts):
    import datasets

    tools = {"messages": [{"role": "user", "content": "Weather in Paris?"},
                          {"role": "assistant", "content": "", "tool_calls": [
                              {"type": "function", "function": {"name": "get_weather", "arguments": {"city": "Paris"}}}]},
                          {"role": "tool", "content": "sunny"}, {"role": "assistant", "content": "Sunny."}]}
    (tmp_path / "tools.jsonl").write_text(json.dumps(tools) + "\n")
    texts = corpus_texts[:4]
    (tmp_path / "text.jsonl.gz").write_bytes(gzip.compress("\n".join(json.dumps({"text": t}) for t in texts).encode()))
    datasets.Dataset.from_dict({"input_ids": [[5, 6, 7], [8]]}).save_to_disk(str(tmp_path / "ids"))
    document = _stats(cli, bpe_dir, f"{tmp_path / 'tools.jsonl'},{tmp_path / 'text.jsonl.gz'},{tmp_path / 'ids'}")
    tool, text, ids = document["sources"]
    assert tool["format"] == "tool-calls" and "get_weather" in "".join(p["text"] for p in tool["example"])
    from tokenizers import Tokenizer

    backend = Tokenizer.from_file(str(bpe_dir / "tokenizer.json"))
    assert text["format"] == "text" and text["example"] == [{"text": texts[0], "trained": True}]
    assert text["example_tokens"] == len(backend.encode(texts[0]).ids)
    assert ids["format"] == "input_ids" and ids["example"][0]["text"] == backend.decode([5, 6, 7],
                                                                                         skip_special_tokens=False)


def test_a_text_only_spec_keeps_the_statistics(cli, bpe_dir, tmp_path, corpus_texts):
    from tokenizers import Tokenizer

    texts = corpus_texts[:10]
    (tmp_path / "a.jsonl").write_text("\n".join(json.dumps({"text": t}) for t in texts[:6]))
    (tmp_path / "b.jsonl").write_text("\n".join(json.dumps({"text": t}) for t in texts[6:]))
    document = _stats(cli, bpe_dir, f"{tmp_path / 'a.jsonl'},{tmp_path / 'b.jsonl'}")
    backend = Tokenizer.from_file(str(bpe_dir / "tokenizer.json"))
    assert document["stats"]["tokens"] == sum(len(backend.encode(t).ids) for t in texts)
    assert [p["records"] for p in document["sources"]] == [6, 4]


@pytest.mark.parametrize("spec,code,message", [
    ("{d}/a.jsonl:-1,{d}/b.jsonl:1", 2, "greater than 0"),
    ("{d}/a.jsonl:0.5x,{d}/b.jsonl:1", 2, "is not a number"),
    ("{d}/*.parquet", 1, "matches no file"),
    ("{d}/a.jsonl,{d}/missing.jsonl.zst", 1, "no such file or directory"),
])
def test_bad_specs_are_one_error_line(cli, bpe_dir, tmp_path, spec, code, message):
    (tmp_path / "a.jsonl").write_text('{"text": "x"}\n')
    result = cli("tokenize", "stats", "-t", bpe_dir, "--data", spec.format(d=tmp_path))
    assert result.exit_code == code, result.output
    assert message in result.stderr and "Traceback" not in result.output
    assert result.stderr.startswith("Error: ")
