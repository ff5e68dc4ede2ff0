"""SFT masks for chat templates that rewrite earlier turns (Qwen3, DeepSeek-R1), --eval-split by conversation with
--multi-turn expand, and special-token text inside messages encoded as text. Every expected id and label is built
here by hand from the template's strings and the tokenizer itself, not from llmkit's encoder."""

import json
import re

import pytest

from helpers import assert_clean_error


# Qwen3's template (tools left out): the reasoning of assistant turns before the last user message is stripped,
# and a reply after it is written with a <think> block (an empty one when the reply has no reasoning).
QWEN3 = """{%- if messages[0].role == 'system' %}
    {{- '<|im_start|>system\\n' + messages[0].content + '<|im_end|>\\n' }}
{%- endif %}
{%- set ns = namespace(multi_step_tool=true, last_query_index=messages|length - 1) %}
{%- for message in messages[::-1] %}
    {%- set index = (messages|length - 1) - loop.index0 %}
    {%- if ns.multi_step_tool and message.role == "user" and message.content is string and not(message.content.startswith('<tool_response>') and message.content.endswith('</tool_response>')) %}
        {%- set ns.multi_step_tool = false %}
        {%- set ns.last_query_index = index %}
    {%- endif %}
{%- endfor %}
{%- for message in messages %}
    {%- if message.content is string %}
        {%- set content = message.content %}
    {%- else %}
        {%- set content = '' %}
    {%- endif %}
    {%- if (message.role == "user") or (message.role == "system" and not loop.first) %}
        {{- '<|im_start|>' + message.role + '\\n' + content + '<|im_end|>' + '\\n' }}
    {%- elif message.role == "assistant" %}
        {%- set reasoning_content = '' %}
        {%- if message.reasoning_content is string %}
            {%- set reasoning_content = message.reasoning_content %}
        {%- else %}
            {%- if '</think>' in content %}
                {%- set reasoning_content = content.split('</think>')[0].rstrip('\\n').split('<think>')[-1].lstrip('\\n') %}
                {%- set content = content.split('</think>')[-1].lstrip('\\n') %}
            {%- endif %}
        {%- endif %}
        {%- if loop.index0 > ns.last_query_index %}
            {%- if loop.last or (not loop.last and reasoning_content) %}
                {{- '<|im_start|>' + message.role + '\\n<think>\\n' + reasoning_content.strip('\\n') + '\\n</think>\\n\\n' + content.lstrip('\\n') }}
            {%- else %}
                {{- '<|im_start|>' + message.role + '\\n' + content }}
            {%- endif %}
        {%- else %}
            {{- '<|im_start|>' + message.role + '\\n' + content }}
        {%- endif %}
        {{- '<|im_end|>\\n' }}
    {%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}
    {{- '<|im_start|>assistant\\n' }}
    {%- if enable_thinking is defined and enable_thinking is false %}
        {{- '<think>\\n\\n</think>\\n\\n' }}
    {%- endif %}
{%- endif %}"""

# DeepSeek-R1 style: everything up to </think> is dropped from past assistant turns.
DEEPSEEK_R1 = ("{{ bos_token }}{%- for message in messages %}"
               "{%- if message['role'] == 'system' %}{{ message['content'] }}"
               "{%- elif message['role'] == 'user' %}{{ '<｜User｜>' + message['content'] }}"
               "{%- elif message['role'] == 'assistant' %}{%- set content = message['content'] %}"
               "{%- if '</think>' in content and not loop.last %}{%- set content = content.split('</think>')[-1] %}"
               "{%- endif %}{{ '<｜Assistant｜>' + content + '<｜end▁of▁sentence｜>' }}"
               "{%- endif %}{%- endfor %}"
               "{%- if add_generation_prompt %}{{ '<｜Assistant｜>' }}{%- endif %}")

CHATML = ("{%- for m in messages -%}{{ '<|im_start|>' + m['role'] + '\\n' + m['content'] + '<|im_end|>\\n' }}"
          "{%- endfor -%}{%- if add_generation_prompt -%}{{ '<|im_start|>assistant\\n' }}{%- endif -%}")

SPECIAL = ("<|im_start|>", "<|im_end|>", "<｜User｜>", "<｜Assistant｜>", "<｜end▁of▁sentence｜>")
THINK = ("<think>", "</think>")   # added, not special, as in Qwen3's and DeepSeek-R1's tokenizers

CHAT = [{"role": "system", "content": "Be brief."},
        {"role": "user", "content": "What does for do?"},
        {"role": "assistant", "content": "<think>\nloops\n</think>\n\nIt repeats a block."},
        {"role": "user", "content": "And while?"},
        {"role": "assistant", "content": "<think>\ncondition\n</think>\n\nIt loops while true."}]
SYS = "<|im_start|>system\nBe brief.<|im_end|>\n"
USER1 = "<|im_start|>user\nWhat does for do?<|im_end|>\n"
USER2 = "<|im_start|>user\nAnd while?<|im_end|>\n"
PROMPT = "<|im_start|>assistant\n"
REPLY1 = "<think>\nloops\n</think>\n\nIt repeats a block.<|im_end|>\n"
PAST1 = "<|im_start|>assistant\nIt repeats a block.<|im_end|>\n"   # once a later user turn exists: no reasoning
REPLY2 = "<think>\ncondition\n</think>\n\nIt loops while true.<|im_end|>\n"


@pytest.fixture(scope="module")
def tok_dir(bpe_dir, tmp_path_factory):
    from tokenizers import AddedToken
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(bpe_dir)
    tokenizer.add_tokens([AddedToken(t, special=True, normalized=False) for t in SPECIAL], special_tokens=True)
    tokenizer.add_tokens([AddedToken(t, special=False, normalized=False) for t in THINK])
    tokenizer.pad_token = tokenizer.eos_token
    path = tmp_path_factory.mktemp("tok") / "chat-tok"
    tokenizer.save_pretrained(path)
    return path


@pytest.fixture
def tok(tok_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tok_dir)


def _ids(tok, text, split=False):
    return tok(text, add_special_tokens=False, split_special_tokens=split)["input_ids"]


def _expected(tok, *pieces):
    """(input_ids, labels) of texts alternating context, reply, context, reply...; the reference requires each
    piece to tokenize the same on its own as in the whole text, so the mask boundaries are unambiguous."""
    ids, labels = [], []
    for k, piece in enumerate(pieces):
        piece_ids = _ids(tok, piece)
        ids += piece_ids
        labels += piece_ids if k % 2 else [-100] * len(piece_ids)
    assert ids == _ids(tok, "".join(pieces))
    return ids, labels


def _encode(tok, rows, template, **fields):
    from llmkit.config import SFTConfig
    from llmkit.data import sft

    cfg = SFTConfig(model="m", data="d", preview=1, **fields)
    return sft.encode_records([{"messages": r} for r in rows], "messages", tok, "test", template, cfg, "data")


def _pairs(encoded):
    return [(e.input_ids, e.labels) for e in encoded.examples]


def _write(path, rows):
    path.write_text("".join(json.dumps({"messages": r}) + "\n" for r in rows), encoding="utf-8")
    return path


# ------------------------------------------------------------------------------------- templates that rewrite

def test_qwen3_every_mode_trains_each_reply_in_its_generation_context(tok):
    first = _expected(tok, SYS + USER1 + PROMPT, REPLY1)
    second = _expected(tok, SYS + USER1 + PAST1 + USER2 + PROMPT, REPLY2)
    assert tok.apply_chat_template(CHAT[:2], tokenize=False, chat_template=QWEN3, add_generation_prompt=True) == \
        SYS + USER1 + PROMPT   # the hand-written strings are what the template writes

    every = _encode(tok, [CHAT], QWEN3, multi_turn="all")
    assert _pairs(every) == [first, second]
    assert len(every.warnings) == 1 and "in 1 conversation(s) the chat template renders earlier turns differently" \
        in every.warnings[0] and "as --multi-turn expand" in every.warnings[0]
    expand = _encode(tok, [CHAT], QWEN3, multi_turn="expand")
    assert _pairs(expand) == [first, second] and not expand.warnings
    last = _encode(tok, [CHAT], QWEN3, multi_turn="last")
    assert _pairs(last) == [second] and not last.warnings
    # one reply: one rendering holds it, no warning; the <think> block the template adds is trained
    single = _encode(tok, [CHAT[:3]], QWEN3, multi_turn="all")
    assert _pairs(single) == [first] and not single.warnings
    assert every.end_token_id == tok.convert_tokens_to_ids("<|im_end|>")


def test_deepseek_r1_rewrites_only_conversations_with_past_reasoning(tok):
    bos = tok.bos_token
    thinking = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "<think>greet</think>Hello"},
                {"role": "user", "content": "Bye"}, {"role": "assistant", "content": "<think>part</think>Bye now"}]
    plain = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"},
             {"role": "user", "content": "Bye"}, {"role": "assistant", "content": "Bye now"}]
    end = "<｜end▁of▁sentence｜>"
    encoded = _encode(tok, [thinking, plain], DEEPSEEK_R1, multi_turn="all")
    assert _pairs(encoded) == [
        _expected(tok, f"{bos}<｜User｜>Hi<｜Assistant｜>", f"<think>greet</think>Hello{end}"),
        _expected(tok, f"{bos}<｜User｜>Hi<｜Assistant｜>Hello{end}<｜User｜>Bye<｜Assistant｜>",
                  f"<think>part</think>Bye now{end}"),
        # no reasoning to strip: one example with both replies, as for any prefix-stable template
        _expected(tok, f"{bos}<｜User｜>Hi<｜Assistant｜>", f"Hello{end}", "<｜User｜>Bye<｜Assistant｜>", f"Bye now{end}")]
    assert [e.row for e in encoded.examples] == [0, 0, 1]
    assert len(encoded.warnings) == 1 and "in 1 conversation(s)" in encoded.warnings[0]


def test_qwen3_through_the_cli_and_a_generation_prompt_the_reply_does_not_follow(cli, tok_dir, tok, tmp_path):
    qwen3 = tmp_path / "qwen3.jinja"
    qwen3.write_text(QWEN3, encoding="utf-8")
    data = _write(tmp_path / "chat.jsonl", [CHAT])
    for mode, expected in (("last", [(SYS + USER1 + PAST1 + USER2 + PROMPT, REPLY2)]),
                           ("all", [(SYS + USER1 + PROMPT, REPLY1), (SYS + USER1 + PAST1 + USER2 + PROMPT, REPLY2)])):
        result = cli("sft", "-m", tok_dir, "--data", data, "--chat-template", qwen3, "--multi-turn", mode,
                     "--preview", "2", "--json")
        assert result.exit_code == 0, result.stderr
        shown = [(e["input_ids"], e["labels"]) for e in json.loads(result.stdout)]
        assert shown == [_expected(tok, *pieces) for pieces in expected]
    # a generation prompt that is not how the template starts a reply: no exact mask exists, a clean error, and the
    # hint's --template chatml works on the same data
    forced = tmp_path / "forced.jinja"
    forced.write_text(CHATML.replace("'<|im_start|>assistant\\n' }}{%- endif", "'<|im_start|>assistant\\n<think>\\n' }}"
                                                                                 "{%- endif"), encoding="utf-8")
    no_reasoning = _write(tmp_path / "short.jsonl", [[CHAT[1], {"role": "assistant", "content": "It repeats."}]])
    failed = cli("sft", "-m", tok_dir, "--data", no_reasoning, "--chat-template", forced, "--preview", "1")
    assert_clean_error(failed, 1, "does not write the reply at row 1, message 2 after its own generation prompt",
                       "goes on '<think>\\n' but the rendered reply 'It repeats.", "--template chatml")
    hinted = cli("sft", "-m", tok_dir, "--data", no_reasoning, "--template", "chatml", "--preview", "1", "--json")
    assert hinted.exit_code == 0, hinted.stderr


# ------------------------------------------------------------------------------------------------- eval split

def test_eval_split_with_expand_holds_out_whole_conversations(tok):
    from llmkit.training.sft import split_conversations

    rows = [[m for turn in ("one", "two", "three") for m in
             ({"role": "user", "content": f"Question {i}: part {turn}?"},
              {"role": "assistant", "content": f"Answer {i}: part {turn}."})] for i in range(14)]
    encoded = _encode(tok, rows, CHATML, multi_turn="expand")
    assert len(encoded.examples) == 42
    train_indices, held_indices = split_conversations([e.row for e in encoded.examples], 0.3, seed=0)
    train, held = ([encoded.examples[i] for i in indices] for indices in (train_indices, held_indices))

    def conversations(examples):
        return {int(n) for e in examples for n in re.findall(r"Question (\d+):", tok.decode(e.input_ids))}

    held_out = conversations(held)
    assert len(held_out) == 4 and len(held) == 12 and len(train) == 30   # round(0.3 * 14) conversations, 3 replies
    assert not held_out & conversations(train)
    trained_text = " ".join(tok.decode(e.input_ids) for e in train)
    for i in held_out:
        assert f"Question {i}:" not in trained_text and f"Answer {i}:" not in trained_text


def test_sft_run_splits_conversations_before_expanding(cli, configs, bpe_dir, tmp_path):
    rows = [[m for k in range(3) for m in ({"role": "user", "content": f"Question {i} part {k}?"},
                                           {"role": "assistant", "content": f"Fine {k}."})] for i in range(6)]
    data = _write(tmp_path / "chat.jsonl", rows)
    result = cli("sft", "-m", configs["llama"], "--from-scratch", "-t", bpe_dir, "--data", data, "--template",
                 "chatml", "--multi-turn", "expand", "--eval-split", "2", "-o", tmp_path / "run", "--max-steps", "1",
                 "--batch-size", "2", "--json")
    assert result.exit_code == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["examples"] == 12 and report["eval_rows"] == 6   # 2 of 6 conversations, 3 replies each


# ------------------------------------------------------------------------------------- special text in content

def test_special_token_text_inside_messages_is_encoded_as_text(tok):
    start, end, eos = (tok.convert_tokens_to_ids(t) for t in ("<|im_start|>", "<|im_end|>", tok.eos_token))
    rows = [[{"role": "user", "content": "What is </s> for?"},
             {"role": "assistant", "content": "Type <|im_end|> to stop."}]]
    encoded = _encode(tok, rows, CHATML)
    # by hand: the template's markers are special tokens, the text between them is read with special tokens split
    context = ([start] + _ids(tok, "user\nWhat is </s> for?", split=True) + [end] + _ids(tok, "\n") + [start]
               + _ids(tok, "assistant\n", split=True))
    reply = _ids(tok, "Type <|im_end|> to stop.", split=True) + [end] + _ids(tok, "\n")
    assert _ids(tok, "assistant\nType <|im_end|> to stop.", split=True) == \
        _ids(tok, "assistant\n", split=True) + _ids(tok, "Type <|im_end|> to stop.", split=True)
    example = encoded.examples[0]
    assert example.input_ids == context + reply
    assert example.labels == [-100] * len(context) + reply
    # the special ids stand only where the template wrote its markers: two starts, two ends, no eos
    assert not {start, end, eos} & set(_ids(tok, "What is </s> for?Type <|im_end|> to stop.", split=True))
    assert (example.input_ids.count(start), example.input_ids.count(end), example.input_ids.count(eos)) == (2, 2, 0)
    assert encoded.special_text == [(0, 1, "</s>")]
    assert encoded.end_token_id == end   # the reply's own <|im_end|> text did not pass for its end token

    plain = ("{%- for m in messages -%}{%- if m['role'] == 'user' -%}{{ '### User:\\n' + m['content'] + '\\n\\n' }}"
             "{%- else -%}{{ '### Assistant:\\n' + m['content'] + eos_token + '\\n\\n' }}{%- endif -%}{%- endfor -%}"
             "{%- if add_generation_prompt -%}{{ '### Assistant:\\n' }}{%- endif -%}")
    rows = [[{"role": "user", "content": "Say </s>"}, {"role": "assistant", "content": "I said </s> once."}]]
    example = _encode(tok, rows, plain).examples[0]
    context = _ids(tok, "### User:\nSay </s>\n\n### Assistant:\n", split=True)
    reply = _ids(tok, "I said </s> once.", split=True) + [eos] + _ids(tok, "\n\n")
    assert _ids(tok, "### User:\nSay </s>\n\n### Assistant:\nI said </s> once.", split=True) == \
        context + reply[:-1 - len(_ids(tok, "\n\n"))]
    assert example.input_ids == context + reply and example.labels == [-100] * len(context) + reply
    assert example.input_ids.count(eos) == 1


def test_special_text_a_template_rewrites_is_refused(tok):
    from llmkit.errors import DataError

    rows = [[{"role": "user", "content": "Hi"},
             {"role": "assistant", "content": "<think>\nhmm\n</think>\n\nType <|im_end|> to stop."}]]
    with pytest.raises(DataError) as caught:
        _encode(tok, rows, QWEN3)
    assert "row 1, message 2 holds the text of the special token '<|im_end|>'" in caught.value.message
    assert "changes message contents" in caught.value.message and "remove" in caught.value.hint
    # the same reply without the special-token text trains
    rows[0][1]["content"] = "<think>\nhmm\n</think>\n\nType exit to stop."
    assert _encode(tok, rows, QWEN3).examples


def test_check_flags_special_text_inside_messages(cli, tok_dir, tmp_path):
    rows = [[{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello."}],
            [{"role": "user", "content": "How do I stop?"}, {"role": "assistant", "content": "Type <|im_end|>."}],
            [{"role": "user", "content": "And </s>?"}, {"role": "assistant", "content": "Also text."}]]
    data = _write(tmp_path / "chat.jsonl", rows)
    result = cli("sft", "-m", tok_dir, "--data", data, "--template", "chatml", "--check", "--json")
    assert result.exit_code == 0, result.stderr   # a warning: the text is encoded as text
    found = {f["check"]: f for f in json.loads(result.stdout)["findings"]}
    message = found["special_text"]["message"]
    assert found["special_text"]["level"] == "warning"
    assert message.startswith("2 conversation(s)") and f"{data} row 2, message 2 holds '<|im_end|>'" in message
    clean = _write(tmp_path / "clean.jsonl", rows[:1])
    found = json.loads(cli("sft", "-m", tok_dir, "--data", clean, "--template", "chatml", "--check", "--json").stdout)
    assert "special_text" not in {f["check"] for f in found["findings"]}
    human = cli("sft", "-m", tok_dir, "--data", data, "--template", "chatml", "--check")
    assert human.exit_code == 0 and "special_text" in human.stdout
