"""Loading a model for inference: its config (failing fast offline), the device, bitsandbytes loading, an adapter,
and what the checkpoint holds (tokenizer files, context length). Shared by generation and the task heads."""

from __future__ import annotations

from pathlib import Path

from llmkit.config import GenerateConfig
from llmkit.errors import ConfigError, ModelLoadError


def load_model_config(name: str, trust_remote_code: bool):
    from transformers import AutoConfig

    from llmkit.modeling import check_model_source

    check_model_source(name)
    try:
        return AutoConfig.from_pretrained(name, trust_remote_code=trust_remote_code)
    except ValueError as exc:
        raise ModelLoadError(f"cannot read the config of {name}: {str(exc).splitlines()[0]}",
                             hint="check the path or id") from None
    except OSError as exc:
        raise ModelLoadError(f"cannot load model {name}: {str(exc).splitlines()[0]}",
                             hint="check the path or id (no network: only cached hub models load)") from None


def select_device(choice: str) -> str:
    import torch

    if choice == "cuda" and not torch.cuda.is_available():
        raise ConfigError("--device cuda: no CUDA device is available", hint="use --device cpu (or auto)")
    if choice == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return choice


def quantization_config(cfg: GenerateConfig, device: str):
    if not (cfg.load_in_8bit or cfg.load_in_4bit):
        return None
    import torch
    from transformers import BitsAndBytesConfig

    try:
        import bitsandbytes  # noqa: F401
    except ImportError:
        raise ConfigError("--load-in-8bit/--load-in-4bit need bitsandbytes", hint="pip install bitsandbytes") from None
    if cfg.load_in_8bit:
        return BitsAndBytesConfig(load_in_8bit=True)
    compute = torch.bfloat16 if device == "cuda" else torch.float32
    return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                              bnb_4bit_compute_dtype=compute)


CPU_4BIT_BLOCK = 64


def check_cpu_4bit_shapes(model_config) -> None:
    """bitsandbytes' CPU 4-bit kernels need each linear layer's input size to fill whole blocks of 64; say so
    before loading instead of failing inside bitsandbytes on the first forward."""
    sizes = {key: getattr(model_config, key, None) for key in ("hidden_size", "intermediate_size", "d_model", "d_ff",
                                                               "n_embd")}
    bad = {k: v for k, v in sizes.items() if isinstance(v, int) and v % CPU_4BIT_BLOCK}
    if bad:
        shown = ", ".join(f"{k} {v}" for k, v in bad.items())
        raise ConfigError(f"--load-in-4bit on CPU: bitsandbytes needs layer sizes that are multiples of "
                          f"{CPU_4BIT_BLOCK}, and this model has {shown}",
                          hint="drop --load-in-4bit (or use --load-in-8bit), or run on a GPU")


def attach_adapter(model, adapter: str):
    try:
        from peft import PeftModel
    except ImportError:
        raise ConfigError("--adapter needs peft", hint="pip install peft") from None
    if (Path(adapter).expanduser() / "generation_config.json").is_file():   # the stop tokens its run trained
        from transformers import GenerationConfig

        model.generation_config = GenerationConfig.from_pretrained(adapter)
    try:
        return PeftModel.from_pretrained(model, adapter)
    except (ValueError, OSError, RuntimeError, KeyError) as exc:
        raise ModelLoadError(f"cannot load the adapter {adapter}: {str(exc).splitlines()[0]}",
                             hint="check that it was trained on this base model") from None


def context_length(model_config) -> int | None:
    for key in ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length"):
        value = getattr(model_config, key, None)
        if isinstance(value, int) and value > 0:
            return value
    return None


def has_tokenizer(path: str) -> bool:
    from llmkit.modeling import TOKENIZER_FILES

    p = Path(path).expanduser()
    return p.is_dir() and any((p / f).exists() for f in TOKENIZER_FILES)
