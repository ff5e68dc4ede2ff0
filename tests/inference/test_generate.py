"""`llmkit generate`: exactness against transformers' own generate(), each decoding parameter, batch = single,
chat history, encoder-decoder and fill-mask paths."""

import json

import pytest

from helpers import CHAT_TEMPLATE, load_causal, run_json

PROMPT = "The for statement is used to iterate"


@pytest.fixture(autouse=True)
def _one_thread():
    import torch

    torch.set_num_threads(1)


def _reference(path, prompt, **kwargs):
    import torch

    model, tok = load_causal(path)
    enc = tok(prompt, return_tensors="pt")
    with torch.inference_mode():
        out = model.generate(**enc, pad_token_id=tok.pad_token_id, **kwargs)
    ids = out[0, enc["input_ids"].shape[1]:].tolist()
    return ids, tok


def _ids_of(cli_result_text, tok):
    return tok(cli_result_text, add_special_tokens=False)["input_ids"]


def test_greedy_equals_model_generate_token_for_token(causal_dir):
    from llmkit.config import GenerateConfig
    from llmkit.inference.generator import Generator, run_prompt

    ref, _ = _reference(causal_dir, PROMPT, max_new_tokens=24, do_sample=False)
    result = run_prompt(GenerateConfig(model=str(causal_dir), prompt=PROMPT, max_new_tokens=24, do_sample=False),
                        Generator(GenerateConfig(model=str(causal_dir), prompt=PROMPT, max_new_tokens=24)))
    assert result.sequences[0].token_ids == ref
    assert len(set(ref)) > 3  # the fixture model does not just repeat one token


def test_cli_json_gives_continuation_counts_finish_reason_and_timings(cli, causal_dir):
    ref, tok = _reference(causal_dir, PROMPT, max_new_tokens=16, do_sample=False)
    out = run_json(cli, "--model", causal_dir, "--prompt", PROMPT, "--max-new-tokens", 16, "--greedy")
    assert out["text"] == tok.decode(ref, skip_special_tokens=True)
    assert not out["text"].startswith(PROMPT)
    assert out["prompt_tokens"] == len(tok(PROMPT)["input_ids"])
    assert out["completion_tokens"] == 16 and out["finish_reason"] == "length"
    timings = out["timings"]
    assert timings["time_to_first_token_s"] > 0 and timings["decode_tokens_per_s"] > 0
    assert timings["prefill_tokens_per_s"] > 0
    assert out["params"]["max_new_tokens"] == 16 and out["params"]["do_sample"] is False


def test_streamed_text_equals_result_text_and_stats_go_to_stderr(cli, causal_dir):
    streamed = cli("generate", "--model", causal_dir, "--prompt", PROMPT, "--max-new-tokens", 16)
    assert streamed.exit_code == 0, streamed.stderr
    as_json = run_json(cli, "--model", causal_dir, "--prompt", PROMPT, "--max-new-tokens", 16)
    assert streamed.stdout == as_json["text"] + "\n"
    assert "first token" in streamed.stderr and "decode" in streamed.stderr and "tok/s" in streamed.stderr
    assert "max_new_tokens=16" in streamed.stderr  # the values used are shown


def test_default_max_new_tokens_and_model_generation_config_defaults(cli, causal_dir, tmp_path):
    import shutil

    out = run_json(cli, "--model", causal_dir, "--prompt", "x")
    assert out["params"]["max_new_tokens"] == 32  # no max in the model's generation_config: llmkit's default,
    # 128, capped at half of this model's 64-token context
    model = tmp_path / "m"
    shutil.copytree(causal_dir, model)
    gc = json.loads((model / "generation_config.json").read_text())
    gc.update(max_new_tokens=7, do_sample=True, temperature=0.5, top_k=3)
    (model / "generation_config.json").write_text(json.dumps(gc))
    out = run_json(cli, "--model", model, "--prompt", "x", "--seed", 1)
    assert out["completion_tokens"] <= 7
    assert out["params"]["max_new_tokens"] == 7 and out["params"]["temperature"] == 0.5 and out["params"]["top_k"] == 3
    out = run_json(cli, "--model", model, "--prompt", "x", "--greedy", "--max-new-tokens", 5)
    assert out["params"]["do_sample"] is False and "temperature" not in out["params"]


def test_sampling_with_seed_is_reproducible_and_matches_transformers(cli, causal_dir):
    import torch

    args = ("--model", causal_dir, "--prompt", PROMPT, "--do-sample", "--temperature", 1.5, "--max-new-tokens", 20)
    a = run_json(cli, *args, "--seed", 7)
    b = run_json(cli, *args, "--seed", 7)
    c = run_json(cli, *args, "--seed", 8)
    assert a["text"] == b["text"] and a["text"] != c["text"]
    torch.manual_seed(7)
    ref, tok = _reference(causal_dir, PROMPT, max_new_tokens=20, do_sample=True, temperature=1.5)
    assert a["text"] == tok.decode(ref, skip_special_tokens=True)


def test_beam_search_equals_transformers_beam_search(cli, causal_dir):
    ref, tok = _reference(causal_dir, PROMPT, max_new_tokens=12, num_beams=3, do_sample=False, length_penalty=0.5,
                          no_repeat_ngram_size=2)
    out = run_json(cli, "--model", causal_dir, "--prompt", PROMPT, "--max-new-tokens", 12, "--num-beams", 3,
                   "--length-penalty", 0.5, "--no-repeat-ngram-size", 2)
    assert out["text"] == tok.decode(ref, skip_special_tokens=True)
    two = run_json(cli, "--model", causal_dir, "--prompt", PROMPT, "--max-new-tokens", 12, "--num-beams", 3,
                   "--length-penalty", 0.5, "--no-repeat-ngram-size", 2, "--num-return-sequences", 2)
    assert len(two["sequences"]) == 2 and two["sequences"][0]["text"] == out["text"]


def test_top_k_1_equals_greedy(cli, causal_dir):
    greedy = run_json(cli, "--model", causal_dir, "--prompt", PROMPT, "--max-new-tokens", 16, "--greedy")
    top1 = run_json(cli, "--model", causal_dir, "--prompt", PROMPT, "--max-new-tokens", 16, "--do-sample",
                    "--top-k", 1, "--seed", 3)
    assert top1["text"] == greedy["text"]


def test_repetition_penalty_lowers_repeats(causal_dir):
    from llmkit.config import GenerateConfig
    from llmkit.inference.generator import Generator

    def repeats(**kw):
        cfg = GenerateConfig(model=str(causal_dir), prompt=PROMPT, max_new_tokens=40, **kw)
        ids = Generator(cfg).complete(PROMPT).sequences[0].token_ids
        return len(ids) - len(set(ids))

    assert repeats(repetition_penalty=3.0) < repeats()


def test_min_new_tokens_holds_back_eos(cli, causal_dir, tmp_path):
    import shutil

    first = run_json(cli, "--model", causal_dir, "--prompt", PROMPT, "--max-new-tokens", 1)
    _, tok = load_causal(causal_dir)
    first_id = tok(first["text"], add_special_tokens=False)["input_ids"][0]
    model = tmp_path / "eos-first"
    shutil.copytree(causal_dir, model)
    gc = json.loads((model / "generation_config.json").read_text())
    gc["eos_token_id"] = first_id  # the model's first greedy token is now its eos
    (model / "generation_config.json").write_text(json.dumps(gc))
    plain = run_json(cli, "--model", model, "--prompt", PROMPT, "--max-new-tokens", 10)
    assert plain["completion_tokens"] == 0 and plain["finish_reason"] == "eos" and plain["text"] == ""
    held = run_json(cli, "--model", model, "--prompt", PROMPT, "--max-new-tokens", 10, "--min-new-tokens", 6)
    assert held["completion_tokens"] >= 6


def test_stop_strings_cut_the_output(cli, causal_dir):
    full = run_json(cli, "--model", causal_dir, "--prompt", PROMPT, "--max-new-tokens", 24)
    text = full["text"]
    stop = text[len(text) // 2: len(text) // 2 + 3]
    assert stop.strip()
    out = run_json(cli, "--model", causal_dir, "--prompt", PROMPT, "--max-new-tokens", 24, "--stop", stop,
                   "--stop", "\u2603never")
    assert out["text"] == text[:text.find(stop)]
    assert out["finish_reason"] == "stop_string" and out["completion_tokens"] < 24
    streamed = cli("generate", "--model", causal_dir, "--prompt", PROMPT, "--max-new-tokens", 24, "--stop", stop)
    assert streamed.stdout == out["text"] + "\n"  # the stream never shows the stop string


def test_batch_equals_single_prompt_per_line(cli, causal_dir, tmp_path):
    prompts = ["The for statement", "A", "Names are bound by assignment, import and function definitions", "x = 1",
               "The with statement is used to wrap the execution of a block"]
    source = tmp_path / "in.jsonl"
    source.write_text("".join(json.dumps({"id": f"p{i}", "prompt": p}) + "\n" for i, p in enumerate(prompts)))
    target = tmp_path / "out.jsonl"
    summary = run_json(cli, "--model", causal_dir, "--input", source, "--output", target, "--batch-size", 3,
                       "--max-new-tokens", 12)
    assert summary["generated"] == 5 and summary["skipped"] == 0
    rows = [json.loads(line) for line in target.read_text().splitlines()]
    assert [r["id"] for r in rows] == [f"p{i}" for i in range(5)] and [r["line"] for r in rows] == [1, 2, 3, 4, 5]
    _, tok = load_causal(causal_dir)
    for prompt, row in zip(prompts, rows):
        single = run_json(cli, "--model", causal_dir, "--prompt", prompt, "--max-new-tokens", 12)
        assert row["text"] == single["text"], prompt
        assert row["completion_tokens"] == single["completion_tokens"] and row["finish_reason"] == "length"
        assert "<pad>" not in row["text"] and "</s>" not in row["text"]
        assert row["prompt_tokens"] == len(tok(prompt)["input_ids"])


def test_batch_is_resumable(cli, causal_dir, tmp_path):
    source = tmp_path / "in.jsonl"
    source.write_text("".join(json.dumps({"prompt": f"Prompt number {i}"}) + "\n" for i in range(4)))
    target = tmp_path / "out.jsonl"
    run_json(cli, "--model", causal_dir, "--input", source, "--output", target, "--max-new-tokens", 4)
    lines = target.read_text().splitlines()
    target.write_text(lines[0] + "\n" + lines[1] + "\n" + lines[2][:10])  # a run cut while writing line 3
    summary = run_json(cli, "--model", causal_dir, "--input", source, "--output", target, "--max-new-tokens", 4)
    assert summary["skipped"] == 2 and summary["generated"] == 2
    assert target.read_text().splitlines() == lines


def test_batch_messages_lines_use_the_chat_template(cli, chat_dir, tmp_path):
    source = tmp_path / "in.jsonl"
    source.write_text(json.dumps({"messages": [{"role": "user", "content": "Hello"}]}) + "\n"
                      + json.dumps({"prompt": "Hello"}) + "\n")
    target = tmp_path / "out.jsonl"
    run_json(cli, "--model", chat_dir, "--input", source, "--output", target, "--max-new-tokens", 6)
    rows = [json.loads(line) for line in target.read_text().splitlines()]
    single = run_json(cli, "--model", chat_dir, "--message", "Hello", "--max-new-tokens", 6)
    assert rows[0]["text"] == single["text"]
    assert rows[0]["prompt_tokens"] == single["prompt_tokens"] > rows[1]["prompt_tokens"]


def test_message_renders_the_chat_template_with_system(chat_dir):
    from transformers import AutoTokenizer

    from llmkit.config import GenerateConfig
    from llmkit.inference.generator import Generator, run_prompt

    cfg = GenerateConfig(model=str(chat_dir), message="Hi", system="Be brief.", max_new_tokens=4)
    result = run_prompt(cfg, Generator(cfg))
    tok = AutoTokenizer.from_pretrained(chat_dir)
    assert result.prompt == tok.apply_chat_template([{"role": "system", "content": "Be brief."},
                                                     {"role": "user", "content": "Hi"}],
                                                    tokenize=False, add_generation_prompt=True)
    assert result.prompt == "<|system|>Be brief.</s><|user|>Hi</s><|assistant|>"


def test_chat_template_file_overrides(causal_dir, tmp_path):
    from llmkit.config import GenerateConfig
    from llmkit.inference.generator import Generator, run_prompt

    template = tmp_path / "t.jinja"
    template.write_text("{% for m in messages %}[{{ m['content'] }}]{% endfor %}")
    cfg = GenerateConfig(model=str(causal_dir), message="Hi", chat_template=str(template), max_new_tokens=2)
    assert run_prompt(cfg, Generator(cfg)).prompt == "[Hi]"


def test_chat_second_turn_prompt_holds_the_first_exchange(cli, chat_dir, tmp_path):
    from transformers import AutoTokenizer

    saved = tmp_path / "chat.json"
    result = cli("generate", "--model", chat_dir, "--chat", "--system", "Be brief.", "--max-new-tokens", 8, "--json",
                 input=f"Hello there\n/bogus\nWhat next?\n/save {saved}\n")
    assert result.exit_code == 0, (result.stderr, result.exception)
    out = json.loads(result.stdout)
    first, second = out["turns"]
    tok = AutoTokenizer.from_pretrained(chat_dir)
    exchange = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hello there"},
                {"role": "assistant", "content": first["text"]}]
    rendered = tok.apply_chat_template(exchange, tokenize=False)
    assert second["prompt"].startswith(rendered)
    assert second["prompt"] == tok.apply_chat_template(exchange + [{"role": "user", "content": "What next?"}],
                                                       tokenize=False, add_generation_prompt=True)
    assert "unknown command /bogus" in result.stderr and "/reset" in result.stderr  # help line, chat went on
    assert json.loads(saved.read_text())["messages"] == exchange + [
        {"role": "user", "content": "What next?"}, {"role": "assistant", "content": second["text"]}]
    assert CHAT_TEMPLATE  # the template the fixture saved


def test_chat_commands(cli, chat_dir):
    result = cli("generate", "--model", chat_dir, "--chat", "--max-new-tokens", 4, "--json",
                 input="/set temperature=0.7 do_sample=true top_p=0.9\n/params\n/set top_p=2\nHi\n/reset\n"
                       "/system Speak French.\nHi\n/exit\nnever read\n")
    assert result.exit_code == 0, result.stderr
    out = json.loads(result.stdout)
    assert "temperature=0.7" in result.stderr and "top_p=0.9" in result.stderr
    assert "--top-p" in result.stderr  # the bad /set is refused with the flag's rule; the chat goes on
    assert out["params"]["temperature"] == 0.7 and out["params"]["top_p"] == 0.9
    assert len(out["turns"]) == 2
    assert out["turns"][1]["prompt"] == "<|system|>Speak French.</s><|user|>Hi</s><|assistant|>"
    assert out["messages"][0] == {"role": "system", "content": "Speak French."}


def test_chat_streams_answers_in_human_mode(cli, chat_dir):
    result = cli("generate", "--model", chat_dir, "--chat", "--max-new-tokens", 4, input="Hi\n")
    assert result.exit_code == 0, result.stderr
    assert "tokens" in result.stderr
    single = run_json(cli, "--model", chat_dir, "--message", "Hi", "--max-new-tokens", 4)
    assert result.stdout == single["text"] + "\n"


def test_chat_ctrl_c_stops_the_answer_only(chat_dir):
    import threading

    from llmkit.config import GenerateConfig
    from llmkit.inference.chat import ChatSession
    from llmkit.inference.generator import Generator

    session = ChatSession(Generator(GenerateConfig(model=str(chat_dir), chat=True, max_new_tokens=30)))
    stop = threading.Event()
    chunks = []

    def on_text(chunk):
        chunks.append(chunk)
        if len(chunks) == 3:
            stop.set()  # what the SIGINT handler does

    reply = session.handle("Hi", on_text=on_text, stop_event=stop)
    assert reply.turn.finish_reason == "interrupted" and reply.turn.completion_tokens < 30
    assert session.handle("Again").kind == "answer" and len(session.turns) == 2


def test_adapter_generates_like_the_peft_model(cli, causal_dir, tmp_path):
    import torch
    from peft import LoraConfig, get_peft_model

    model, tok = load_causal(causal_dir)
    peft_model = get_peft_model(model, LoraConfig(r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False))
    adapter = tmp_path / "adapter"
    peft_model.save_pretrained(adapter)
    assert json.loads((adapter / "adapter_config.json").read_text())["base_model_name_or_path"] == str(causal_dir)
    enc = tok(PROMPT, return_tensors="pt")
    with torch.inference_mode():
        ref = peft_model.generate(**enc, max_new_tokens=10, do_sample=False, pad_token_id=2)
    out = run_json(cli, "--model", causal_dir, "--adapter", adapter, "--prompt", PROMPT, "--max-new-tokens", 10)
    assert out["text"] == tok.decode(ref[0, enc["input_ids"].shape[1]:], skip_special_tokens=True)
    base = run_json(cli, "--model", causal_dir, "--prompt", PROMPT, "--max-new-tokens", 10)
    assert base["text"] != out["text"]
    no_model = run_json(cli, "--adapter", adapter, "--prompt", PROMPT, "--max-new-tokens", 10)  # base from adapter
    assert no_model["text"] == out["text"]


def test_t5_summarization_equals_model_generate(cli, t5_dir):
    import torch
    from transformers import AutoModelForSeq2SeqLM, AutoTokenizer

    text = "The for statement is used to iterate over the elements of a sequence such as a string or list."
    out = run_json(cli, "--model", t5_dir, "--prompt", text, "--max-new-tokens", 12)
    assert out["task"] == "summarization"
    model, tok = AutoModelForSeq2SeqLM.from_pretrained(t5_dir).eval(), AutoTokenizer.from_pretrained(t5_dir)
    enc = tok("summarize: " + text, return_tensors="pt")  # the task prefix from task_specific_params
    with torch.inference_mode():
        ref = model.generate(**enc, max_new_tokens=12, do_sample=False)
    assert out["text"] == tok.decode(ref[0, 1:], skip_special_tokens=True)
    assert out["prompt_tokens"] == enc["input_ids"].shape[1]
    beams = run_json(cli, "--model", t5_dir, "--task", "translation", "--prompt", text, "--num-beams", 2,
                     "--max-new-tokens", 6)
    assert beams["task"] == "translation"


def test_t5_batch_equals_single(cli, t5_dir, tmp_path):
    prompts = ["Short one.", "A much longer input sentence about the for statement and its else clause."]
    source = tmp_path / "in.jsonl"
    source.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in prompts))
    target = tmp_path / "out.jsonl"
    run_json(cli, "--model", t5_dir, "--input", source, "--output", target, "--max-new-tokens", 8)
    rows = [json.loads(line) for line in target.read_text().splitlines()]
    for prompt, row in zip(prompts, rows):
        assert row["text"] == run_json(cli, "--model", t5_dir, "--prompt", prompt, "--max-new-tokens", 8)["text"]


def test_bert_fill_mask_gives_top_k_candidates_per_mask(cli, bert_dir):
    import torch
    from transformers import AutoModelForMaskedLM, AutoTokenizer

    text = "the for statement is used to [MASK] over the [MASK] of a sequence"
    out = run_json(cli, "--model", bert_dir, "--prompt", text, "--top-k", 3)
    assert out["task"] == "fill-mask" and len(out["masks"]) == 2
    model, tok = AutoModelForMaskedLM.from_pretrained(bert_dir).eval(), AutoTokenizer.from_pretrained(bert_dir)
    enc = tok(text, return_tensors="pt")
    with torch.inference_mode():
        logits = model(**enc).logits[0]
    positions = (enc["input_ids"][0] == tok.mask_token_id).nonzero().flatten().tolist()
    for pos, candidates in zip(positions, out["masks"]):
        probs = logits[pos].softmax(-1)
        top = probs.topk(3)
        assert [c["token_id"] for c in candidates] == top.indices.tolist()
        assert [c["score"] for c in candidates] == pytest.approx(top.values.tolist(), abs=1e-5)
        assert all(c["token"] == tok.decode([c["token_id"]]).strip() for c in candidates)
    human = cli("generate", "--model", bert_dir, "--prompt", text)
    assert human.exit_code == 0 and "mask 1 of 2" in human.stdout


def test_quickstart_generate_stage(causal_dir, tmp_path):
    from llmkit.quickstart import _stage_generate
    from llmkit.ui import SilentReporter

    stage = _stage_generate(tmp_path, causal_dir, ["The for statement", "A class"], SilentReporter())
    samples = stage.summary["samples"]
    assert stage.name == "generate" and len(samples) == 2
    assert all(s["greedy"] and s["sampled"] for s in samples)
    assert stage.summary["greedy"]["do_sample"] is False and stage.summary["sampled"]["do_sample"] is True
    assert json.loads((tmp_path / "generations.json").read_text()) == samples


@pytest.mark.parametrize("flag, layer", [("--load-in-8bit", "Linear8bitLt"), ("--load-in-4bit", "Linear4bit")])
def test_bitsandbytes_loading_generates(cli, bpe_dir, tmp_path, flag, layer):
    from llmkit.config import GenerateConfig
    from llmkit.inference.generator import Generator
    from llmkit.modeling import build_model, load_tokenizer

    tok = load_tokenizer(str(bpe_dir))  # 4-bit on CPU needs feature sizes that are multiples of its blocks
    model = build_model("qwen2.5-0.5b", vocab_size=len(tok), seed=0, overrides=dict(
        num_hidden_layers=1, hidden_size=128, intermediate_size=256, num_attention_heads=4, num_key_value_heads=2,
        bos_token_id=0, eos_token_id=1, pad_token_id=2, tie_word_embeddings=False))
    model.save_pretrained(tmp_path / "m")
    tok.save_pretrained(tmp_path / "m")
    out = run_json(cli, "--model", tmp_path / "m", "--prompt", PROMPT, "--max-new-tokens", 4, flag)
    assert out["completion_tokens"] == 4
    cfg = GenerateConfig(model=str(tmp_path / "m"), prompt="x", **{flag[2:].replace("-", "_"): True})
    names = {type(m).__name__ for m in Generator(cfg).model.modules()}
    assert layer in names
