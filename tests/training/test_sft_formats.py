"""`llmkit sft` data formats beyond plain text messages: OpenAI content parts, TRL's conversational prompt/completion,
tool calls (OpenAI `tool_calls` + `tool` turns, sharegpt `function_call` / `observation`, a `tools` column) and a
sharegpt top-level `system` column. Each file is read by the real loader and encoder; every expected id and label is
built here from hand-written renderings and the tokenizer itself."""

import json

import pytest

from helpers import assert_clean_error

SYSTEM = "<|im_start|>system\nBe brief.<|im_end|>\n"
USER = "<|im_start|>user\nWhat does for do?<|im_end|>\n"
ASSISTANT = "<|im_start|>assistant\n"
END = "<|im_end|>\n"
WEATHER = {"type": "function", "function": {"name": "get_weather", "description": "Weather in a city",
                                            "parameters": {"type": "object",
                                                           "properties": {"city": {"type": "string"}}}}}
CALL_LINE = '<tool_call>{"name": "get_weather", "arguments": {"city": "Paris"}}</tool_call>'


@pytest.fixture
def tok(bpe_dir):
    from transformers import AutoTokenizer

    from llmkit.data import sft

    tokenizer = AutoTokenizer.from_pretrained(bpe_dir)
    sft.prepare_tokenizer(tokenizer, "chatml")
    return tokenizer


def _expected(tok, *pieces):
    """(input_ids, labels) of texts alternating context, reply, context, reply...; each piece must tokenize the
    same on its own as inside the whole text, so the reference's mask boundaries are unambiguous."""
    ids, labels = [], []
    for k, piece in enumerate(pieces):
        piece_ids = tok(piece, add_special_tokens=False)["input_ids"]
        ids += piece_ids
        labels += piece_ids if k % 2 else [-100] * len(piece_ids)
    assert ids == tok("".join(pieces), add_special_tokens=False)["input_ids"]
    return ids, labels


def _write(path, rows):
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return str(path)


def _encode_file(tok, path, template="chatml", **fields):
    from llmkit.config import SFTConfig
    from llmkit.data import sft

    cfg = SFTConfig(model="m", data=path, preview=1, **fields)
    return sft.encode_source(cfg, tok, template, sft.builtin_template(template), path)


def _pairs(encoded):
    return [(e.input_ids, e.labels) for e in encoded.examples]


def _parts(*texts):
    return [{"type": "text", "text": text} for text in texts]


# ------------------------------------------------------------------------------------------------ content parts

def test_content_parts_are_joined_in_order(tok, tmp_path):
    data = _write(tmp_path / "parts.jsonl", [
        {"messages": [{"role": "system", "content": "Be brief."},
                      {"role": "user", "content": _parts("What does ", "for do?")},
                      {"role": "assistant", "content": _parts("It repeats", " a block.")}]},
        {"messages": [{"role": "user", "content": _parts("What does for do?")},
                      {"role": "assistant", "content": [{"type": "text", "text": "It loops."}]}]}])
    assert _pairs(_encode_file(tok, data)) == [_expected(tok, SYSTEM + USER + ASSISTANT, "It repeats a block." + END),
                                               _expected(tok, USER + ASSISTANT, "It loops." + END)]


@pytest.mark.parametrize("part", [{"type": "image_url", "image_url": {"url": "https://x/cat.png"}},
                                  {"type": "input_audio", "input_audio": {"data": "AAAA", "format": "wav"}}])
def test_a_non_text_part_is_refused_naming_the_file_row_and_part(cli, bpe_dir, tmp_path, part):
    data = _write(tmp_path / "mm.jsonl", [
        {"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}]},
        {"messages": [{"role": "user", "content": [*_parts("What is this?"), part]},
                      {"role": "assistant", "content": "A cat."}]}])
    result = cli("sft", "-m", bpe_dir, "--data", data, "--template", "chatml", "--preview", "2")
    assert_clean_error(result, 1, f"mm.jsonl: row 2, message 1: content a '{part['type']}' part",
                       "only text parts can be trained", "Hint:")


# ----------------------------------------------------------------------------- TRL conversational prompt-completion

def test_conversational_prompt_completion_trains_only_the_completion(tok, tmp_path):
    prompt = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "What does for do?"},
              {"role": "assistant", "content": "It repeats a block."}, {"role": "user", "content": "And while?"}]
    data = _write(tmp_path / "pc.jsonl", [
        {"prompt": prompt, "completion": [{"role": "assistant", "content": "It loops while true."}]},
        {"prompt": "Say yes", "completion": "yes"}])   # TRL's plain prompt/completion strings, in the same file
    context = (SYSTEM + USER + ASSISTANT + "It repeats a block." + END + "<|im_start|>user\nAnd while?" + END
               + ASSISTANT)
    for multi_turn in ("all", "last", "expand"):
        assert _pairs(_encode_file(tok, data, multi_turn=multi_turn)) == [
            _expected(tok, context, "It loops while true." + END),
            _expected(tok, "<|im_start|>user\nSay yes" + END + ASSISTANT, "yes" + END)]


def test_sft_trains_content_parts_in_a_conversational_prompt_completion(cli, configs, bpe_dir, tok, tmp_path):
    rows = [{"prompt": [{"role": "user", "content": _parts(f"Count to {n}", ", please.")}],
             "completion": [{"role": "assistant", "content": _parts(*(f"{k} " for k in range(1, n + 1)))}]}
            for n in range(1, 5)]
    data = _write(tmp_path / "pc.jsonl", rows)
    expected = [_expected(tok, f"<|im_start|>user\nCount to {n}, please." + END + ASSISTANT,
                          "".join(f"{k} " for k in range(1, n + 1)) + END) for n in range(1, 5)]
    result = cli("sft", "-m", configs["llama"], "--from-scratch", "-t", bpe_dir, "--data", data, "--template",
                 "chatml", "-o", tmp_path / "run", "--max-steps", "1", "--batch-size", "4", "--json")
    assert result.exit_code == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["format"] == "prompt-completion" and report["examples"] == 4
    assert report["trained_tokens"] == sum(sum(label != -100 for label in labels) for _, labels in expected)
    preview = cli("sft", "-m", bpe_dir, "--data", data, "--template", "chatml", "--preview", "4", "--json")
    assert preview.exit_code == 0, preview.stderr
    assert [(e["input_ids"], e["labels"]) for e in json.loads(preview.stdout)] == expected


# ------------------------------------------------------------------------------------------------------ tool calls

def _tool_conversation(arguments):
    return [{"role": "user", "content": "Weather in Paris?"},
            {"role": "assistant", "content": None,
             "tool_calls": [{"id": "c1", "type": "function",
                             "function": {"name": "get_weather", "arguments": arguments}}]},
            {"role": "tool", "tool_call_id": "c1", "content": "18 C, sunny"},
            {"role": "assistant", "content": "It is 18 C and sunny."}]


def test_openai_tool_calls_train_the_calls_and_not_the_results(tok, tmp_path):
    data = _write(tmp_path / "tools.jsonl", [{"messages": _tool_conversation({"city": "Paris"}), "tools": [WEATHER]},
                                             {"messages": _tool_conversation('{"city": "Paris"}')}])  # OpenAI: a string
    tools = "<|im_start|>tools\n" + json.dumps(WEATHER) + "\n" + END
    body = ["<|im_start|>user\nWeather in Paris?" + END + ASSISTANT, CALL_LINE + END,
            "<|im_start|>tool\n18 C, sunny" + END + ASSISTANT, "It is 18 C and sunny." + END]
    assert _pairs(_encode_file(tok, data)) == [_expected(tok, tools + body[0], *body[1:]), _expected(tok, *body)]

    eos = tok.eos_token
    plain = ["### Tools:\n" + json.dumps(WEATHER) + "\n\n### User:\nWeather in Paris?\n\n### Assistant:\n",
             CALL_LINE + eos + "\n\n", "### Tool:\n18 C, sunny\n\n### Assistant:\n", "It is 18 C and sunny." + eos + "\n\n"]
    assert _pairs(_encode_file(tok, data, template="plain"))[0] == _expected(tok, *plain)


def test_sharegpt_function_call_observation_tools_and_system_columns(tok, tmp_path):
    call = json.dumps({"name": "get_weather", "arguments": {"city": "Paris"}})
    data = _write(tmp_path / "sharegpt.jsonl", [{
        "system": "Be brief.", "tools": json.dumps([WEATHER]),
        "conversations": [{"from": "human", "value": "Weather in Paris?"}, {"from": "function_call", "value": call},
                          {"from": "observation", "value": "18 C, sunny"},
                          {"from": "gpt", "value": "It is 18 C and sunny."}]}])
    assert _pairs(_encode_file(tok, data)) == [_expected(
        tok, "<|im_start|>tools\n" + json.dumps(WEATHER) + "\n" + END + SYSTEM + "<|im_start|>user\nWeather in Paris?"
        + END + ASSISTANT, CALL_LINE + END, "<|im_start|>tool\n18 C, sunny" + END + ASSISTANT,
        "It is 18 C and sunny." + END)]


# a template as many are: it knows user and assistant turns and silently skips anything else
NO_TOOLS = ("{%- for m in messages -%}{%- if m['role'] in ['user', 'assistant'] -%}"
            "{{ '<|im_start|>' + m['role'] + '\\n' + m['content'] + '<|im_end|>\\n' }}{%- endif -%}{%- endfor -%}"
            "{%- if add_generation_prompt -%}{{ '<|im_start|>assistant\\n' }}{%- endif -%}")


@pytest.mark.parametrize("tools, missing", [(None, "the tool call 'get_weather' in message 2 (and 1 more tool part(s))"),
                                            ([WEATHER], "the tool call 'get_weather' in message 2 (and 2 more")])
def test_a_template_that_leaves_tool_parts_out_is_refused(cli, bpe_dir, tmp_path, tools, missing):
    template = tmp_path / "no_tools.jinja"
    template.write_text(NO_TOOLS, encoding="utf-8")
    row = {"messages": _tool_conversation({"city": "Paris"}), **({"tools": tools} if tools else {})}
    data = _write(tmp_path / "tools.jsonl", [row])
    result = cli("sft", "-m", bpe_dir, "--data", data, "--chat-template", template, "--preview", "1")
    assert_clean_error(result, 1, f"tools.jsonl: row 1: the chat template leaves out {missing}",
                       "Hint: use a chat template that renders tools")


# ------------------------------------------------------------------------------------------ sharegpt system column

def test_sharegpt_system_column_becomes_the_system_message(tok, tmp_path):
    conversation = [{"from": "human", "value": "What does for do?"}, {"from": "gpt", "value": "It repeats a block."}]
    data = _write(tmp_path / "sharegpt.jsonl", [{"system": "Be brief.", "conversations": conversation},
                                                {"system": "", "conversations": conversation}])
    assert _pairs(_encode_file(tok, data)) == [_expected(tok, SYSTEM + USER + ASSISTANT, "It repeats a block." + END),
                                               _expected(tok, USER + ASSISTANT, "It repeats a block." + END)]
    clash = _write(tmp_path / "clash.jsonl", [{"system": "Be brief.", "conversations": [
        {"from": "system", "value": "Be long."}, *conversation]}])
    from llmkit.errors import DataError

    with pytest.raises(DataError, match="row 1: both the 'system' column and the first message give a system"):
        _encode_file(tok, clash)
