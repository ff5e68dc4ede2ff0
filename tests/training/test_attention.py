"""--attention on the training commands: the kernel the model is built or loaded with, exact either way."""

from __future__ import annotations

import json

import pytest
from transformers import TrainerCallback

from helpers import assert_clean_error, base_config


class Kernel(TrainerCallback):
    """The attention implementation of the model the Trainer trains, and of every attention module in it."""

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        self.config = model.config._attn_implementation
        self.modules = {m.config._attn_implementation for m in model.modules()
                        if type(m).__name__.endswith("Attention") and hasattr(m, "config")}


def _losses(run_dir):
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [r["loss"] for r in rows if "loss" in r]


def test_pretrain_from_scratch_builds_the_kernel_asked_and_eager_trains_as_sdpa(configs, bpe_dir, docs_file,
                                                                               tmp_path):
    from llmkit.training.pretrain import run_pretrain

    losses = {}
    for attention in ("eager", "sdpa"):
        kernel = Kernel()
        out = tmp_path / attention
        run_pretrain(base_config(model=str(configs["llama"]), tokenizer=str(bpe_dir), data=str(docs_file),
                                 output_dir=str(out), attention=attention, max_steps=3), callbacks=[kernel])
        assert kernel.config == attention and kernel.modules == {attention}
        losses[attention] = _losses(out)
    assert losses["eager"] == pytest.approx(losses["sdpa"], abs=1e-5)


def test_peft_loads_its_base_with_the_kernel_asked(llama_base, tmp_path):
    from llmkit.config import PeftConfig
    from llmkit.training.peft import run_peft

    data = tmp_path / "qa.jsonl"
    data.write_text("".join(json.dumps({"prompt": f"{i} plus one?", "completion": f" {i + 1}."}) + "\n"
                            for i in range(8)), encoding="utf-8")
    kernel = Kernel()
    run_peft(PeftConfig(model=str(llama_base), data=str(data), output_dir=str(tmp_path / "run"), method="lora",
                        template="chatml", attention="eager", max_steps=1, batch_size=4, seq_len=32, save_steps=100),
             callbacks=[kernel])
    assert kernel.config == "eager" and kernel.modules == {"eager"}


def test_flash_on_a_cpu_machine_is_refused_with_the_reason(cli, configs, bpe_dir, docs_file, tmp_path):
    out = tmp_path / "run"
    result = cli("pretrain", "--model", configs["llama"], "--from-scratch", "-t", bpe_dir, "--data", docs_file,
                 "-o", out, "--max-steps", "1", "--attention", "flash")
    assert_clean_error(result, 2, "--attention flash needs a CUDA GPU")
    assert not out.exists()
