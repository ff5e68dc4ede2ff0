"""Constants and plain functions shared by the tests (`from helpers import ...`); fixtures live in conftest.py."""

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
HEAVY_MODULES = ("torch", "transformers", "tokenizers", "datasets", "peft", "bitsandbytes", "accelerate", "deepspeed")

CHAT_TEMPLATE = ("{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}</s>{% endfor %}"
                 "{% if add_generation_prompt %}<|assistant|>{% endif %}")
CAUSAL = dict(num_hidden_layers=2, hidden_size=32, intermediate_size=64, num_attention_heads=4, num_key_value_heads=2,
              bos_token_id=0, eos_token_id=1, pad_token_id=2, max_position_embeddings=64, tie_word_embeddings=False,
              initializer_range=0.2)

# bitsandbytes' CPU 4-bit kernels need layer input sizes that are multiples of the blocksize: hidden 64/128
QUANT_LLAMA = dict(num_hidden_layers=2, hidden_size=64, intermediate_size=128, num_attention_heads=4,
                   num_key_value_heads=2, bos_token_id=0, eos_token_id=1, pad_token_id=2, max_position_embeddings=128,
                   tie_word_embeddings=False)

# a tiny LLaMA whose linear layers' inputs are multiples of 64: bitsandbytes' CPU 4-bit kernels need them (QLoRA)
LLAMA_BASE = dict(num_hidden_layers=2, hidden_size=64, intermediate_size=128, num_attention_heads=4,
                  num_key_value_heads=2, max_position_embeddings=256, tie_word_embeddings=False)

TINY_LLAMA = dict(model_type="llama", hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256)
TINY_BERT = dict(model_type="bert", hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                 num_attention_heads=4, max_position_embeddings=256, hidden_dropout_prob=0.0,
                 attention_probs_dropout_prob=0.0)
TINY_T5 = dict(model_type="t5", is_encoder_decoder=True, d_model=32, d_kv=8, d_ff=64, num_layers=2,
               num_decoder_layers=2, num_heads=4, dropout_rate=0.0, feed_forward_proj="relu",
               tie_word_embeddings=True)


def write_config(path, fields):
    path.write_text(json.dumps(fields), encoding="utf-8")
    return path


def base_config(**fields):
    from llmkit.config import PretrainConfig

    defaults = dict(from_scratch=True, seq_len=64, batch_size=4, max_steps=2, logging_steps=1, save_steps=100,
                    scheduler="constant", lr=1e-3)
    defaults.update(fields)
    return PretrainConfig(**defaults)


def build_llama(out: Path, bpe_dir: Path, seed: int = 0, **overrides) -> Path:
    import torch

    torch.set_num_threads(1)
    from llmkit.modeling import build_model, load_tokenizer

    tok = load_tokenizer(str(bpe_dir))
    tok.chat_template = CHAT_TEMPLATE
    model = build_model("llama-2-7b", overrides={**QUANT_LLAMA, **overrides}, vocab_size=len(tok), seed=seed)
    model.generation_config.max_new_tokens = 7
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return out


def load_causal(path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    return AutoModelForCausalLM.from_pretrained(path).eval(), AutoTokenizer.from_pretrained(path)


def run_json(cli, *args, **kwargs) -> dict:
    result = cli("generate", *args, "--json", **kwargs)
    assert result.exit_code == 0, (result.stdout, result.stderr, result.exception)
    return json.loads(result.stdout)


def assert_clean_error(result, exit_code: int, *fragments: str) -> None:
    """One `Error:` line (plus an optional hint), the right exit code, and no traceback."""
    assert result.exit_code == exit_code, (result.exit_code, result.stdout, result.stderr, result.exception)
    assert "Traceback" not in result.stderr and "Traceback" not in result.stdout
    assert result.stderr.startswith("Error: "), result.stderr
    assert result.stdout == ""
    for fragment in fragments:
        assert fragment in result.stderr, (fragment, result.stderr)


def heavy_modules_after(argv: list[str]) -> tuple[int, list[str], str]:
    """Run `llmkit ARGV` in a fresh interpreter; return (exit code, heavy modules imported, stdout)."""
    script = (
        "import io, json, sys, contextlib\n"
        f"sys.argv = ['llmkit'] + {argv!r}\n"
        "from llmkit.commands import main\n"
        "out = io.StringIO(); code = 0\n"
        "with contextlib.redirect_stdout(out):\n"
        "    try:\n"
        "        main()\n"
        "    except SystemExit as exc:\n"
        "        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)\n"
        f"heavy = sorted(m for m in {list(HEAVY_MODULES)!r} if m in sys.modules)\n"
        "print(json.dumps({'code': code, 'heavy': heavy, 'stdout': out.getvalue()}))\n"
    )
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    return report["code"], report["heavy"], report["stdout"]


def all_command_paths() -> list[list[str]]:
    paths = []

    def walk(command, prefix):
        if hasattr(command, "commands"):  # a group (Typer vendors its own click)
            for name, sub in command.commands.items():
                walk(sub, prefix + [name])
        else:
            paths.append(prefix)

    import typer.main

    from llmkit.commands import app

    walk(typer.main.get_command(app), [])
    return paths


def ctrl_c_at(step: int):
    """A Trainer callback that presses Ctrl-C during step `step`: the run checkpoints at its end and stops."""
    import os
    import signal

    from transformers import TrainerCallback

    class CtrlC(TrainerCallback):
        def on_step_begin(self, args, state, control, **kwargs):
            if state.global_step == step - 1:
                os.kill(os.getpid(), signal.SIGINT)

    return CtrlC()
