"""`llmkit sft`: exact label masks (formats, templates, multi-turn modes), eos trained with pad == eos, truncation,
packed = unpacked loss, --preview/--check, bad input, training end to end and the generate round trip."""

import json

import pytest
import torch

from helpers import TINY_LLAMA, assert_clean_error


CHAT = [{"role": "system", "content": "Be brief."},
        {"role": "user", "content": "What does for do?"},
        {"role": "assistant", "content": "It repeats a block."},
        {"role": "user", "content": "And while?"},
        {"role": "assistant", "content": "It loops while true."}]
END = {"chatml": "<|im_end|>\n", "plain": "</s>\n\n"}


def _cfg(**fields):
    from llmkit.config import SFTConfig

    return SFTConfig(**{"model": "m", "data": "d", "preview": 1, **fields})


def _tok(bpe_dir, template="chatml"):
    from transformers import AutoTokenizer

    from llmkit.data import sft

    tokenizer = AutoTokenizer.from_pretrained(bpe_dir)
    sft.prepare_tokenizer(tokenizer, template)
    return tokenizer


def _encode(bpe_dir, records, fmt="messages", template="chatml", tokenizer=None, **fields):
    from llmkit.data import sft

    tokenizer = tokenizer or _tok(bpe_dir, template)
    text = sft.builtin_template(template)
    return sft.encode_records(records, fmt, tokenizer, template, text, _cfg(**fields), "test"), tokenizer


def _trained_runs(example, tokenizer):
    """The decoded text of each run of consecutive trained tokens; also checks labels == ids where trained."""
    runs, current = [], []
    for token, label in zip(example.input_ids, example.labels):
        assert label in (-100, token)
        if label != -100:
            current.append(token)
        elif current:
            runs.append(tokenizer.decode(current))
            current = []
    if current:
        runs.append(tokenizer.decode(current))
    return runs


# ------------------------------------------------------------------------------------------------ exact masks

@pytest.mark.parametrize("template", ["chatml", "plain"])
def test_multi_turn_masks_in_all_three_modes(bpe_dir, template):
    end = END[template]
    encoded, tok = _encode(bpe_dir, [{"messages": CHAT}], template=template, multi_turn="all")
    assert len(encoded.examples) == 1
    assert _trained_runs(encoded.examples[0], tok) == [f"It repeats a block.{end}", f"It loops while true.{end}"]

    encoded, tok = _encode(bpe_dir, [{"messages": CHAT}], template=template, multi_turn="last")
    assert [_trained_runs(e, tok) for e in encoded.examples] == [[f"It loops while true.{end}"]]
    full = encoded.examples[0].input_ids

    encoded, tok = _encode(bpe_dir, [{"messages": CHAT}], template=template, multi_turn="expand")
    assert [_trained_runs(e, tok) for e in encoded.examples] == [[f"It repeats a block.{end}"],
                                                                  [f"It loops while true.{end}"]]
    first, second = encoded.examples
    assert second.input_ids == full and full[:len(first.input_ids)] == first.input_ids
    assert tok.decode(first.input_ids).endswith(f"It repeats a block.{end}")


@pytest.mark.parametrize("template", ["chatml", "plain"])
def test_single_turn_formats(bpe_dir, template):
    end = END[template]
    records = [{"instruction": "Name a loop", "input": "in Python", "output": "for", "system": "Be brief.",
                "history": [["Hi", "Hello"]]}]
    encoded, tok = _encode(bpe_dir, records, fmt="alpaca", template=template)
    assert _trained_runs(encoded.examples[0], tok) == [f"Hello{end}", f"for{end}"]
    text = tok.decode(encoded.examples[0].input_ids)
    assert "Be brief." in text and "Name a loop\n\nin Python" in text

    encoded, tok = _encode(bpe_dir, [{"prompt": "Say yes", "completion": "yes"}], fmt="prompt-completion",
                           template=template)
    assert _trained_runs(encoded.examples[0], tok) == [f"yes{end}"]
    sharegpt = [{"conversations": [{"from": "human", "value": "Say no"}, {"from": "gpt", "value": "no"}]}]
    encoded, tok = _encode(bpe_dir, sharegpt, template=template)
    assert _trained_runs(encoded.examples[0], tok) == [f"no{end}"]


def test_train_on_prompt_trains_every_token(bpe_dir):
    encoded, _ = _encode(bpe_dir, [{"messages": CHAT}], train_on_prompt=True)
    assert encoded.examples[0].labels == encoded.examples[0].input_ids


def test_eos_is_trained_when_pad_equals_eos(bpe_dir):
    from llmkit.training.sft import SFTCollator

    tok = _tok(bpe_dir, "plain")
    tok.pad_token = tok.eos_token
    records = [{"prompt": "Say yes", "completion": "yes"}, {"prompt": "Say a longer thing", "completion": "a b c d"}]
    encoded, _ = _encode(bpe_dir, records, fmt="prompt-completion", template="plain", tokenizer=tok)
    batch = SFTCollator(tok.pad_token_id)([{"input_ids": e.input_ids, "labels": e.labels} for e in encoded.examples])
    eos = tok.eos_token_id
    for row, example in enumerate(encoded.examples):
        n = len(example.input_ids)
        trained_eos = [i for i in range(n) if batch["labels"][row, i] == eos]
        assert len(trained_eos) == 1 and example.input_ids[trained_eos[0]] == eos
        assert (batch["labels"][row, n:] == -100).all() and (batch["attention_mask"][row, n:] == 0).all()
    assert (batch["input_ids"][0, len(encoded.examples[0].input_ids):] == eos).all()   # padded with eos, not trained


def test_truncation_keeps_masks_aligned(bpe_dir):
    full, tok = _encode(bpe_dir, [{"messages": CHAT}], seq_len=512)
    cut_at = len(full.examples[0].input_ids) - 3
    short, _ = _encode(bpe_dir, [{"messages": CHAT}], seq_len=cut_at)
    assert short.truncated == 1
    assert short.examples[0].input_ids == full.examples[0].input_ids[:cut_at]
    assert short.examples[0].labels == full.examples[0].labels[:cut_at]
    # answers entirely past --seq-len: dropped and counted
    none, _ = _encode(bpe_dir, [{"messages": CHAT}], seq_len=8)
    assert not none.examples and none.dropped == {"every answer token cut by --seq-len": 1}


def test_examples_without_trained_token_are_dropped_and_counted(bpe_dir):
    records = [{"messages": [{"role": "user", "content": "hi"}]}, {"messages": CHAT[1:3]}]
    encoded, _ = _encode(bpe_dir, records)
    assert len(encoded.examples) == 1 and encoded.dropped == {"no assistant reply": 1}


def test_packed_loss_equals_unpacked(bpe_dir):
    from llmkit.data import sft
    from llmkit.modeling import build_model
    from llmkit.training.objectives import token_loss
    from llmkit.training.sft import PackedSFTCollator, SFTCollator

    records = [{"messages": CHAT}, {"messages": CHAT[1:3]}, {"prompt": "Say yes", "completion": "yes"}]
    tok = _tok(bpe_dir)
    examples = []
    for record in records:
        fmt = "messages" if "messages" in record else "prompt-completion"
        examples += _encode(bpe_dir, [record], fmt=fmt, tokenizer=tok, train_on_prompt=True)[0].examples
    model = build_model(dict(TINY_LLAMA), "causal-lm", vocab_size=len(tok), seed=0)
    model.eval()
    padded = SFTCollator(tok.pad_token_id)([{"input_ids": e.input_ids, "labels": e.labels} for e in examples])
    padded.pop("num_tokens")
    labels = padded.pop("labels")
    unpacked = token_loss(model(**padded).logits, labels, True)
    blocks = sft.pack_examples(examples, 4096)
    assert len(blocks) == 1
    packed = PackedSFTCollator(tok.pad_token_id)(blocks)
    packed.pop("num_tokens")
    labels = packed.pop("labels")
    assert labels.ne(-100).sum() == sum(e.trained - 1 for e in examples)   # the first token is never a target
    assert torch.allclose(token_loss(model(**packed).logits, labels, True), unpacked, atol=1e-5)
    # and the cross-example mask matters: without restarting positions the loss differs
    wrong = token_loss(model(input_ids=packed["input_ids"]).logits, labels, True)
    assert not torch.allclose(wrong, unpacked, atol=1e-4)
    # several blocks of different lengths in one batch (the short one topped up with a padding segment)
    longest = max(len(e.input_ids) for e in examples)
    blocks = sft.pack_examples(examples, longest + 2)
    assert len(blocks) >= 2 and len({len(b["input_ids"]) for b in blocks}) > 1
    packed = PackedSFTCollator(tok.pad_token_id)(blocks)
    packed.pop("num_tokens")
    labels = packed.pop("labels")
    assert torch.allclose(token_loss(model(**packed).logits, labels, True), unpacked, atol=1e-5)


# ----------------------------------------------------------------------------------------------------------- CLI

def _write(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def test_preview_json_lists_input_ids_and_labels(cli, bpe_dir, chat_file, tmp_path):
    result = cli("sft", "-m", bpe_dir, "--data", chat_file, "--template", "chatml", "--preview", "2", "--json")
    assert result.exit_code == 0, result.stderr
    shown = json.loads(result.stdout)
    assert len(shown) == 2 and all(set(e) >= {"input_ids", "labels"} for e in shown)
    tok = _tok(bpe_dir)
    for e in shown:
        trained = [t for t, label in zip(e["input_ids"], e["labels"]) if label != -100]
        assert all(label in (-100, t) for t, label in zip(e["input_ids"], e["labels"]))
        assert tok.decode(trained).endswith("<|im_end|>\n") and tok.decode(trained).startswith("It is ")
    human = cli("sft", "-m", bpe_dir, "--data", chat_file, "--template", "chatml", "--preview", "1")
    assert human.exit_code == 0 and "trained text: 'It is 1.<|im_end|>\\n'" in human.stdout
    assert not list(tmp_path.glob("run*"))


def test_train_end_to_end_and_generate_uses_the_saved_template(cli, configs, bpe_dir, chat_file, tmp_path):
    out = tmp_path / "run"
    result = cli("sft", "-m", configs["llama"], "--from-scratch", "-t", bpe_dir, "--data", chat_file,
                 "--template", "chatml", "-o", out, "--max-steps", "3", "--batch-size", "4", "--lr", "1e-3",
                 "--logging-steps", "1", "--eval-split", "2", "--json")
    assert result.exit_code == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["status"] == "completed" and report["steps"] == 3 and report["template"] == "chatml"
    assert report["examples"] == 10 and report["eval_rows"] == 2 and report["trained_tokens"] > 0
    from transformers import AutoTokenizer, GenerationConfig

    tok = AutoTokenizer.from_pretrained(out / "model")
    assert "<|im_start|>" in tok.chat_template
    gc = GenerationConfig.from_pretrained(out / "model")
    assert tok.convert_tokens_to_ids("<|im_end|>") in gc.eos_token_id
    from llmkit.config import GenerateConfig
    from llmkit.inference.generator import Generator

    generator = Generator(GenerateConfig(model=str(out / "model"), message="hi", max_new_tokens=2))
    assert generator.render_messages([{"role": "user", "content": "hi"}]) == \
        "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"
    packed = cli("sft", "-m", configs["llama"], "--from-scratch", "-t", bpe_dir, "--data", chat_file,
                 "--template", "plain", "-o", tmp_path / "packed", "--max-steps", "2", "--batch-size", "2",
                 "--pack", "--seq-len", "128", "--json")
    assert packed.exit_code == 0, packed.stderr
    report = json.loads(packed.stdout)
    assert report["packed"] and report["train_rows"] < report["examples"]


# --------------------------------------------------------------------------------------------------------- check

def _findings(result):
    assert result.stdout, result.stderr
    return {f["check"]: f for f in json.loads(result.stdout)["findings"]}


def test_check_finds_each_planted_problem(cli, bpe_dir, chat_file, tmp_path):
    from transformers import AutoTokenizer

    base = ("sft", "-m", bpe_dir, "--data", chat_file, "--check", "--json")
    clean = cli(*base, "--template", "plain")
    assert clean.exit_code == 0 and json.loads(clean.stdout)["ok"]
    # the end-of-turn token is not an eos of the model
    found = _findings(cli(*base, "--template", "chatml"))
    assert found["end_token"]["level"] == "warning" and "<|im_end|>" in found["end_token"]["message"]
    # a template whose replies end with no special token
    no_end = tmp_path / "no_end.jinja"
    no_end.write_text("{% for m in messages %}{{ m['role'] + ': ' + m['content'] + '\n' }}{% endfor %}")
    result = cli(*base, "--chat-template", no_end)
    assert result.exit_code == 1 and _findings(result)["end_token"]["level"] == "error"
    # a double BOS
    double = tmp_path / "double.jinja"
    double.write_text("{{ bos_token }}{{ bos_token }}{% for m in messages %}{{ m['content'] + eos_token }}{% endfor %}")
    result = cli(*base, "--chat-template", double)
    assert result.exit_code == 1 and _findings(result)["double_bos"]["level"] == "error"
    # truncation that cuts every answer
    result = cli(*base, "--template", "plain", "--seq-len", "6")
    assert result.exit_code == 1 and _findings(result)["truncation"]["level"] == "error"
    # examples with no trained token
    mixed = _write(tmp_path / "mixed.jsonl", [{"messages": [{"role": "user", "content": "hi"}]},
                                              {"messages": [{"role": "user", "content": "hi"},
                                                            {"role": "assistant", "content": "hello"}]}])
    found = _findings(cli("sft", "-m", bpe_dir, "--data", mixed, "--check", "--json", "--template", "plain"))
    assert found["no_trained_token"]["level"] == "warning"
    # pad == eos and left padding
    tok = AutoTokenizer.from_pretrained(bpe_dir)
    tok.pad_token = tok.eos_token
    tok.save_pretrained(tmp_path / "tok")
    settings = json.loads((tmp_path / "tok" / "tokenizer_config.json").read_text())
    (tmp_path / "tok" / "tokenizer_config.json").write_text(json.dumps({**settings, "padding_side": "left"}))
    found = _findings(cli("sft", "-m", tmp_path / "tok", "--data", chat_file, "--check", "--json",
                          "--template", "plain"))
    assert found["pad_eos"]["level"] == "info" and "stays trained" in found["pad_eos"]["message"]
    assert found["padding_side"]["level"] == "warning"


# ----------------------------------------------------------------------------------------------------- bad input

def test_unknown_format_lists_columns_and_fits(cli, bpe_dir, tmp_path):
    data = _write(tmp_path / "qa.jsonl", [{"question": "q", "answer": "a"}])
    result = cli("sft", "-m", bpe_dir, "--data", data, "--template", "plain", "--preview", "1")
    assert_clean_error(result, 2, "question, answer", "--prompt-field question --completion-field answer")
    ok = cli("sft", "-m", bpe_dir, "--data", data, "--template", "plain", "--preview", "1", "--json",
             "--prompt-field", "question", "--completion-field", "answer")
    assert ok.exit_code == 0, ok.stderr


def test_unknown_role(cli, bpe_dir, tmp_path):
    data = _write(tmp_path / "d.jsonl", [{"messages": [{"role": "narrator", "content": "x"}]}])
    assert_clean_error(cli("sft", "-m", bpe_dir, "--data", data, "--template", "plain", "--preview", "1"), 1,
                       "row 1, message 1: unknown role 'narrator'")


def test_empty_assistant_content(cli, bpe_dir, tmp_path):
    data = _write(tmp_path / "d.jsonl", [{"messages": [{"role": "user", "content": "x"},
                                                       {"role": "assistant", "content": " "}]}])
    assert_clean_error(cli("sft", "-m", bpe_dir, "--data", data, "--template", "plain", "--preview", "1"), 1,
                       "row 1, message 2: the assistant reply is empty")


def test_conversation_not_ending_with_assistant_drops_trailing_turns(cli, bpe_dir, tmp_path):
    data = _write(tmp_path / "d.jsonl", [{"messages": CHAT[1:4]}])
    result = cli("sft", "-m", bpe_dir, "--data", data, "--template", "chatml", "--preview", "1", "--json")
    assert result.exit_code == 0
    example = json.loads(result.stdout)[0]
    text = _tok(bpe_dir).decode(example["input_ids"])
    assert text.endswith("It repeats a block.<|im_end|>\n") and "And while?" not in text
    assert "trailing turns have nothing to train on and were left out" in result.stderr


def test_template_that_fails_to_render(cli, bpe_dir, chat_file, tmp_path):
    bad = tmp_path / "bad.jinja"
    bad.write_text("{% for m in messages %}\n{{ m['content'] }}\n{{ m.nope.deeper }}\n{% endfor %}")
    assert_clean_error(cli("sft", "-m", bpe_dir, "--data", chat_file, "--chat-template", bad, "--preview", "1"), 1,
                       "the chat template failed to render row 1", "UndefinedError", "template line 3")
    syntax = tmp_path / "syntax.jinja"
    syntax.write_text("{% for m in messages %}\n{{ m['content'] }\n{% endfor %}")
    assert_clean_error(cli("sft", "-m", bpe_dir, "--data", chat_file, "--chat-template", syntax, "--preview", "1"),
                       1, "TemplateSyntaxError", "template line 2")


def test_every_example_longer_than_seq_len(cli, configs, bpe_dir, chat_file, tmp_path):
    out = tmp_path / "run"
    result = cli("sft", "-m", configs["llama"], "--from-scratch", "-t", bpe_dir, "--data", chat_file,
                 "--template", "plain", "-o", out, "--seq-len", "6")
    assert_clean_error(result, 1, "every example is longer than --seq-len 6", "raise --seq-len")
    assert not out.exists()   # nothing half-written


def test_no_template_and_bad_flags(cli, bpe_dir, chat_file):
    assert_clean_error(cli("sft", "-m", bpe_dir, "--data", chat_file, "--preview", "1"), 2,
                       "has no chat template", "--template chatml")
    assert_clean_error(cli("sft", "-m", bpe_dir, "--data", chat_file, "--template", "nope", "--preview", "1"), 2,
                       "no such built-in template")
    assert_clean_error(cli("sft", "-m", bpe_dir, "--data", chat_file), 2, "--output-dir is required")


# ------------------------------------------------------------------------------------------------------- presets

def test_full_finetune_preset_fits_a_4gb_gpu():
    from llmkit import presets
    from llmkit.config import MemoryEstimateConfig, SFTConfig
    from llmkit.configio import resolve
    from llmkit.memory import estimate

    cfg = resolve(SFTConfig, preset="full-0.3b-4gb", overrides={"model": "m", "data": "d", "output_dir": "o"})
    assert presets.preset_text("sft", "full-0.3b-4gb").startswith("# llmkit sft --preset full-0.3b-4gb")
    est = estimate(MemoryEstimateConfig(
        params="0.36B", mode="train", optimizer=cfg.optimizer, batch_size=cfg.batch_size, seq_len=cfg.seq_len,
        grad_checkpointing=cfg.grad_checkpointing, mixed_precision=cfg.mixed_precision,
        trainable_layers=cfg.trainable_layers, gpu_memory="4GiB"))
    assert est.fits, est


def test_pack_examples_best_fit_never_splits():
    from llmkit.data.sft import Example, pack_examples

    examples = [Example(list(range(100 * i, 100 * i + n)), [-100] * n, i) for i, n in enumerate((5, 3, 7, 2, 8, 1))]
    blocks = pack_examples(examples, 10)
    assert [len(b["input_ids"]) for b in blocks] == [10, 10, 6]   # 26 tokens in 3 blocks of 10
    seen = []
    for block in blocks:
        starts = [i for i, p in enumerate(block["position_ids"]) if p == 0] + [len(block["input_ids"])]
        for a, b in zip(starts, starts[1:]):
            seen.append(block["input_ids"][a:b])
            assert block["position_ids"][a:b] == list(range(b - a))
    assert sorted(seen) == sorted(e.input_ids for e in examples)


def test_config_rejects_conflicting_flags():
    from llmkit.config import SFTConfig
    from llmkit.errors import ConfigError

    with pytest.raises(ConfigError) as caught:
        SFTConfig(model="m", data="d", output_dir="o", template="chatml", chat_template="t.jinja", padding_free=True)
    text = " ".join(caught.value.problems)
    assert "--template NAME" in text and "already padding-free" in text
    assert SFTConfig(model="m", data="d", check=True).output_dir == ""   # --check and --preview write nothing


# ---------------------------------------------------------------------------------------------- gaps closed later

def test_pack_refused_for_a_model_without_position_ids(cli, bpe_dir, chat_file, tmp_path):
    import inspect

    from transformers import BloomConfig, BloomForCausalLM

    assert "position_ids" not in inspect.signature(BloomForCausalLM.forward).parameters   # ALiBi, no positions
    tok = _tok(bpe_dir, "plain")
    torch.manual_seed(0)
    model = BloomForCausalLM(BloomConfig(vocab_size=len(tok), hidden_size=32, n_layer=1, n_head=4))
    model.save_pretrained(tmp_path / "bloom")
    out = tmp_path / "run"
    args = ("sft", "-m", tmp_path / "bloom", "-t", bpe_dir, "--data", chat_file, "--template", "plain", "-o", out,
            "--max-steps", "1", "--batch-size", "4")
    result = cli(*args, "--pack", "--seq-len", "128")
    assert_clean_error(result, 2, "BloomForCausalLM (model type bloom)", "position_ids", "drop --pack")
    assert len([line for line in result.stderr.splitlines() if line.startswith("Error:")]) == 1
    assert not out.exists()   # refused before any training: nothing written
    padded = cli(*args, "--json")   # the same model trains without --pack
    assert padded.exit_code == 0, padded.stderr
    assert json.loads(padded.stdout)["steps"] == 1


def test_check_compares_the_end_token_with_generation_config_eos(cli, bpe_dir, chat_file, tmp_path):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(bpe_dir)
    model_dir = tmp_path / "model"
    tok.save_pretrained(model_dir)
    other = tok.eos_token_id + 1   # the plain template ends replies with the tokenizer's eos; the model stops elsewhere
    (model_dir / "generation_config.json").write_text(json.dumps({"eos_token_id": other}))
    base = ("sft", "-m", model_dir, "--data", chat_file, "--template", "plain", "--check")
    result = cli(*base, "--json")
    assert result.exit_code == 0, result.stderr   # a warning: --check exits 1 only on errors
    found = _findings(result)
    assert found["generation_eos"]["level"] == "warning"
    assert f"(id {other})" in found["generation_eos"]["message"]
    assert f"(id {tok.eos_token_id})" in found["generation_eos"]["message"]
    assert found["end_token"]["level"] == "info"   # the tokenizer's eos itself matches
    human = cli(*base)
    assert human.exit_code == 0 and "generation_eos" in human.stdout
    # a generation_config that includes the end token: nothing to report
    (model_dir / "generation_config.json").write_text(json.dumps({"eos_token_id": [other, tok.eos_token_id]}))
    assert "generation_eos" not in _findings(cli(*base, "--json"))


def test_multi_turn_last_truncates_from_the_left(bpe_dir):
    full, tok = _encode(bpe_dir, [{"messages": CHAT}], multi_turn="last", seq_len=512)
    ids, labels = full.examples[0].input_ids, full.examples[0].labels
    reply = [i for i, label in enumerate(labels) if label != -100]
    start = reply[0]
    assert reply == list(range(start, len(ids)))   # the final reply closes the example
    reply_len = len(ids) - start
    for seq_len in (reply_len + 5, reply_len + 1):   # some context kept; just one context token kept
        cut, _ = _encode(bpe_dir, [{"messages": CHAT}], multi_turn="last", seq_len=seq_len)
        assert cut.truncated == 1 and not cut.dropped and len(cut.examples) == 1
        example = cut.examples[0]
        assert example.input_ids == ids[-seq_len:] and example.labels == labels[-seq_len:]
        trained = [i for i, label in enumerate(example.labels) if label != -100]
        assert trained == list(range(seq_len - reply_len, seq_len))
        assert [example.labels[i] for i in trained] == [example.input_ids[i] for i in trained]
        assert _trained_runs(example, tok) == ["It loops while true.<|im_end|>\n"]
        assert example.labels[0] == -100   # the first token is context (it could never be a target)
    # the final reply alone does not fit: dropped and counted
    none, _ = _encode(bpe_dir, [{"messages": CHAT}], multi_turn="last", seq_len=reply_len)
    assert not none.examples and none.dropped == {"every answer token cut by --seq-len": 1}
    # other modes still cut on the right
    right, _ = _encode(bpe_dir, [{"messages": CHAT}], multi_turn="all", seq_len=len(ids) - 2)
    assert right.truncated == 1 and right.examples[0].input_ids == ids[:len(ids) - 2]


def test_interrupted_then_resumed_equals_uninterrupted(cli, configs, bpe_dir, chat_file, tmp_path):
    import os
    import signal

    from safetensors.torch import load_file
    from transformers import TrainerCallback

    from llmkit.config import SFTConfig
    from llmkit.training.run import TrainingInterrupted
    from llmkit.training.sft import run_sft

    common = dict(model=str(configs["llama"]), from_scratch=True, tokenizer=str(bpe_dir), data=str(chat_file),
                  template="chatml", max_steps=6, batch_size=2, lr=3e-3, scheduler="cosine", warmup_ratio=0.2,
                  logging_steps=1, save_steps=100)
    run_sft(SFTConfig(output_dir=str(tmp_path / "full"), **common))

    class CtrlC(TrainerCallback):
        def on_step_begin(self, args, state, control, **kwargs):
            if state.global_step == 3:
                os.kill(os.getpid(), signal.SIGINT)   # what Ctrl-C does, at a known step

    with pytest.raises(TrainingInterrupted) as stop:
        run_sft(SFTConfig(output_dir=str(tmp_path / "cut"), **common), callbacks=[CtrlC()])
    assert stop.value.result.status == "interrupted" and stop.value.result.steps == 4
    assert (tmp_path / "cut" / "checkpoints" / "checkpoint-4").is_dir()
    assert not (tmp_path / "cut" / "model").exists()
    result = cli("sft", "-m", configs["llama"], "--from-scratch", "-t", bpe_dir, "--data", chat_file,
                 "--template", "chatml", "-o", tmp_path / "cut", "--max-steps", "6", "--batch-size", "2",
                 "--lr", "3e-3", "--scheduler", "cosine", "--warmup-ratio", "0.2", "--logging-steps", "1",
                 "--save-steps", "100", "--resume", "auto", "--json")
    assert result.exit_code == 0, result.stderr
    resumed = json.loads(result.stdout)
    assert resumed["resumed_from"].endswith("checkpoint-4") and resumed["steps"] == 6

    def losses(run):
        rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
        return [(r["step"], r["loss"]) for r in rows if "loss" in r]

    full, cut = losses(tmp_path / "full"), losses(tmp_path / "cut")
    assert [s for s, _ in cut] == [1, 2, 3, 4, 5, 6]
    assert [l for _, l in cut] == pytest.approx([l for _, l in full], abs=1e-6)
    a = load_file(str(tmp_path / "full" / "model" / "model.safetensors"))
    b = load_file(str(tmp_path / "cut" / "model" / "model.safetensors"))
    assert a.keys() == b.keys() and all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)
