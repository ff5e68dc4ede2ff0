"""One translation between commands: a training command's memory is the same number wherever llmkit shows it.

For each training command line: `llmkit launch --dry-run` (which resolves the command through its own parser), the
forecast the training run itself prints (read off the model as the run builds it: peft wrapping, bitsandbytes
quantization), and `llmkit memory-estimate` with the equivalent flags written out by hand here, agree to the byte.
And every plan `memory-estimate --plan` prints is a command line its llmkit command accepts.
"""

import dataclasses
import json
import shlex

import pytest

from helpers import assert_clean_error
from llmkit.config import parse_size

TINY = {
    # layer sizes are multiples of 64: bitsandbytes' CPU 4-bit kernels need that
    "llama": dict(model_type="llama", hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256, vocab_size=384),
    "gpt2": dict(model_type="gpt2", n_embd=64, n_layer=2, n_head=4, n_positions=256, vocab_size=384),
    "bert": dict(model_type="bert", hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                 num_attention_heads=4, max_position_embeddings=256, vocab_size=384),
    "t5": dict(model_type="t5", is_encoder_decoder=True, d_model=64, d_kv=16, d_ff=128, num_layers=2,
               num_decoder_layers=2, num_heads=4, feed_forward_proj="relu", vocab_size=384,
               decoder_start_token_id=0),
}
TASK = {"llama": "causal-lm", "gpt2": "causal-lm", "bert": "masked-lm", "t5": "seq2seq"}


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """Tiny randomly initialised checkpoints (weights and config.json), one per family."""
    import torch
    import transformers

    from llmkit.modeling import AUTO_CLASSES

    torch.manual_seed(0)
    out = {}
    for name, fields in TINY.items():
        fields = dict(fields)
        config = transformers.AutoConfig.for_model(fields.pop("model_type"), **fields)
        model = getattr(transformers, AUTO_CLASSES[TASK[name]]).from_config(config)
        path = tmp_path_factory.mktemp("translate") / name
        model.save_pretrained(path)
        out[name] = path
    return out


# (family, training command after `llmkit`, memory-estimate flags that describe the same run, launch flags)
CASES = [
    ("llama", "pretrain --batch-size 4 --seq-len 64", "--batch-size 4 --seq-len 64", ""),
    ("llama", "pretrain --batch-size 2 --seq-len 128 --grad-accum 4", "--batch-size 2 --seq-len 128 --grad-accum 4", ""),
    ("llama", "pretrain -b 4 --seq-len 64 --grad-checkpointing", "--batch-size 4 --seq-len 64 --grad-checkpointing", ""),
    ("llama", "pretrain -b 4 --seq-len 64 --optimizer adafactor", "--batch-size 4 --seq-len 64 --optimizer adafactor",
     ""),
    ("llama", "pretrain -b 4 --seq-len 64 --optimizer sgd", "--batch-size 4 --seq-len 64 --optimizer sgd", ""),
    ("llama", "pretrain -b 4 --seq-len 64 --optimizer adamw-8bit",
     "--batch-size 4 --seq-len 64 --optimizer adamw-8bit", ""),
    ("llama", "pretrain -b 4 --seq-len 64 --trainable-layers 1", "--batch-size 4 --seq-len 64 --trainable-layers 1",
     ""),
    ("llama", "pretrain -b 4 --seq-len 64 --freeze-base", "--batch-size 4 --seq-len 64 --freeze-base", ""),
    ("llama", "pretrain -b 4 --seq-len 64 --mixed-precision bf16", "--batch-size 4 --seq-len 64 --mixed-precision bf16",
     ""),
    ("gpt2", "pretrain -b 4 --seq-len 64", "--batch-size 4 --seq-len 64", ""),
    # CUDA and CPU autocast differ for GPT-2: a CPU run is forecast under the CPU rules
    ("gpt2", "pretrain -b 4 --seq-len 64 --mixed-precision bf16", "--batch-size 4 --seq-len 64 --mixed-precision bf16",
     ""),
    ("bert", "pretrain --objective masked-lm -b 4 --seq-len 64", "--task masked-lm --batch-size 4 --seq-len 64", ""),
    ("t5", "pretrain --objective seq2seq -b 4 --seq-len 64", "--task seq2seq --batch-size 4 --seq-len 64", ""),
    ("llama", "sft -b 2 --seq-len 128", "--batch-size 2 --seq-len 128", ""),
    ("llama", "sft -b 2 --seq-len 128 --grad-accum 2 --grad-checkpointing",
     "--batch-size 2 --seq-len 128 --grad-accum 2 --grad-checkpointing", ""),
    ("llama", "pretrain -b 4 --seq-len 64", "--batch-size 4 --seq-len 64 --zero 2 --gpus 2", "--strategy zero2"),
    ("llama", "pretrain -b 4 --seq-len 64", "--batch-size 4 --seq-len 64 --zero 3 --offload optimizer+params --gpus 2",
     "--strategy zero3-offload"),
    ("llama", "peft -b 2 --seq-len 64", "--peft lora --batch-size 2 --seq-len 64", ""),
    ("llama", "peft -b 2 --seq-len 64 --lora-rank 32 --lora-targets all-linear",
     "--peft lora --lora-rank 32 --lora-targets all-linear --batch-size 2 --seq-len 64", ""),
    ("llama", "peft -b 2 --seq-len 64 --lora-rank 16 --lora-targets q_proj,k_proj,v_proj,o_proj --use-rslora",
     "--peft lora --lora-rank 16 --lora-targets q_proj,k_proj,v_proj,o_proj --batch-size 2 --seq-len 64", ""),
    ("llama", "peft -b 2 --seq-len 64 --lora-rank 8 --base-dtype bf16",
     "--peft lora --precision bf16 --batch-size 2 --seq-len 64", ""),
    ("llama", "peft -b 2 --seq-len 64 --method ia3", "--peft ia3 --batch-size 2 --seq-len 64", ""),
    ("llama", "peft -b 2 --seq-len 64 --method prompt-tuning --num-virtual-tokens 10",
     "--peft prompt-tuning --num-virtual-tokens 10 --batch-size 2 --seq-len 64", ""),
    ("llama", "peft -b 2 --seq-len 64 --method prefix-tuning --num-virtual-tokens 8",
     "--peft prefix-tuning --num-virtual-tokens 8 --batch-size 2 --seq-len 64", ""),
    ("llama", "peft -b 2 --seq-len 64 --quant nf4 --double-quant",
     "--peft lora --quant nf4 --double-quant --precision fp32 --batch-size 2 --seq-len 64", ""),
    ("llama", "peft -b 2 --seq-len 64 --quant fp4 --lora-targets all-linear --lora-rank 16",
     "--peft lora --quant fp4 --precision fp32 --lora-targets all-linear --lora-rank 16 --batch-size 2 --seq-len 64",
     ""),
    ("llama", "peft -b 2 --seq-len 64 --quant int8", "--peft lora --quant int8 --precision fp32 --batch-size 2 "
     "--seq-len 64", ""),
    ("llama", "peft -b 2 --seq-len 64 --lora-rank 4", "--peft lora --lora-rank 4 --batch-size 2 --seq-len 64 --zero 2 "
     "--gpus 2", "--strategy zero2"),
    ("gpt2", "peft -b 2 --seq-len 64 --objective causal-lm", "--peft lora --batch-size 2 --seq-len 64", ""),
    ("bert", "peft -b 2 --seq-len 64 --objective masked-lm",
     "--task masked-lm --peft lora --batch-size 2 --seq-len 64", ""),
    ("t5", "peft -b 2 --seq-len 64 --objective seq2seq", "--task seq2seq --peft lora --batch-size 2 --seq-len 64", ""),
]


def _root():
    from typer.main import get_command

    from llmkit.commands import app

    return get_command(app)


def _launch_memory(cli, model_dir, data, command: str, launch_flags: str) -> dict:
    strategy = shlex.split(launch_flags)
    processes = "2" if strategy else "1"
    result = cli("launch", "--cpu", "--num-processes", processes, *strategy, "--dry-run", "--json", "--", "llmkit",
                 *shlex.split(command), "--model", model_dir, "--data", data, "-o", "out")
    assert result.exit_code == 0, (result.stdout, result.stderr)
    plan = json.loads(result.stdout)
    assert plan["memory"] is not None, plan["memory_note"]
    return plan["memory"]["per_device"]


def _estimate(cli, model_dir, flags: str) -> dict:
    # the runs above are CPU runs (launch --cpu, the forecast without a GPU): the estimate under the CPU rules
    result = cli("memory-estimate", "--model", model_dir, *shlex.split(flags), "--overhead", "0", "--device", "cpu",
                 "--json")
    assert result.exit_code == 0, (result.stdout, result.stderr)
    return json.loads(result.stdout)["per_device"]


def _forecast(model_dir, command: str, strategy: str, monkeypatch) -> dict:
    """The forecast the training run prints, made as the run makes it: its config from the command's own parser,
    the model loaded and (peft) wrapped by the run's own code, the DeepSpeed config launch writes."""
    from llmkit import launch as launch_core
    from llmkit.commands._runtime import resolve_command_line
    from llmkit.modeling import load_model
    from llmkit.training import integrations

    cfg = resolve_command_line([*shlex.split(command), "--model", str(model_dir), "--data", "d.jsonl", "-o", "out"],
                               _root())
    ds_config = None
    if strategy:
        ds_config = launch_core.deepspeed_config(strategy)
        monkeypatch.setenv("WORLD_SIZE", "2")
    if hasattr(cfg, "method"):   # llmkit peft: the run's AdapterPlan loads (QLoRA: quantizes) and wraps the base
        from llmkit.training.peft import AdapterPlan, quantization_config

        plan = AdapterPlan(cfg, tokenizer_source=str(model_dir), quantization_config=quantization_config(cfg))
        model = plan(load_model(str(model_dir), cfg.model_task, **plan.load_options))
        run_cfg = cfg.training_config()
    else:
        model = load_model(str(model_dir), cfg.model_task, dtype="fp32")
        run_cfg = cfg
        from llmkit.training.trainer import apply_freezing

        apply_freezing(model, cfg.freeze_base, cfg.trainable_layers)
    est, _ = integrations.memory_forecast(run_cfg, model, ds_config, on_gpu=False)
    return dict(est.per_device)


@pytest.mark.parametrize("family, command, estimate_flags, launch_flags", CASES,
                         ids=[f"{c[0]}:{c[1]}:{c[3]}" for c in CASES])
def test_launch_forecast_and_memory_estimate_agree(cli, models, docs_file, monkeypatch, family, command,
                                                   estimate_flags, launch_flags):
    model_dir = models[family]
    launched = _launch_memory(cli, model_dir, docs_file, command, launch_flags)
    estimated = _estimate(cli, model_dir, estimate_flags)
    forecast = _forecast(model_dir, command, launch_flags.split()[-1] if launch_flags else "", monkeypatch)
    assert launched == estimated, (launched, estimated)
    assert forecast == estimated, (forecast, estimated)


def test_launch_sizes_the_adapter_the_command_asks_for(cli, docs_file):
    """The bug this layer fixes: launch used to size the default rank-8 q,v adapter whatever the command said."""
    def total(extra):
        result = cli("launch", "--num-processes", "1", "--dry-run", "--json", "--", "llmkit", "peft", "-m",
                     "llama-2-7b", "--data", docs_file, "-o", "out", *extra)
        assert result.exit_code == 0, result.stderr
        return json.loads(result.stdout)["memory"]["per_device"]["total"]

    small, big = total([]), total(["--lora-rank", "256", "--lora-targets", "all-linear"])
    expected = json.loads(cli("memory-estimate", "--model", "llama-2-7b", "--peft", "lora", "--lora-rank", "256",
                              "--lora-targets", "all-linear", "--batch-size", "8", "--json").stdout)
    assert big == expected["per_device"]["total"] and big > small * 1.1


# ---------------------------------------------------------------------------------------------- plans -> commands

PLAN_MATRIX = [
    # (model flags, training flags, gpu memory, gpus)
    ("--params 1.4B", "--batch-size 8 --seq-len 1024", "8GiB", "1"),
    ("--params 1.4B", "--batch-size 8 --seq-len 1024", "24GiB", "1"),
    ("--params 1.4B", "--batch-size 4 --seq-len 2048 --peft lora", "8GiB", "1"),
    ("--params 1.4B", "--batch-size 16 --seq-len 1024", "24GiB", "8"),
    ("--params 7B", "--batch-size 4 --seq-len 2048", "24GiB", "1"),
    ("--params 7B", "--batch-size 4 --seq-len 2048", "80GiB", "1"),
    ("--params 7B", "--batch-size 4 --seq-len 2048", "24GiB", "8"),
    ("--params 7B", "--batch-size 4 --seq-len 2048 --peft lora", "16GiB", "1"),
    ("--params 7B", "--batch-size 4 --seq-len 2048 --peft lora --quant nf4 --double-quant", "8GiB", "1"),
    ("--params 7B", "--batch-size 8 --seq-len 1024 --optimizer adafactor", "24GiB", "8"),
    ("--params 70B", "--batch-size 1 --seq-len 2048", "80GiB", "8"),
    ("--params 70B", "--batch-size 4 --seq-len 2048 --peft lora --quant nf4", "48GiB", "1"),
    ("--params 70B", "--batch-size 2 --seq-len 4096 --peft lora", "80GiB", "8"),
    ("--model llama-2-7b", "--batch-size 4 --seq-len 2048", "24GiB", "1"),
    ("--model bert-large", "--batch-size 32 --seq-len 512", "4GiB", "1"),
    ("--model t5-base", "--batch-size 16 --seq-len 512 --task seq2seq", "8GiB", "1"),
    ("--params 350M", "--batch-size 32 --seq-len 1024", "8GiB", "1"),
    ("--params 3B", "--batch-size 8 --seq-len 2048 --peft lora --lora-targets all-linear", "12GiB", "1"),
    ("--params 13B", "--batch-size 2 --seq-len 2048", "40GiB", "1"),
    ("--params 13B", "--batch-size 4 --seq-len 2048", "40GiB", "4"),
    ("--params 13B", "--batch-size 4 --seq-len 4096 --peft lora --quant nf4 --double-quant", "24GiB", "1"),
    ("--params 30B", "--batch-size 8 --seq-len 2048", "80GiB", "8"),
    ("--params 70B", "--batch-size 8 --seq-len 4096 --peft lora --quant nf4", "80GiB", "2"),
    ("--model llama-2-7b", "--batch-size 4 --seq-len 2048 --peft lora", "16GiB", "1"),
    ("--model llama-2-7b", "--batch-size 4 --seq-len 2048", "24GiB", "8"),
    ("--model llama-3-8b", "--batch-size 2 --seq-len 4096 --peft lora --mixed-precision bf16", "24GiB", "1"),
    ("--model qwen2.5-7b", "--batch-size 8 --seq-len 1024 --optimizer adamw-8bit", "40GiB", "2"),
    ("--model mistral-7b", "--batch-size 4 --seq-len 2048 --peft ia3", "16GiB", "1"),
    ("--model gpt2", "--batch-size 64 --seq-len 1024", "8GiB", "1"),
    ("--model bert-base", "--batch-size 64 --seq-len 512 --task seq-cls", "4GiB", "1"),
    ("--model llama-2-7b", "--mode inference --batch-size 16 --seq-len 4096", "16GiB", "1"),
    ("--model llama-3-8b", "--mode inference --batch-size 8 --seq-len 8192", "12GiB", "1"),
    ("--params 70B", "--mode inference --batch-size 4 --seq-len 2048", "48GiB", "1"),
    ("--model qwen2.5-0.5b", "--mode inference --precision fp32 --batch-size 64 --seq-len 4096", "8GiB", "1"),
    # FSDP: plans that name it, and runs asked for under it
    ("--model llama-2-7b", "--batch-size 1 --seq-len 2048", "24GiB", "8"),
    ("--params 13B", "--batch-size 2 --seq-len 2048 --strategy fsdp --mixed-precision bf16", "40GiB", "8"),
    ("--model llama-3-8b", "--batch-size 2 --seq-len 4096 --strategy fsdp --peft lora", "24GiB", "4"),
]


@pytest.mark.parametrize("model, flags, budget, gpus", PLAN_MATRIX, ids=[" ".join(c) for c in PLAN_MATRIX])
def test_every_plan_is_a_command_line_its_command_accepts(cli, model, flags, budget, gpus):
    from llmkit.commands._runtime import resolve_command_line

    result = cli("memory-estimate", *shlex.split(model), *shlex.split(flags), "--gpu-memory", budget, "--gpus", gpus,
                 "--plan", "--json")
    assert result.exit_code == 0, result.stderr
    plans = json.loads(result.stdout)["plans"]
    assert plans   # every case of the matrix does not fit as asked
    for plan in plans:
        argv = plan["argv"]
        assert argv[0] == "llmkit" and shlex.split(plan["command"]) == argv
        if argv[1] == "launch":
            dashes = argv.index("--")
            # a plan names placeholder sources (MODEL, DATA): its flags are checked, its sources cannot be. launch
            # refuses FSDP on CPUs, and plans it for GPUs without needing one
            cpu = [] if argv[argv.index("--strategy") + 1] == "fsdp" else ["--cpu"]
            launched = cli(*argv[1:dashes], *cpu, "--dry-run", "--no-check-sources", "--json", *argv[dashes:])
            assert launched.exit_code == 0, (plan["command"], launched.stderr)
            training = argv[dashes + 2:]
        else:
            training = argv[1:]
        printed = cli(*training, "--print-config")
        assert printed.exit_code == 0, (plan["command"], printed.stderr)
        resolved = resolve_command_line(training, _root())   # the same parser launch uses
        # (b) the command line, read back, fits: re-estimated from what the command resolves to
        assert _reestimate(argv, resolved, model, flags).per_device["total"] <= parse_size(budget, "budget"), plan


def _reestimate(argv, resolved, model, flags):
    """The memory estimate of a plan's command line, from the resolved training (or generate) config and the launch
    flags, mapped here by hand (not through the plan's own config)."""
    from llmkit import memory, translate
    from llmkit.config import STRATEGY_ZERO, MemoryEstimateConfig

    original = MemoryEstimateConfig(**_model_kwargs(model), **_flag_kwargs(flags))
    spec = memory.load_model_spec(original)
    if argv[1] == "generate":
        quant = "nf4" if resolved.load_in_4bit else "int8" if resolved.load_in_8bit else "none"
        return memory.estimate(dataclasses.replace(original, batch_size=resolved.batch_size,
                                                   seq_len=resolved.max_length, precision=resolved.dtype,
                                                   quant=quant), spec)
    zero, offload, gpus, strategy = 0, "none", 1, None
    if argv[1] == "launch":
        strategy = argv[argv.index("--strategy") + 1]
        zero, offload = STRATEGY_ZERO[strategy]
        gpus = int(argv[argv.index("--num-processes") + 1])
    mem_cfg = translate.memory_config(resolved, zero=zero, offload=offload, gpus=gpus, attention=original.attention,
                                      strategy=strategy)
    return memory.estimate(dataclasses.replace(mem_cfg, model=original.model, params=original.params), spec)


def _model_kwargs(model: str) -> dict:
    flag, value = shlex.split(model)
    return {flag[2:]: value}


def _flag_kwargs(flags: str) -> dict:
    tokens, out = shlex.split(flags), {}
    for i, flag in enumerate(tokens):
        if not flag.startswith("--"):
            continue
        key, value = flag[2:].replace("-", "_"), tokens[i + 1] if i + 1 < len(tokens) else "--"
        if value.startswith("--"):
            out[key] = True
        else:
            out[key] = tuple(value.split(",")) if key == "lora_targets" else int(value) if value.isdigit() else value
    return out


def test_a_plan_uses_the_training_commands_own_flags(cli):
    plans = json.loads(cli("memory-estimate", "--params", "7B", "--gpu-memory", "24GiB", "--plan",
                           "--json").stdout)["plans"]
    assert plans
    for plan in plans:
        for flag in ("--zero", "--offload", "--precision", "--peft", "--gpus"):
            assert flag not in plan["training_flags"], plan


def test_launch_refuses_the_training_commands_bad_flags_once(cli):
    assert_clean_error(cli("launch", "--num-processes", "1", "--dry-run", "--", "llmkit", "peft", "-m", "x",
                           "--data", "d", "-o", "o", "--lora-rnak", "4"), 2, "the training command is invalid",
                       "--lora-rnak")
    assert_clean_error(cli("launch", "--num-processes", "1", "--dry-run", "--", "llmkit", "sft", "-m", "x"), 2,
                       "the training command is invalid", "--data is required")
