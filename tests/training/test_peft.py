"""`llmkit peft`: every method trains only its adapter (base weights byte-identical), counts what peft counts, lowers
the loss on a learnable toy task, and saves an adapter that reloads to the same logits; QLoRA on CPU; bad input."""

import json

import pytest
import torch

from helpers import TINY_BERT, TINY_T5, assert_clean_error


METHOD_LR = {"lora": 1e-2, "ia3": 5e-2, "prompt-tuning": 1e-1, "p-tuning": 1e-2, "prefix-tuning": 3e-2}


@pytest.fixture(scope="session")
def qa_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("peft-data") / "qa.jsonl"
    rows = [{"prompt": f"What is {i} plus one?", "completion": f" It is {i + 1}."} for i in range(8)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


class Capture:
    """A TrainerCallback that keeps the trained model's state and its logits on a fixed input at the end."""

    def __new__(cls, *args, **kwargs):
        from transformers import TrainerCallback

        class _Capture(TrainerCallback):
            def __init__(self, ids):
                self.ids, self.model, self.logits, self.base_state = ids, None, None, None

            def on_train_end(self, args, state, control, model=None, **kwargs):
                self.model = model
                model.eval()
                with torch.no_grad():
                    self.logits = model(input_ids=self.ids, attention_mask=torch.ones_like(self.ids)).logits.clone()
                self.base_state = {k: v.detach().clone() for k, v in model.get_base_model().state_dict().items()}
                model.train()

        return _Capture(*args, **kwargs)


def _config(base, data, out, **fields):
    from llmkit.config import PeftConfig

    defaults = dict(model=str(base), data=str(data), output_dir=str(out), template="chatml", seq_len=48,
                    batch_size=4, max_steps=16, logging_steps=1, save_steps=100, scheduler="constant")
    defaults.update(fields)
    return PeftConfig(**defaults)


def _losses(run):
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return [r["loss"] for r in rows if "loss" in r]


def _peft_trainable(base_dir, cfg):
    """What peft alone counts for the same configuration on a fresh copy of the base."""
    from peft import get_peft_model
    from transformers import AutoModelForCausalLM

    from llmkit.training.peft import AdapterPlan

    model = AutoModelForCausalLM.from_pretrained(base_dir)
    plan = AdapterPlan(cfg, tokenizer_source=str(base_dir))
    return get_peft_model(model, plan.peft_config(model, "causal-lm")).get_nb_trainable_parameters()[0]


@pytest.mark.parametrize("method", ["lora", "ia3", "prompt-tuning", "p-tuning", "prefix-tuning"])
def test_each_method_trains_only_its_adapter_and_reloads_to_the_same_logits(method, llama_base, qa_file, tmp_path):
    from peft import PeftModel
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    from llmkit.training.peft import run_peft

    extra = {"prompt_init_text": "Answer the sum:"} if method == "prompt-tuning" else {}
    if method == "p-tuning":
        extra["encoder_hidden_size"] = 32
    cfg = _config(llama_base, qa_file, tmp_path / "run", method=method, lr=METHOD_LR[method], num_virtual_tokens=4,
                  **extra)
    ids = torch.tensor([[5, 9, 12, 30, 41, 7]])
    capture = Capture(ids)
    result = run_peft(cfg, callbacks=[capture])

    assert result.trainable_parameters == _peft_trainable(llama_base, cfg) > 0
    assert sum(r.parameters for r in result.parameter_table if r.trainable) == result.trainable_parameters
    original = load_file(str(llama_base / "model.safetensors"))
    compared = set()
    for name, value in capture.base_state.items():   # the base is untouched (peft's own copies aside)
        key = name.replace("base_layer.", "")
        if key in original:
            assert torch.equal(value, original[key]), name
            compared.add(key)
    assert compared == set(original)                  # every base weight was found and compared
    losses = _losses(tmp_path / "run")
    assert sum(losses[-4:]) / 4 < sum(losses[:4]) / 4, losses

    adapter = tmp_path / "run" / "adapter"
    assert result.adapter_dir == str(adapter) and (adapter / "adapter_config.json").is_file()
    info = json.loads((adapter / "llmkit_adapter.json").read_text())
    assert info["method"] == method and info["base_model"] == str(llama_base) and info["quant"] is None
    reloaded = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(llama_base), adapter).eval()
    with torch.no_grad():
        logits = reloaded(input_ids=ids, attention_mask=torch.ones_like(ids)).logits
    assert torch.allclose(logits, capture.logits, atol=1e-5)
    manifest = json.loads((tmp_path / "run" / "manifest.json").read_text())
    assert manifest["command"] == "llmkit peft" and manifest["peft"]["method"] == method
    assert "method: " + method in (tmp_path / "run" / "resolved_config.yaml").read_text()
    assert manifest["memory"]["estimated_peak_bytes"] > 0


def test_lora_targets_are_detected_and_shown(llama_base, qa_file, tmp_path):
    from llmkit.training.peft import run_peft

    result = run_peft(_config(llama_base, qa_file, tmp_path / "run", max_steps=1))
    assert result.targets == ["q_proj", "v_proj"]      # peft's choice for LLaMA
    result = run_peft(_config(llama_base, qa_file, tmp_path / "all", max_steps=1, lora_targets=("all-linear",)))
    assert result.targets == ["down_proj", "gate_proj", "k_proj", "o_proj", "q_proj", "up_proj", "v_proj"]


def test_qlora_on_cpu_trains_adapters_over_4bit_layers_and_matches_the_estimate(llama_base, qa_file, tmp_path):
    import bitsandbytes as bnb

    from llmkit.config import MemoryEstimateConfig
    from llmkit.memory import estimate
    from llmkit.modelspec import from_config_dict
    from llmkit.training.peft import run_peft

    cfg = _config(llama_base, qa_file, tmp_path / "run", quant="nf4", double_quant=True, max_steps=6, lr=1e-2,
                  lora_targets=("all-linear",), optimizer="paged-adamw-8bit")
    capture = Capture(torch.tensor([[5, 9, 12, 30]]))
    result = run_peft(cfg, callbacks=[capture])
    base = capture.model.get_base_model()
    linears = [m for n, m in base.named_modules() if n.endswith(("q_proj", "down_proj"))]
    assert linears and all(isinstance(m.base_layer, bnb.nn.Linear4bit) for m in linears)
    lora_b = [p for n, p in capture.model.named_parameters() if "lora_B" in n]
    assert lora_b and all(p.abs().sum() > 0 for p in lora_b)          # B starts at zero: it trained
    assert json.loads((tmp_path / "run" / "adapter" / "llmkit_adapter.json").read_text())["quant"] == "nf4"

    weights = sum(p.numel() * p.element_size() for n, p in base.named_parameters() if "lora_" not in n)
    weights += sum(m.weight.quant_state.absmax.numel() * m.weight.quant_state.absmax.element_size()
                   for m in base.modules() if isinstance(m, bnb.nn.Linear4bit))
    spec = from_config_dict(json.loads((llama_base / "config.json").read_text()), name="base", source="config")
    est = estimate(MemoryEstimateConfig(model="base", mode="train", precision="fp32", quant="nf4",
                                        double_quant=True, peft="lora", lora_targets=("all-linear",), overhead="0"),
                   spec=spec)
    frozen_estimate = est.per_device["weights"] - result.trainable_parameters * 4
    assert abs(weights - frozen_estimate) / weights < 0.10, (weights, frozen_estimate)


def test_continued_pretraining_through_an_adapter(llama_base, tmp_path, corpus_texts):
    from llmkit.training.peft import run_peft

    docs = tmp_path / "docs.jsonl"
    docs.write_text("".join(json.dumps({"text": t[:300]}) + "\n" for t in corpus_texts[:16]), encoding="utf-8")
    result = run_peft(_config(llama_base, docs, tmp_path / "run", objective="causal-lm", pack=True, seq_len=64,
                              max_steps=4, lr=1e-2))
    assert result.objective == "causal-lm" and result.training.steps == 4
    assert (tmp_path / "run" / "adapter" / "adapter_model.safetensors").is_file()


@pytest.mark.parametrize("kind, method, objective", [("bert", "lora", "masked-lm"),
                                                     ("t5", "prefix-tuning", "seq2seq")])
def test_encoder_and_encoder_decoder_models(kind, method, objective, tmp_path, wordpiece_dir, unigram_dir,
                                            corpus_texts):
    from llmkit.modeling import build_model, load_tokenizer
    from llmkit.training.peft import run_peft

    tok = load_tokenizer(str(wordpiece_dir if kind == "bert" else unigram_dir))
    fields, task = (TINY_BERT, "masked-lm") if kind == "bert" else (TINY_T5, "seq2seq")
    extra = {"decoder_start_token_id": tok.pad_token_id} if kind == "t5" else {}
    if kind == "t5":
        from llmkit.training.objectives import ensure_sentinels

        ensure_sentinels(tok, 20)
    model = build_model(fields, task, vocab_size=len(tok), seed=0, overrides={"pad_token_id": tok.pad_token_id,
                                                                             **extra})
    base = tmp_path / kind
    model.save_pretrained(base)
    tok.save_pretrained(base)
    docs = tmp_path / "docs.jsonl"
    docs.write_text("".join(json.dumps({"text": t[:300]}) + "\n" for t in corpus_texts[:16]), encoding="utf-8")
    result = run_peft(_config(base, docs, tmp_path / "run", method=method, objective=objective, template=None,
                              seq_len=64, max_steps=2, lr=1e-2, num_virtual_tokens=4))
    assert result.training.status == "completed" and result.trainable_parameters > 0


def test_cli_json_and_generate_with_the_adapter(cli, llama_base, qa_file, tmp_path):
    out = tmp_path / "run"
    result = cli("peft", "--method", "lora", "-m", llama_base, "--data", qa_file, "--template", "chatml",
                 "-o", out, "--max-steps", "2", "--batch-size", "4", "--seq-len", "48", "--json")
    assert result.exit_code == 0, result.stderr
    report = json.loads(result.stdout)
    for key in ("method", "adapter_dir", "trainable_parameters", "parameters", "trainable_share", "targets",
                "parameter_table", "train_loss", "steps", "files"):
        assert key in report, key
    assert report["method"] == "lora" and report["steps"] == 2 and report["files"]["adapter"] == str(out / "adapter")
    assert "expected peak memory" in result.stderr and "trainable / total" in result.stderr
    from transformers import AutoTokenizer, GenerationConfig

    end = AutoTokenizer.from_pretrained(llama_base).convert_tokens_to_ids("<|im_end|>")
    assert end in GenerationConfig.from_pretrained(out / "adapter").eos_token_id   # the template's stop token
    generated = cli("generate", "-m", llama_base, "--adapter", out / "adapter", "--message", "What is 2 plus one?",
                    "--max-new-tokens", "3", "--json")
    assert generated.exit_code == 0, generated.stderr


# ------------------------------------------------------------------------------------------------------ bad input

@pytest.mark.parametrize("args, message", [
    (["--method", "ia3", "--quant", "nf4"], "use --method lora"),
    (["--method", "lora", "--double-quant"], "--double-quant applies to 4-bit"),
    (["--method", "prompt-tuning", "--prompt-init", "text"], "needs --prompt-init-text"),
    (["--method", "dora"], "--method"),
    (["--freeze-base"], "only the adapter"),
    (["--method", "prefix-tuning", "--pack"], "drop --pack"),
    (["--lora-rank", "0"], "--lora-rank must be greater than 0"),
    (["--task", "seq-cls", "--objective", "causal-lm"], "trains with --objective sft"),
])
def test_bad_flags_exit_2(cli, args, message, tmp_path):
    result = cli("peft", "-m", "m", "--data", "d.jsonl", "-o", tmp_path / "run", *args)
    assert_clean_error(result, 2, message)
    assert not (tmp_path / "run").exists()


def test_unknown_lora_target_names_the_real_ones(cli, llama_base, qa_file, tmp_path):
    result = cli("peft", "-m", llama_base, "--data", qa_file, "--template", "chatml", "-o", tmp_path / "run",
                 "--lora-targets", "query,v_proj")
    assert_clean_error(result, 2, "query is not a linear layer")
    assert "q_proj" in result.stderr and not (tmp_path / "run").exists()


def test_template_that_needs_new_tokens_is_refused_before_any_work(cli, causal_dir, qa_file, tmp_path):
    result = cli("peft", "-m", causal_dir, "--data", qa_file, "--template", "chatml", "-o", tmp_path / "run")
    assert_clean_error(result, 2, "cannot grow a frozen vocabulary")
    assert not (tmp_path / "run").exists()


def test_prompt_methods_on_a_masked_lm_are_refused(cli, bert_dir, tmp_path, corpus_texts):
    docs = tmp_path / "docs.jsonl"
    docs.write_text("".join(json.dumps({"text": t[:200]}) + "\n" for t in corpus_texts[:4]), encoding="utf-8")
    result = cli("peft", "-m", bert_dir, "--data", docs, "--objective", "masked-lm", "--method", "prompt-tuning",
                 "-o", tmp_path / "run")
    assert_clean_error(result, 2, "masked-LM")
    assert not (tmp_path / "run").exists()


def test_adapter_gradients_through_a_4bit_base_equal_those_through_its_dequantized_weights(llama_base):
    """QLoRA trains against the dequantized NF4 weights: the LoRA gradients must be the ones an fp32 model holding
    exactly those weights gives (bitsandbytes' CPU backward path, checked on realistic shapes)."""
    import bitsandbytes as bnb
    import bitsandbytes.functional as F
    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    quantized = AutoModelForCausalLM.from_pretrained(llama_base, dtype=torch.float32, quantization_config=(
        BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=torch.float32)))
    full = AutoModelForCausalLM.from_pretrained(llama_base, dtype=torch.float32)
    layers = dict(quantized.named_modules())
    with torch.no_grad():
        for name, module in full.named_modules():
            if isinstance(layers.get(name), bnb.nn.Linear4bit):
                w = layers[name].weight
                module.weight.copy_(F.dequantize_4bit(w.data, w.quant_state))
    quantized = prepare_model_for_kbit_training(quantized, use_gradient_checkpointing=False)
    models = []
    for base in (quantized, full):
        torch.manual_seed(1)
        models.append(get_peft_model(base, LoraConfig(r=4, target_modules=["q_proj", "v_proj", "down_proj"],
                                                      lora_dropout=0.0, init_lora_weights=False)))
    ids = torch.randint(3, 100, (2, 6), generator=torch.Generator().manual_seed(0))
    grads = []
    for model in models:
        model(input_ids=ids).logits.float().square().mean().backward()
        grads.append({n: p.grad for n, p in model.named_parameters() if p.requires_grad})
    for name, g in grads[1].items():
        assert (grads[0][name] - g).abs().max() <= 0.02 * g.abs().max(), name


@pytest.mark.parametrize("name", ["lora-1b4-8gb", "qlora-1b4-8gb"])
def test_8gb_presets_fit_a_1b4_model_by_memory_estimate(name):
    """The presets' settings, as `llmkit peft` runs them (base dtype, quantization, targets), on BLOOM-1b4."""
    from llmkit.config import MemoryEstimateConfig, PeftConfig
    from llmkit.configio import resolve
    from llmkit.memory import estimate

    cfg = resolve(PeftConfig, preset=name, overrides={"model": "bigscience/bloom-1b4", "data": "d.jsonl",
                                                      "output_dir": "o"})
    memory = MemoryEstimateConfig(
        model="bloom-1b4", mode="train", precision=cfg.base_dtype, quant=cfg.quant, double_quant=cfg.double_quant,
        peft=cfg.method, lora_rank=cfg.lora_rank, lora_targets=cfg.lora_targets or ("query_key_value",),
        optimizer=cfg.optimizer, batch_size=cfg.batch_size, grad_accum=cfg.grad_accum, seq_len=cfg.seq_len,
        grad_checkpointing=cfg.grad_checkpointing, gpu_memory="8GiB")
    result = estimate(memory)
    assert result.fits, result.per_device
    assert result.per_device["total"] < 7.0 * 2**30


def test_interrupted_adapter_run_resumes_to_the_same_losses(llama_base, qa_file, tmp_path):
    import os
    import signal

    from transformers import TrainerCallback

    from llmkit.training.peft import run_peft
    from llmkit.training.run import TrainingInterrupted

    common = dict(max_steps=6, lr=1e-2, scheduler="cosine", warmup_ratio=0.2, batch_size=2)
    run_peft(_config(llama_base, qa_file, tmp_path / "full", **common))

    class CtrlC(TrainerCallback):
        def on_step_begin(self, args, state, control, **kwargs):
            if state.global_step == 3:
                os.kill(os.getpid(), signal.SIGINT)

    with pytest.raises(TrainingInterrupted) as stop:
        run_peft(_config(llama_base, qa_file, tmp_path / "cut", **common), callbacks=[CtrlC()])
    assert stop.value.result.status == "interrupted" and not (tmp_path / "cut" / "adapter").exists()
    assert "method: lora" in (tmp_path / "cut" / "resolved_config.yaml").read_text()
    resumed = run_peft(_config(llama_base, qa_file, tmp_path / "cut", resume="auto", **common))
    assert resumed.training.resumed_from.endswith("checkpoint-4") and resumed.training.steps == 6
    assert _losses(tmp_path / "cut") == pytest.approx(_losses(tmp_path / "full"), abs=1e-6)


def test_preview_shows_what_the_adapter_trains_on(cli, llama_base, qa_file, tmp_path):
    result = cli("peft", "-m", llama_base, "--data", qa_file, "--template", "chatml", "--preview", "1", "--json")
    assert result.exit_code == 0, result.stderr
    shown = json.loads(result.stdout)
    assert len(shown) == 1 and any(label != -100 for label in shown[0]["labels"])
    printed = cli("peft", "-m", "m", "--data", "d.jsonl", "-o", tmp_path / "o", "--method", "ia3", "--print-config")
    assert printed.exit_code == 0 and "method: ia3" in printed.stdout and "lr: 0.003" in printed.stdout


def test_lora_on_a_classification_head_trains_the_head_and_saves_it_with_the_adapter(bert_cls_dir, tmp_path):
    """`llmkit peft --task seq-cls`: peft's SEQ_CLS task type trains the new classifier in full next to LoRA."""
    from safetensors.torch import load_file

    from llmkit.training.peft import run_peft

    data = tmp_path / "reviews.jsonl"
    rows = [{"text": ("good great fine " if i % 2 else "bad awful poor ") * 3, "label": "pos" if i % 2 else "neg"}
            for i in range(16)]
    data.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    result = run_peft(_config(bert_cls_dir, data, tmp_path / "run", task="seq-cls", template=None, max_steps=3,
                              seq_len=32, lr=1e-2, lora_targets=("query", "value")))
    saved = load_file(str(tmp_path / "run" / "adapter" / "adapter_model.safetensors"))
    assert any("classifier" in k for k in saved) and any("lora_A" in k for k in saved)
    assert any(r.part.startswith("modules_to_save") for r in result.parameter_table)
    info = json.loads((tmp_path / "run" / "adapter" / "llmkit_adapter.json").read_text())
    assert info["task"] == "seq-cls"


@pytest.mark.parametrize("method, extra", [("p-tuning", {"encoder": "lstm", "encoder_hidden_size": 16}),
                                           ("prefix-tuning", {"prefix_projection": True, "encoder_hidden_size": 16}),
                                           ("lora", {"use_rslora": True, "use_dora": True, "lora_targets": ("q_proj",)})])
def test_method_variants_train(method, extra, llama_base, qa_file, tmp_path):
    from llmkit.training.peft import run_peft

    result = run_peft(_config(llama_base, qa_file, tmp_path / "run", method=method, max_steps=2, num_virtual_tokens=4,
                              **extra))
    assert result.training.status == "completed" and result.trainable_parameters > 0
    config = json.loads((tmp_path / "run" / "adapter" / "adapter_config.json").read_text())
    if method == "p-tuning":
        assert config["encoder_reparameterization_type"] == "LSTM"
    elif method == "prefix-tuning":
        assert config["prefix_projection"] is True
    else:
        assert config["use_rslora"] is True and config["use_dora"] is True
        assert any(r.part == "DoRA magnitudes" for r in result.parameter_table)
