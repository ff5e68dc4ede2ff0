"""`llmkit generate --backend onnxruntime -m EXPORT_DIR` (#20): the dir `llmkit export --format onnx` wrote generates
what transformers' own `generate` gives on the original PyTorch model (greedy, seeded sampling, a batch file, stop
strings, chat templates); what the graph cannot do is refused in one line."""

import json
import sys

import pytest
import torch

from helpers import assert_clean_error, load_causal, run_json

PROMPT = "The for statement is used to iterate"
NEW_TOKENS = 12


@pytest.fixture(scope="module")
def exported(tmp_path_factory, llama_dir):
    from typer.testing import CliRunner

    from llmkit.commands import app

    out = tmp_path_factory.mktemp("onnx-generate") / "llama-onnx"
    result = CliRunner().invoke(app, ["export", "--format", "onnx", "-m", str(llama_dir), "-o", str(out), "--json"])
    assert result.exit_code == 0, (result.stdout, result.stderr, result.exception)
    return out


@pytest.fixture(scope="module")
def torch_model(llama_dir):
    torch.set_num_threads(1)
    return load_causal(llama_dir)


def reference(torch_model, text, seed=None, **decoding):
    """transformers' generate on the PyTorch model: the new token ids."""
    model, tok = torch_model
    enc = tok(text, return_tensors="pt")
    if seed is not None:
        torch.manual_seed(seed)
    with torch.inference_mode():
        out = model.generate(**enc, max_new_tokens=NEW_TOKENS, pad_token_id=tok.pad_token_id, **decoding)
    return out[0, enc["input_ids"].shape[1]:].tolist()


def onnx_generate(cli, exported, *args) -> dict:
    return run_json(cli, "--backend", "onnxruntime", "-m", exported, "--max-new-tokens", NEW_TOKENS, *args)


def test_greedy_equals_transformers_generate_on_the_torch_model(cli, exported, torch_model):
    from llmkit.config import GenerateConfig
    from llmkit.inference.generator import Generator, run_prompt

    expected = reference(torch_model, PROMPT, do_sample=False)
    assert len(set(expected)) > 3   # the fixture model does not just repeat one token
    cfg = GenerateConfig(model=str(exported), backend="onnxruntime", prompt=PROMPT, max_new_tokens=NEW_TOKENS,
                         do_sample=False)
    assert run_prompt(cfg, Generator(cfg)).sequences[0].token_ids == expected
    out = onnx_generate(cli, exported, "--prompt", PROMPT, "--greedy")
    assert out["text"] == torch_model[1].decode(expected, skip_special_tokens=True)
    assert out["completion_tokens"] == NEW_TOKENS and out["finish_reason"] == "length"


def test_seeded_sampling_equals_transformers_generate_with_the_same_seed(cli, exported, torch_model):
    tok = torch_model[1]
    expected = reference(torch_model, PROMPT, seed=7, do_sample=True, temperature=1.3, top_p=0.95)
    assert expected != reference(torch_model, PROMPT, do_sample=False)   # sampling did choose other tokens
    out = onnx_generate(cli, exported, "--prompt", PROMPT, "--do-sample", "--temperature", 1.3, "--top-p", 0.95,
                        "--seed", 7)
    assert out["text"] == tok.decode(expected, skip_special_tokens=True)


def test_a_chat_message_goes_through_the_exported_chat_template(cli, exported, torch_model):
    model, tok = torch_model
    text = tok.apply_chat_template([{"role": "user", "content": "Explain loops."}], tokenize=False,
                                   add_generation_prompt=True)
    ids = tok(text, add_special_tokens=False, return_tensors="pt")["input_ids"]
    with torch.inference_mode():
        expected = model.generate(ids, max_new_tokens=NEW_TOKENS, do_sample=False, pad_token_id=tok.pad_token_id)
    out = onnx_generate(cli, exported, "--message", "Explain loops.", "--greedy")
    assert out["text"] == tok.decode(expected[0, ids.shape[1]:], skip_special_tokens=True)


def test_a_batch_file_equals_the_torch_backends(cli, exported, llama_dir, tmp_path):
    source = tmp_path / "in.jsonl"
    source.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in
                              (PROMPT, "A function definition", "Comprehensions provide a concise way")))

    def rows(path):
        return [{k: row[k] for k in ("line", "text", "completion_tokens", "finish_reason")}
                for row in map(json.loads, path.read_text().splitlines())]

    common = ("--input", source, "--max-new-tokens", NEW_TOKENS, "--greedy", "--batch-size", 2)
    on_torch, on_ort = tmp_path / "torch.jsonl", tmp_path / "ort.jsonl"
    assert cli("generate", "-m", llama_dir, "--output", on_torch, *common).exit_code == 0
    result = cli("generate", "--backend", "onnxruntime", "-m", exported, "--output", on_ort, *common)
    assert result.exit_code == 0, (result.stderr, result.exception)
    assert rows(on_ort) == rows(on_torch) and len(rows(on_torch)) == 3


def test_a_stop_string_stops_and_the_stream_never_shows_it(cli, exported, torch_model):
    tok = torch_model[1]
    greedy = tok.decode(reference(torch_model, PROMPT, do_sample=False), skip_special_tokens=True)
    stop = greedy[len(greedy) // 2: len(greedy) // 2 + 3]
    out = onnx_generate(cli, exported, "--prompt", PROMPT, "--greedy", "--stop", stop)
    assert out["finish_reason"] == "stop_string" and out["text"] == greedy[:greedy.find(stop)]
    streamed = cli("generate", "--backend", "onnxruntime", "-m", exported, "--prompt", PROMPT, "--greedy",
                   "--max-new-tokens", NEW_TOKENS, "--stop", stop)
    assert streamed.exit_code == 0 and streamed.stdout == out["text"] + "\n"


def test_what_the_graph_cannot_do_is_refused_in_one_line(cli, exported, llama_dir, monkeypatch):
    def refused(*args):
        return cli("generate", "--backend", "onnxruntime", "--prompt", PROMPT, *args)

    assert_clean_error(refused("-m", llama_dir), 2, "has no model.onnx", "llmkit export --format onnx")
    assert_clean_error(refused("-m", exported, "--adapter", llama_dir), 2, "--adapter", "--backend torch")
    assert_clean_error(refused("-m", exported, "--load-in-4bit"), 2, "--load-in-4bit")
    assert_clean_error(refused("-m", exported, "--load-in-8bit", "--dtype", "bf16"), 2, "--load-in-8bit",
                       "--dtype bf16")
    assert_clean_error(refused("-m", exported, "--task", "text-classification"), 2,
                       "--task text-classification runs on --backend torch")
    import onnxruntime

    if "CUDAExecutionProvider" not in onnxruntime.get_available_providers():
        assert_clean_error(refused("-m", exported, "--device", "cuda"), 2, "needs onnxruntime-gpu")
    monkeypatch.setitem(sys.modules, "onnxruntime", None)   # as if it were not installed
    assert_clean_error(refused("-m", exported), 2, "needs onnxruntime", "pip install 'llmkit[export]'")


def test_an_exported_t5_summarizes_as_transformers_generate_does_with_beams_too(cli, t5_dir, tmp_path):
    from transformers import AutoModelForSeq2SeqLM, AutoTokenizer

    out = tmp_path / "t5-onnx"
    exported_t5 = cli("export", "-m", t5_dir, "-o", out, "--atol", "1e-2")   # initializer_factor 5: large logits
    assert exported_t5.exit_code == 0, exported_t5.stderr
    text = "The for statement is used to iterate over the elements of a sequence such as a string or list."
    model, tok = AutoModelForSeq2SeqLM.from_pretrained(t5_dir).eval(), AutoTokenizer.from_pretrained(t5_dir)
    enc = tok("summarize: " + text, return_tensors="pt")   # the task prefix of the exported config
    for decoding in ((), ("--num-beams", 2)):
        got = onnx_generate(cli, out, "--prompt", text, "--greedy", *decoding)
        with torch.inference_mode():
            expected = model.generate(**enc, max_new_tokens=NEW_TOKENS, do_sample=False,
                                      num_beams=int(decoding[1]) if decoding else 1)
        assert got["task"] == "summarization"
        assert got["text"] == tok.decode(expected[0, 1:], skip_special_tokens=True) and got["text"]


def test_serve_answers_from_the_exported_graph(serving, exported, torch_model):
    import openai

    from llmkit.config import ServeConfig

    url = serving(ServeConfig(model=str(exported), backend="onnxruntime", max_new_tokens=NEW_TOKENS))
    client = openai.OpenAI(base_url=url + "/v1", api_key="unused")
    answer = client.completions.create(model=str(exported), prompt=PROMPT, max_tokens=NEW_TOKENS, temperature=0)
    expected = reference(torch_model, PROMPT, do_sample=False)
    assert answer.choices[0].text == torch_model[1].decode(expected, skip_special_tokens=True)
    assert answer.usage.completion_tokens == NEW_TOKENS
