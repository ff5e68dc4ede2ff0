"""QLoRA trains against exactly the weights it loaded, after an evaluation as before one.

An eval-mode forward without gradients (the probe `llmkit peft` runs before training, `--eval-split`'s evaluations)
once made bitsandbytes repack CPU 4-bit weights for a kernel without a backward: LoRA on q/v then got no gradient
at all, on all-linear a wrong one. These tests compare the LoRA gradients through llmkit's QLoRA setup with those of
a plain fp32 transformers + peft model holding the dequantized weights, and check that a toy QLoRA run learns.
"""

import json

import pytest
import torch


# nf4 as QLoRA recipes use it (block constants quantized too), fp4 without: bitsandbytes keeps them differently
QUANTS = {"nf4": dict(quant="nf4", double_quant=True), "fp4": dict(quant="fp4"), "int8": dict(quant="int8")}
TARGETS = {"q,v": ("q_proj", "v_proj"), "all-linear": ("all-linear",)}


@pytest.fixture(scope="session")
def qa_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("qlora-data") / "qa.jsonl"
    rows = [{"prompt": f"What is {i} plus one?", "completion": f" It is {i + 1}."} for i in range(10)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def _config(base, data, out, **fields):
    from llmkit.config import PeftConfig

    defaults = dict(model=str(base), data=str(data), output_dir=str(out), template="chatml", seq_len=48,
                    batch_size=4, max_steps=16, logging_steps=1, save_steps=100, scheduler="constant",
                    lora_dropout=0.0)
    defaults.update(fields)
    return PeftConfig(**defaults)


def _dequantized(layer) -> torch.Tensor:
    """The fp32 weight a bitsandbytes layer stands for, from its codes and scales as loaded."""
    import bitsandbytes as bnb
    import bitsandbytes.functional as F

    if isinstance(layer, bnb.nn.Linear4bit):
        return F.dequantize_4bit(layer.weight.data, layer.weight.quant_state)
    return layer.weight.data.float() * layer.weight.SCB.float().unsqueeze(1) / 127  # int8: row-wise absmax


@pytest.mark.parametrize("targets", list(TARGETS), ids=list(TARGETS))
@pytest.mark.parametrize("quant", list(QUANTS))
def test_lora_gradients_after_an_eval_pass_equal_the_dequantized_fp32_models(quant, targets, llama_base, qa_file,
                                                                             tmp_path):
    import bitsandbytes as bnb
    from peft import LoraConfig, get_peft_model
    from transformers import LlamaForCausalLM

    from llmkit.training.peft import AdapterPlan, quantization_config
    from llmkit.training.models import load_model_and_tokenizer

    cfg = _config(llama_base, qa_file, tmp_path / "run", lora_rank=4, lora_targets=TARGETS[targets], **QUANTS[quant])
    # the model as `llmkit peft` loads and wraps it (the wrapping runs its probe forward, in eval mode, no grad)
    plan = AdapterPlan(cfg, tokenizer_source=str(llama_base), quantization_config=quantization_config(cfg))
    quantized, _, _ = load_model_and_tokenizer(cfg.training_config(), **plan.load_options)
    layers = {n: m for n, m in quantized.named_modules() if isinstance(m, (bnb.nn.Linear4bit, bnb.nn.Linear8bitLt))}
    assert len(layers) == 14
    dequantized = {n: _dequantized(m).clone() for n, m in layers.items()}  # before any forward has run
    qlora = plan(quantized)

    reference = LlamaForCausalLM.from_pretrained(llama_base, dtype=torch.float32)
    with torch.no_grad():
        for name, module in reference.named_modules():
            if name in dequantized:
                module.weight.copy_(dequantized.pop(name))
    assert not dequantized
    reference = get_peft_model(reference, LoraConfig(r=4, lora_alpha=cfg.lora_alpha, lora_dropout=0.0,
                                                     target_modules="all-linear" if targets == "all-linear"
                                                     else list(TARGETS[targets])))
    # the same LoRA weights on both, B non-zero so that every A gets a gradient too
    lora = {n: p for n, p in qlora.named_parameters() if p.requires_grad}
    reference_lora = {n: p for n, p in reference.named_parameters() if p.requires_grad}
    assert sorted(lora) == sorted(reference_lora) and len(lora) == (8 if targets == "q,v" else 28)
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, p in lora.items():
            p.copy_(torch.randn(p.shape, generator=generator) * 0.1)
            reference_lora[name].copy_(p)

    ids = torch.randint(3, 500, (2, 8), generator=generator)   # sequence length 1 is a bitsandbytes CPU quirk
    qlora.eval()                                               # an evaluation, as the trainer runs it
    with torch.no_grad():
        qlora(input_ids=ids, labels=ids)
    grads = []
    for model in (qlora, reference):
        model.train()
        model(input_ids=ids, labels=ids).loss.backward()
        grads.append({n: p.grad for n, p in model.named_parameters() if p.requires_grad})
    for name, want in grads[1].items():
        got = grads[0][name]
        assert want.abs().max() > 0 and got is not None, name
        # the same fp32 arithmetic on the same weights: only summation order and int8's scale rounding
        # (SCB * (1/127) in bitsandbytes) differ; measured <= 1.1e-5, the bug gave errors of order 1
        assert (got - want).abs().max() <= 1e-4 * want.abs().max(), (name, float((got - want).abs().max()))


def _losses(run):
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return [r for r in rows if "loss" in r]


def test_a_toy_qlora_run_learns_as_the_fp32_lora_run_does(llama_base, qa_file, tmp_path):
    """`llmkit peft --quant nf4 --eval-split 2` (an evaluation before the first step) on the default q,v targets."""
    from safetensors.torch import load_file

    from llmkit.training.peft import run_peft

    results = {}
    for name, quant in (("fp32", {}), ("nf4", QUANTS["nf4"])):
        out = tmp_path / name
        result = run_peft(_config(llama_base, qa_file, out, max_steps=12, lr=1e-2, eval_split=2, **quant))
        assert result.targets == ["q_proj", "v_proj"] and result.training.initial_eval_loss is not None
        rows = _losses(out)
        assert len(rows) == 12 and all(r["grad_norm"] > 0 for r in rows)
        lora_b = [t for k, t in load_file(out / "adapter" / "adapter_model.safetensors").items() if "lora_B" in k]
        assert len(lora_b) == 4 and min(float(t.abs().max()) for t in lora_b) > 0
        losses = [r["loss"] for r in rows]
        results[name] = (losses[0], sum(losses[-3:]) / 3)
    # learns: the mean loss of the last 3 steps is below the first step's by at least 80 % of what the fp32 run's
    # falls (both fell 0.35 nats here; a QLoRA run whose adapter gets no gradient stays where it started)
    (fp32_first, fp32_last), (nf4_first, nf4_last) = results["fp32"], results["nf4"]
    assert fp32_first - fp32_last > 0.2, results
    assert nf4_first - nf4_last > 0.8 * (fp32_first - fp32_last), results
