"""Process hygiene, in one place: quieting library notices that tell a user nothing, freeing memory between big
steps, and finding a free port. Light: heavy libraries are imported inside the functions."""

from __future__ import annotations

import contextlib
import logging
import socket
import warnings


def quiet_optional_kernel_notices() -> None:
    """bitsandbytes warns on every import on CPUs with AVX512-BF16 that an optional faster 4-bit kernel package
    (`kernels`) is missing; its fallback works, and the line reads like an error to users."""
    logging.getLogger("bitsandbytes.backends.cpu.ops").setLevel(logging.ERROR)


def quiet_unpickler_notices() -> None:
    """torch's safe unpickler warns about the pickle protocol of a file it is about to refuse; the refusal (an
    `Error:` line) is what the user needs."""
    warnings.filterwarnings("ignore", message=r"Detected pickle protocol", category=UserWarning)


def quiet_peft_notices() -> None:
    """peft's k-bit preparation asks transformers 5 a deprecated question; the answer is right."""
    warnings.filterwarnings("ignore", message=r"`is_gradient_checkpointing` is deprecated", category=FutureWarning)


def quiet_deepspeed_notices() -> None:
    """DeepSpeed 0.19 calls torch.distributed collectives that torch 2.13 deprecates: one FutureWarning per step."""
    deprecated = r"`torch\.distributed\.(all_gather_into_tensor|reduce_scatter_tensor)` is deprecated"
    warnings.filterwarnings("ignore", message=deprecated, category=FutureWarning)


@contextlib.contextmanager
def quiet_quantization():
    """bitsandbytes warns on every int8 matmul on CPU that inputs are cast to fp16; transformers warns about
    dequantization dtypes and shows progress bars. None of it is news to someone who asked for int8 or a merge."""
    logger = logging.getLogger("transformers")
    level = logger.level
    bnb_logger = logging.getLogger("bitsandbytes.autograd._functions")
    bnb_level = bnb_logger.level
    bnb_logger.setLevel(logging.ERROR)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*inputs will be cast from.*")
        warnings.filterwarnings("ignore", message=".*dequantized in.*")
        warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*")  # peft on transformers 5
        logger.setLevel(logging.ERROR)
        try:
            from transformers.utils import logging as hf_logging

            bar_state = hf_logging.is_progress_bar_enabled()
            hf_logging.disable_progress_bar()
        except Exception:  # progress-bar switches moved: not worth failing over
            bar_state = None
        try:
            yield
        finally:
            logger.setLevel(level)
            bnb_logger.setLevel(bnb_level)
            if bar_state:
                hf_logging.enable_progress_bar()


def free_memory() -> None:
    """Collect garbage and return cached GPU memory: between loading, quantizing and merging big models."""
    import gc

    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nothing listens on now (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]
