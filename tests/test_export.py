"""`llmkit export --format onnx` (#20): ONNX Runtime, fed by the test itself, gives PyTorch's logits (a causal LM's
prompt step and a decoding step fed its own presents; a BERT classifier), and greedy generation on the ONNX graph
equals transformers' `generate`; refusals leave nothing behind."""

import json

import numpy as np
import pytest
import torch

from helpers import assert_clean_error

PROMPTS = ["The for statement is used to iterate", "A function definition defines a user-defined function object."]


def export_json(cli, *args) -> dict:
    result = cli("export", "--format", "onnx", *args, "--json")
    assert result.exit_code == 0, (result.stdout, result.stderr, result.exception)
    return json.loads(result.stdout)


def ort(path):
    import onnxruntime

    return onnxruntime.InferenceSession(str(path / "model.onnx"), providers=["CPUExecutionProvider"])


@pytest.fixture(scope="module")
def llama_onnx(tmp_path_factory, llama_dir):
    from typer.testing import CliRunner

    from llmkit.commands import app

    out = tmp_path_factory.mktemp("export") / "llama-onnx"
    result = CliRunner().invoke(app, ["export", "-m", str(llama_dir), "-o", str(out), "--json"])
    assert result.exit_code == 0, (result.stdout, result.stderr, result.exception)
    return out, json.loads(result.stdout)


def left_padded(tokenizer, texts):
    tokenizer.padding_side = "left"
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer(texts, return_tensors="pt", padding=True)


def test_causal_lm_onnx_logits_equal_pytorch_with_and_without_past(llama_onnx, llama_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out, result = llama_onnx
    assert {"model.onnx", "config.json", "generation_config.json", "tokenizer.json", "export.json"} <= \
        {p.name for p in out.iterdir()}
    model = AutoModelForCausalLM.from_pretrained(llama_dir, dtype=torch.float32).eval()
    batch = left_padded(AutoTokenizer.from_pretrained(out), PROMPTS)   # the tokenizer copied beside the graph
    ids, mask = batch["input_ids"], batch["attention_mask"]
    positions = (mask.cumsum(-1) - 1).clamp_min(0)
    session = ort(out)
    layers, kv_heads = model.config.num_hidden_layers, model.config.num_key_value_heads
    head_dim = model.config.hidden_size // model.config.num_attention_heads
    empty = {f"past_key_values.{i}.{kind}": np.zeros((2, kv_heads, 0, head_dim), np.float32)
             for i in range(layers) for kind in ("key", "value")}
    got = session.run(None, {"input_ids": ids.numpy(), "attention_mask": mask.numpy(),
                             "position_ids": positions.numpy(), **empty})
    with torch.no_grad():
        expected = model(input_ids=ids, attention_mask=mask, position_ids=positions).logits
    real = mask.bool()
    assert np.abs(got[0][real.numpy()] - expected[real].numpy()).max() <= 1e-4
    assert [o.name for o in session.get_outputs()] == \
        ["logits"] + [f"present.{i}.{kind}" for i in range(layers) for kind in ("key", "value")]

    # one more token, the prompt's presents as past; PyTorch reads the whole sequence again (no cache)
    next_ids = torch.tensor([[5], [9]])
    full_mask = torch.cat([mask, torch.ones(2, 1, dtype=torch.long)], dim=1)
    step_position = (full_mask.cumsum(-1) - 1)[:, -1:]
    past = dict(zip(empty, got[1:]))
    step = session.run(None, {"input_ids": next_ids.numpy(), "attention_mask": full_mask.numpy(),
                              "position_ids": step_position.numpy(), **past})
    with torch.no_grad():
        whole = model(input_ids=torch.cat([ids, next_ids], dim=1), attention_mask=full_mask,
                      position_ids=(full_mask.cumsum(-1) - 1).clamp_min(0)).logits[:, -1:]
    assert np.abs(step[0] - whole.numpy()).max() <= 1e-4
    assert step[1].shape == (2, kv_heads, ids.shape[1] + 1, head_dim)

    report = json.loads((out / "export.json").read_text())
    assert report["task"] == "causal-lm" and report["opset"] == 17 and report["atol"] == 1e-4
    assert len(report["checks"]) == 2 and report["max_abs_diff"] <= 1e-4
    assert report["generation"]["equal"] and report["generation"]["new_tokens"] > 0
    assert [g["file"] for g in report["graphs"]] == ["model.onnx"]
    shapes = {i["name"]: i["shape"] for i in report["graphs"][0]["inputs"]}
    assert shapes["past_key_values.0.key"] == ["batch_size", kv_heads, "past_sequence_length", head_dim]
    assert result["max_abs_diff"] == report["max_abs_diff"] and result["tokenizer"] is True


def test_onnx_greedy_generation_equals_transformers_generate(llama_onnx, llama_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from llmkit.inference.onnx_backend import OnnxGenerator

    out, _ = llama_onnx
    model = AutoModelForCausalLM.from_pretrained(llama_dir, dtype=torch.float32).eval()
    tokenizer = AutoTokenizer.from_pretrained(llama_dir)
    batch = left_padded(tokenizer, PROMPTS)
    with torch.no_grad():
        expected = model.generate(**batch, do_sample=False, max_new_tokens=12, pad_token_id=tokenizer.pad_token_id)
    got = OnnxGenerator(out).generate(batch["input_ids"].numpy(), 12, attention_mask=batch["attention_mask"].numpy())
    assert got.tolist() == expected.tolist()
    single = tokenizer(PROMPTS[1], return_tensors="pt")["input_ids"]
    with torch.no_grad():
        expected = model.generate(single, do_sample=False, max_new_tokens=12)
    assert OnnxGenerator(out).generate(single.numpy(), 12).tolist() == expected.tolist()


def saved_model(root, tokenizer_dir, preset, task, seed, **overrides):
    from llmkit.modeling import build_model, load_tokenizer

    tok = load_tokenizer(str(tokenizer_dir))
    model = build_model(preset, task, vocab_size=len(tok), seed=seed, overrides=overrides)
    model.save_pretrained(root / task)
    tok.save_pretrained(root / task)
    return root / task


@pytest.fixture(scope="module")
def t5_small(tmp_path_factory, unigram_dir):
    """A tiny T5 at transformers' own initialisation (logits of a few units: 1e-4 is float32 rounding there)."""
    return saved_model(tmp_path_factory.mktemp("export"), unigram_dir, "t5-base", "seq2seq", 0, d_model=32, d_kv=8,
                       d_ff=64, num_layers=2, num_decoder_layers=2, num_heads=4, pad_token_id=2, eos_token_id=1,
                       decoder_start_token_id=2, tie_word_embeddings=False)


def test_seq2seq_onnx_encoder_decoder_and_generation_equal_pytorch(cli, t5_small, tmp_path):
    from transformers import AutoModelForSeq2SeqLM, AutoTokenizer

    from llmkit.inference.onnx_backend import OnnxGenerator

    out = tmp_path / "t5-onnx"
    result = export_json(cli, "-m", t5_small, "-o", out)
    assert result["task"] == "seq2seq" and result["generation"]["equal"]
    assert [g["file"] for g in result["graphs"]] == ["encoder_model.onnx", "decoder_model.onnx"]
    model = AutoModelForSeq2SeqLM.from_pretrained(t5_small, dtype=torch.float32).eval()
    batch = AutoTokenizer.from_pretrained(out)(PROMPTS, return_tensors="pt", padding=True)
    import onnxruntime

    encoder = onnxruntime.InferenceSession(str(out / "encoder_model.onnx"), providers=["CPUExecutionProvider"])
    decoder = onnxruntime.InferenceSession(str(out / "decoder_model.onnx"), providers=["CPUExecutionProvider"])
    hidden = encoder.run(None, {"input_ids": batch["input_ids"].numpy(),
                                "attention_mask": batch["attention_mask"].numpy()})[0]
    decoder_ids = torch.tensor([[2, 7, 11, 5], [2, 9, 9, 4]])
    with torch.no_grad():
        encoded = model.get_encoder()(**batch).last_hidden_state
        expected = model(**batch, decoder_input_ids=decoder_ids).logits
    real = batch["attention_mask"].bool().numpy()
    assert np.abs(hidden[real] - encoded.numpy()[real]).max() <= 1e-4
    past = {i.name: np.zeros((2, i.shape[1], 0, i.shape[3]), np.float32) for i in decoder.get_inputs()
            if i.name.startswith("past_key_values.")}
    assert list(past)[:2] == ["past_key_values.0.decoder.key", "past_key_values.0.decoder.value"]
    got = decoder.run(None, {"input_ids": decoder_ids[:, :3].numpy(), "encoder_attention_mask":
                             batch["attention_mask"].numpy(), "encoder_hidden_states": hidden, **past})
    assert np.abs(got[0] - expected[:, :3].numpy()).max() <= 1e-4
    step = decoder.run(None, {"input_ids": decoder_ids[:, 3:].numpy(), "encoder_attention_mask":
                              batch["attention_mask"].numpy(), "encoder_hidden_states": hidden,
                              **dict(zip(past, got[1:]))})
    assert np.abs(step[0] - expected[:, 3:].numpy()).max() <= 1e-4

    with torch.no_grad():
        greedy = model.generate(**batch, do_sample=False, max_new_tokens=12)
    ours = OnnxGenerator(out).generate(batch["input_ids"].numpy(), 12, attention_mask=batch["attention_mask"].numpy())
    assert ours.tolist() == greedy.tolist()


@pytest.fixture(scope="module")
def classifier(tmp_path_factory, wordpiece_dir):
    """A tiny BERT classifier with a wide initialisation: logits of about one unit, so 1e-4 is a tight bound."""
    return saved_model(tmp_path_factory.mktemp("export"), wordpiece_dir, "bert-base", "seq-cls", 3, hidden_size=32,
                       num_hidden_layers=2, num_attention_heads=4, intermediate_size=64, max_position_embeddings=64,
                       initializer_range=0.5, num_labels=3)


def test_classifier_onnx_logits_equal_pytorch(cli, classifier, tmp_path):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    out = tmp_path / "cls-onnx"
    result = export_json(cli, "-m", classifier, "-o", out)
    assert result["task"] == "seq-cls" and result["generation"] is None
    model = AutoModelForSequenceClassification.from_pretrained(classifier, dtype=torch.float32).eval()
    batch = AutoTokenizer.from_pretrained(out)(PROMPTS + ["while true"], return_tensors="pt", padding=True)
    session = ort(out)
    assert [i.name for i in session.get_inputs()] == ["input_ids", "attention_mask", "token_type_ids"]
    got = session.run(None, {name: batch[name].numpy() for name in ("input_ids", "attention_mask", "token_type_ids")})
    with torch.no_grad():
        expected = model(**batch).logits
    assert got[0].shape == (3, 3) and np.abs(expected.numpy()).max() > 0.1
    assert np.abs(got[0] - expected.numpy()).max() <= 1e-4
    report = json.loads((out / "export.json").read_text())
    assert report["checks"][0]["max_abs_diff"] <= 1e-4 and report["graphs"][0]["outputs"][0]["name"] == "logits"


def test_an_export_over_atol_fails_and_leaves_nothing(cli, classifier, tmp_path):
    out = tmp_path / "strict"
    result = cli("export", "-m", classifier, "-o", out, "--atol", "1e-15")
    assert result.exit_code == 1 and "Traceback" not in result.stderr and result.stdout == ""
    assert "\nError: ONNX Runtime's logits differ from PyTorch's by" in result.stderr   # after the progress lines
    assert "nothing was written" in result.stderr
    assert list(tmp_path.iterdir()) == []


def test_refusals_write_nothing(cli, bert_dir, llama_dir, tmp_path):
    out = tmp_path / "out"
    assert_clean_error(cli("export", "-m", tmp_path / "missing", "-o", out), 1, "no such model directory")
    assert_clean_error(cli("export", "-m", bert_dir, "-o", out), 2, "BertForMaskedLM", "exports causal LMs")
    assert list(tmp_path.iterdir()) == []
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    assert_clean_error(cli("export", "-m", llama_dir, "-o", out), 2, "exists and is not empty", "--overwrite")
    assert [p.name for p in out.iterdir()] == ["keep.txt"]
    assert_clean_error(cli("export", "-m", llama_dir, "-o", tmp_path / "o2", "--format", "tflite"), 2, "--format")
