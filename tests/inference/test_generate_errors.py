"""`llmkit generate` bad input: each gives its exit code and one `Error:` line, never a traceback."""

import json

import pytest

from helpers import assert_clean_error, run_json


@pytest.fixture(autouse=True)
def _one_thread():
    import torch

    torch.set_num_threads(1)


def test_model_without_a_generation_head_says_what_it_is_and_which_task_fits(cli, bert_cls_dir):
    result = cli("generate", "--model", bert_cls_dir, "--task", "text-generation", "--prompt", "hello")
    assert_clean_error(result, 2, "BertForSequenceClassification", "sequence classification",
                       "--task text-classification")


def test_task_that_does_not_fit_names_the_one_that_does(cli, bert_dir, t5_dir, causal_dir):
    assert_clean_error(cli("generate", "--model", bert_dir, "--task", "text-generation", "--prompt", "hi"), 2,
                       "BertForMaskedLM", "masked language model", "--task fill-mask")
    assert_clean_error(cli("generate", "--model", causal_dir, "--task", "summarization", "--prompt", "hi"), 2,
                       "decoder-only", "--task text-generation")
    assert_clean_error(cli("generate", "--model", t5_dir, "--task", "fill-mask", "--prompt", "hi"), 2,
                       "encoder-decoder", "--task summarization")


def test_prompt_longer_than_the_context_keeps_its_end_with_a_warning(cli, causal_dir):
    long = " ".join(["the for statement"] * 60)  # far beyond the 64-token context
    result = cli("generate", "--model", causal_dir, "--prompt", long, "--max-new-tokens", 8, "--json")
    assert result.exit_code == 0, result.stderr
    out = json.loads(result.stdout)
    assert out["prompt_tokens"] == 64 - 8 and out["truncated_prompt_tokens"] > 0
    assert "Warning: the prompt has" in result.stderr and "kept the last 56" in result.stderr
    assert_clean_error(cli("generate", "--model", causal_dir, "--prompt", "x", "--max-new-tokens", 64), 2,
                       "--max-new-tokens 64 leaves no room", "context of 64")


def test_temperature_zero_with_sampling_is_explained(cli, causal_dir, tmp_path):
    assert_clean_error(cli("generate", "--model", causal_dir, "--prompt", "x", "--do-sample", "--temperature", 0), 2,
                       "--temperature 0", "--greedy")
    out = run_json(cli, "--model", causal_dir, "--prompt", "x", "--temperature", 0, "--max-new-tokens", 3)
    assert out["params"]["do_sample"] is False  # temperature 0 without sampling: greedy, as asked


@pytest.mark.parametrize("args, flag", [
    (("--top-k", -1), "--top-k must be 0 or more"),
    (("--top-p", 0), "--top-p must be in (0, 1]"),
    (("--top-p", 1.5), "--top-p must be in (0, 1]"),
    (("--min-p", 2), "--min-p"),
    (("--typical-p", 0), "--typical-p"),
    (("--repetition-penalty", 0), "--repetition-penalty"),
    (("--max-new-tokens", 0), "--max-new-tokens"),
    (("--temperature", -1), "--temperature"),
])
def test_out_of_range_decoding_values_exit_2_naming_the_flag(cli, args, flag):
    assert_clean_error(cli("generate", "--model", "m", "--prompt", "x", *args), 2, flag)


def test_transformers_validation_is_mapped_to_the_flag(cli, causal_dir):
    assert_clean_error(cli("generate", "--model", causal_dir, "--prompt", "x", "--greedy", "--num-return-sequences",
                           2), 2, "--num-return-sequences", "transformers")
    assert_clean_error(cli("generate", "--model", causal_dir, "--prompt", "x", "--num-beams", 2,
                           "--num-return-sequences", 3), 2, "--num-return-sequences")


def test_malformed_jsonl_line_names_file_line_and_keeps_earlier_results(cli, causal_dir, tmp_path):
    source = tmp_path / "in.jsonl"
    source.write_text('{"prompt": "one"}\n{"prompt": "two"}\n\n{"prompt": "three"\n{"prompt": "four"}\n')
    target = tmp_path / "out.jsonl"
    result = cli("generate", "--model", causal_dir, "--input", source, "--output", target, "--max-new-tokens", 3)
    assert_clean_error(result, 1, f"{source}:4", "invalid JSON")
    assert [json.loads(line)["line"] for line in target.read_text().splitlines()] == [1, 2]
    source.write_text('{"prompt": "one"}\n{"text": "no prompt"}\n')
    result = cli("generate", "--model", causal_dir, "--input", source, "--output", tmp_path / "o2.jsonl",
                 "--max-new-tokens", 3)
    assert_clean_error(result, 1, f"{source}:2", "`prompt`")


def test_messages_without_a_chat_template(cli, causal_dir, tmp_path):
    assert_clean_error(cli("generate", "--model", causal_dir, "--message", "hi"), 2, "no chat template",
                       "--chat-template")
    assert_clean_error(cli("generate", "--model", causal_dir, "--chat"), 2, "no chat template")


def test_unknown_chat_command_prints_help_and_goes_on(cli, chat_dir):
    result = cli("generate", "--model", chat_dir, "--chat", "--max-new-tokens", 2, input="/frobnicate\nHi\n")
    assert result.exit_code == 0, result.stderr
    assert "unknown command /frobnicate" in result.stderr and "/exit" in result.stderr
    assert result.stdout.strip() != "" or "tokens" in result.stderr  # the turn after it was answered


def test_adapter_for_another_base_is_refused(cli, causal_dir, tmp_path):
    adapter = tmp_path / "adapter"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text(json.dumps({"base_model_name_or_path": "org/other-model",
                                                             "peft_type": "LORA"}))
    assert_clean_error(cli("generate", "--model", causal_dir, "--adapter", adapter, "--prompt", "x"), 2,
                       "org/other-model", "--model")
    assert_clean_error(cli("generate", "--model", causal_dir, "--adapter", tmp_path, "--prompt", "x"), 1,
                       "adapter_config.json")


@pytest.mark.parametrize("args, fragment", [
    ((), "give exactly one of --prompt"),
    (("--prompt", "a", "--message", "b"), "got --prompt, --message"),
    (("--input", "a.jsonl"), "--input and --output go together"),
    (("--prompt", "a", "--system", "s"), "--system"),
    (("--prompt", "a", "--load-in-8bit", "--load-in-4bit"), "one of --load-in-8bit"),
    (("--prompt", "a", "--stop", ""), "--stop"),
])
def test_usage_errors(cli, args, fragment):
    assert_clean_error(cli("generate", "--model", "m", *args), 2, fragment)


def test_missing_model_and_fill_mask_without_mask(cli, bert_dir, tmp_path):
    assert_clean_error(cli("generate", "--model", tmp_path / "nope", "--prompt", "x"), 1, "no such model directory")
    assert_clean_error(cli("generate", "--model", bert_dir, "--prompt", "no mask here"), 2, "[MASK]")


def test_print_config_and_preset(cli):
    result = cli("generate", "--model", "m", "--prompt", "x", "--preset", "precise", "--print-config")
    assert result.exit_code == 0 and "do_sample: false" in result.stdout
    result = cli("generate", "--model", "m", "--prompt", "x", "--preset", "creative", "--temperature", "0.5",
                 "--print-config", "--json")
    data = json.loads(result.stdout)
    assert data["do_sample"] is True and data["temperature"] == 0.5


def test_load_in_4bit_on_cpu_with_sizes_bitsandbytes_cannot_block(cli, causal_dir):

    assert_clean_error(cli("generate", "--model", causal_dir, "--prompt", "a", "--load-in-4bit"), 2,
                       "multiples of 64")
