"""Tiny, real fixtures built locally: tokenizers trained on a few KB of the embedded corpus, small data files.

Nothing is downloaded: HF_HUB_OFFLINE is set for the whole session so a stray hub call fails at once.
"""

import json
import os
import shutil
from pathlib import Path

import pytest

from helpers import CAUSAL, CHAT_TEMPLATE, LLAMA_BASE, TINY_BERT, TINY_LLAMA, TINY_T5, build_llama, write_config

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(scope="session", autouse=True)
def data_cache(tmp_path_factory):
    """Tokenized data is cached for the session (subprocesses inherit it), never in the user's ~/.cache."""
    os.environ["LLMKIT_CACHE"] = str(tmp_path_factory.mktemp("llmkit-cache"))

@pytest.fixture(scope="session")
def corpus_texts() -> list[str]:
    from llmkit import corpus

    train, _ = corpus.documents()
    return [r["text"] for r in train[:400]]


def _train(kind: str, out: Path, texts: list[str], vocab_size: int) -> Path:
    from llmkit.config import TokenizeTrainConfig
    from llmkit.tokenization import train_tokenizer

    corpus_file = out.parent / f"{kind}-corpus.txt"
    corpus_file.write_text("\n".join(texts), encoding="utf-8")
    train_tokenizer(TokenizeTrainConfig(corpus=(str(corpus_file),), output_dir=str(out), type=kind,
                                        vocab_size=vocab_size, lowercase=kind == "wordpiece"))
    return out


@pytest.fixture(scope="session")
def bpe_dir(tmp_path_factory, corpus_texts) -> Path:
    return _train("bpe", tmp_path_factory.mktemp("tok") / "bpe", corpus_texts, 600)


@pytest.fixture(scope="session")
def wordpiece_dir(tmp_path_factory, corpus_texts) -> Path:
    return _train("wordpiece", tmp_path_factory.mktemp("tok") / "wordpiece", corpus_texts, 600)


@pytest.fixture(scope="session")
def unigram_dir(tmp_path_factory, corpus_texts) -> Path:
    return _train("unigram", tmp_path_factory.mktemp("tok") / "unigram", corpus_texts, 400)


@pytest.fixture
def chat_file(tmp_path):
    """Twelve one-turn conversations (`messages`), for sft runs."""
    path = tmp_path / "chat.jsonl"
    rows = [{"messages": [{"role": "user", "content": f"What is {i} plus one?"},
                          {"role": "assistant", "content": f"It is {i + 1}."}]} for i in range(12)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


@pytest.fixture
def jsonl_file(tmp_path, corpus_texts) -> Path:
    path = tmp_path / "docs.jsonl"
    with path.open("w", encoding="utf-8") as f:
        for i, text in enumerate(corpus_texts[:60]):
            f.write(json.dumps({"id": i, "text": text}) + "\n")
    return path


@pytest.fixture
def runner():
    from typer.testing import CliRunner

    return CliRunner()


@pytest.fixture
def cli(runner):
    """Invoke llmkit in-process; returns click's Result (exit_code, stdout, stderr)."""
    from llmkit.commands import app

    def invoke(*args: str, **kwargs):
        return runner.invoke(app, [str(a) for a in args], **kwargs)

    return invoke


@pytest.fixture(scope="session")
def llama_base(tmp_path_factory, bpe_dir):
    """A pretrained-looking tiny LLaMA whose tokenizer already has the chatml tokens (an adapter cannot add any)."""
    from transformers import AutoTokenizer

    from llmkit.data import sft
    from llmkit.modeling import build_model

    tok = AutoTokenizer.from_pretrained(bpe_dir)
    sft.prepare_tokenizer(tok, "chatml")
    model = build_model({"model_type": "llama", **LLAMA_BASE}, vocab_size=len(tok), seed=0,
                        overrides={"pad_token_id": tok.pad_token_id, "eos_token_id": tok.eos_token_id})
    out = tmp_path_factory.mktemp("peft") / "base"
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return out


@pytest.fixture(autouse=True)
def one_thread():
    """Another engineer runs tests on this 2-core machine: one thread per process is also ~10x faster there."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


# ------------------------------------------------------------------------------ tiny training configs and data

@pytest.fixture(scope="session")
def configs(tmp_path_factory):
    root = tmp_path_factory.mktemp("configs")
    return {name: write_config(root / f"{name}.json", fields)
            for name, fields in (("llama", TINY_LLAMA), ("bert", TINY_BERT), ("t5", TINY_T5))}


@pytest.fixture(scope="session")
def docs_file(tmp_path_factory, corpus_texts):
    path = tmp_path_factory.mktemp("data") / "docs.jsonl"
    with path.open("w", encoding="utf-8") as f:
        for text in corpus_texts[:48]:
            f.write(json.dumps({"text": text[:400]}) + "\n")
    return path


# ------------------------------------------------------------------- tiny saved models (generate, task heads)

@pytest.fixture(scope="session")
def causal_dir(tmp_path_factory, bpe_dir) -> Path:
    """A 2-layer Qwen2-shaped causal LM (untied, wide init: varied greedy output) with the BPE tokenizer."""
    from llmkit.modeling import build_model, load_tokenizer

    tok = load_tokenizer(str(bpe_dir))
    model = build_model("qwen2.5-0.5b", overrides=CAUSAL, vocab_size=len(tok), seed=0)
    out = tmp_path_factory.mktemp("gen") / "causal"
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return out


@pytest.fixture(scope="session")
def chat_dir(tmp_path_factory, causal_dir) -> Path:
    """The causal model with a chat template saved in its tokenizer (as a run saves it)."""
    from transformers import AutoTokenizer

    out = tmp_path_factory.mktemp("gen") / "chat"
    shutil.copytree(causal_dir, out)
    tok = AutoTokenizer.from_pretrained(out)
    tok.chat_template = CHAT_TEMPLATE
    tok.save_pretrained(out)
    return out


@pytest.fixture(scope="session")
def t5_dir(tmp_path_factory, unigram_dir) -> Path:
    from llmkit.modeling import build_model, load_tokenizer

    tok = load_tokenizer(str(unigram_dir))
    model = build_model("t5-base", "seq2seq", vocab_size=len(tok), seed=0, overrides=dict(
        d_model=32, d_kv=8, d_ff=64, num_layers=2, num_decoder_layers=2, num_heads=4, pad_token_id=2,
        eos_token_id=1, decoder_start_token_id=2, tie_word_embeddings=False, initializer_factor=5.0,
        task_specific_params={"summarization": {"prefix": "summarize: "}}))
    out = tmp_path_factory.mktemp("gen") / "t5"
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return out


@pytest.fixture(scope="session")
def bert_dir(tmp_path_factory, wordpiece_dir) -> Path:
    from llmkit.modeling import build_model, load_tokenizer

    tok = load_tokenizer(str(wordpiece_dir))
    model = build_model("bert-base", "masked-lm", vocab_size=len(tok), seed=0, overrides=dict(
        hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64, max_position_embeddings=64))
    out = tmp_path_factory.mktemp("gen") / "bert"
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return out


@pytest.fixture(scope="session")
def bert_cls_dir(tmp_path_factory, wordpiece_dir) -> Path:
    from llmkit.modeling import build_model, load_tokenizer

    tok = load_tokenizer(str(wordpiece_dir))
    model = build_model("bert-base", "seq-cls", vocab_size=len(tok), seed=0, overrides=dict(
        hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64, max_position_embeddings=64,
        architectures=["BertForSequenceClassification"]))
    out = tmp_path_factory.mktemp("gen") / "bert-cls"
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return out


# ------------------------------------------------------------ tiny LLaMAs and adapters (quantize model, merge)

@pytest.fixture(scope="session")
def llama_dir(tmp_path_factory, bpe_dir) -> Path:
    return build_llama(tmp_path_factory.mktemp("q") / "llama", bpe_dir)


@pytest.fixture(scope="session")
def wide_llama_dir(tmp_path_factory, bpe_dir) -> Path:
    """Hidden 128 / MLP 256, so every layer input is a multiple of blocksize 128."""
    return build_llama(tmp_path_factory.mktemp("q") / "wide", bpe_dir, seed=1, hidden_size=128, intermediate_size=256)


def _fp(base):
    import torch
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)


def _save(peft_model, out: Path, base: Path) -> Path:
    from transformers import AutoTokenizer

    peft_model.save_pretrained(out)
    AutoTokenizer.from_pretrained(base).save_pretrained(out)
    return out


@pytest.fixture(scope="session")
def lora_dir(tmp_path_factory, llama_dir) -> Path:
    import torch
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(0)
    model = get_peft_model(_fp(llama_dir), LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj",
                                                                                          "down_proj"],
                                                       init_lora_weights=False))
    return _save(model, tmp_path_factory.mktemp("a") / "lora", llama_dir)


@pytest.fixture(scope="session")
def ia3_dir(tmp_path_factory, llama_dir) -> Path:
    import torch
    from peft import IA3Config, get_peft_model

    torch.manual_seed(0)
    model = get_peft_model(_fp(llama_dir), IA3Config(target_modules=["k_proj", "v_proj", "down_proj"],
                                                     feedforward_modules=["down_proj"], init_ia3_weights=False))
    return _save(model, tmp_path_factory.mktemp("a") / "ia3", llama_dir)


@pytest.fixture(scope="session")
def prompt_tuning_dir(tmp_path_factory, llama_dir) -> Path:
    from peft import PromptTuningConfig, get_peft_model

    model = get_peft_model(_fp(llama_dir), PromptTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=4))
    return _save(model, tmp_path_factory.mktemp("a") / "prompt", llama_dir)


@pytest.fixture(scope="session")
def prefix_tuning_dir(tmp_path_factory, llama_dir) -> Path:
    from peft import PrefixTuningConfig, get_peft_model

    model = get_peft_model(_fp(llama_dir), PrefixTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=4))
    return _save(model, tmp_path_factory.mktemp("a") / "prefix", llama_dir)


@pytest.fixture(scope="session")
def qlora_dir(tmp_path_factory, llama_dir) -> Path:
    """A LoRA trained (here: randomly initialised) over the nf4 + double-quant base, as `llmkit peft --quant nf4`
    writes it, with llmkit_adapter.json."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    torch.manual_seed(0)
    nf4 = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                             bnb_4bit_compute_dtype=torch.float32)
    base = AutoModelForCausalLM.from_pretrained(llama_dir, device_map={"": "cpu"}, quantization_config=nf4)
    model = get_peft_model(base, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"],
                                            init_lora_weights=False))
    with torch.no_grad():  # larger B: the strategies then differ clearly
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.mul_(20)
    out = _save(model, tmp_path_factory.mktemp("a") / "qlora", llama_dir)
    (out / "llmkit_adapter.json").write_text(json.dumps(
        {"method": "lora", "base_model": str(llama_dir), "quant": "nf4", "double_quant": True, "blocksize": 64,
         "compute_dtype": "fp32"}), encoding="utf-8")
    return out


# ------------------------------------------------------------------------------------------------ llmkit serve

@pytest.fixture
def serving():
    """Start llmkit.serve's app for a ServeConfig under uvicorn on a free loopback port, in a daemon thread (the
    model as `llmkit serve` loads it); returns its URL. Every server started stops at the test's end."""
    import threading
    import time

    import uvicorn

    from llmkit.runtime import free_port
    from llmkit.serve import create_app, load_served_model

    running = []

    def start(cfg, api_key: str | None = None) -> str:
        server = uvicorn.Server(uvicorn.Config(create_app(load_served_model(cfg), cfg, api_key=api_key),
                                               host="127.0.0.1", port=free_port(), log_level="warning"))
        thread = threading.Thread(target=server.run, daemon=True)
        thread.start()
        running.append((server, thread))
        deadline = time.monotonic() + 60
        while not server.started and thread.is_alive() and time.monotonic() < deadline:
            time.sleep(0.01)
        assert server.started, "the server did not start"
        return f"http://127.0.0.1:{server.config.port}"

    yield start
    for server, thread in running:
        server.should_exit = True
        thread.join(timeout=30)
