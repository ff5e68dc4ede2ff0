"""What a bug report needs: Python, llmkit's dependencies, devices, CUDA/bf16, bitsandbytes and DeepSpeed backends."""

from __future__ import annotations

import contextlib
import io
import os
import platform
import sys
from dataclasses import dataclass, field
from importlib import metadata

from llmkit import __version__

PACKAGES = ("torch", "transformers", "tokenizers", "datasets", "peft", "bitsandbytes", "accelerate", "deepspeed",
            "typer", "rich", "pyyaml", "safetensors", "huggingface-hub", "numpy")


@dataclass
class EnvReport:
    llmkit: str
    python: str
    platform: str
    cpu_count: int
    packages: dict[str, str | None]
    torch_threads: int | None = None
    cuda_available: bool = False
    cuda_version: str | None = None
    devices: list[dict] = field(default_factory=list)
    bf16_supported: bool = False
    mps_available: bool = False
    bitsandbytes_backend: str | None = None
    deepspeed_accelerator: str | None = None
    hub_offline_reason: str | None = None
    problems: list[str] = field(default_factory=list)


def collect(check_hub: bool = True) -> EnvReport:
    packages: dict[str, str | None] = {}
    for name in PACKAGES:
        try:
            packages[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            packages[name] = None
    report = EnvReport(llmkit=__version__, python=sys.version.split()[0], platform=platform.platform(),
                       cpu_count=os.cpu_count() or 1, packages=packages)
    try:
        import torch

        report.torch_threads = torch.get_num_threads()
        report.cuda_available = torch.cuda.is_available()
        report.cuda_version = torch.version.cuda
        if report.cuda_available:
            for i in range(torch.cuda.device_count()):
                props = torch.cuda.get_device_properties(i)
                report.devices.append({"index": i, "name": props.name, "memory_bytes": int(props.total_memory),
                                       "capability": f"{props.major}.{props.minor}"})
            report.bf16_supported = bool(torch.cuda.is_bf16_supported())
        else:
            report.devices.append({"index": 0, "name": f"cpu ({platform.processor() or platform.machine()})"})
        report.mps_available = bool(getattr(torch.backends, "mps", None) and torch.backends.mps.is_available())
    except Exception as exc:  # report what broke instead of failing the whole report
        report.problems.append(f"torch: {exc}")
    with _quiet():
        try:
            import bitsandbytes

            backends = getattr(bitsandbytes, "supported_torch_devices", None)
            report.bitsandbytes_backend = ", ".join(sorted(backends)) if backends else "cuda" if report.cuda_available else "cpu"
        except Exception as exc:
            report.problems.append(f"bitsandbytes: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}")
        try:
            from deepspeed.accelerator import get_accelerator

            report.deepspeed_accelerator = get_accelerator().device_name()
        except Exception as exc:
            report.problems.append(f"deepspeed: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}")
    if check_hub:
        from llmkit.hub import hub_offline_reason

        report.hub_offline_reason = hub_offline_reason()
    return report


@contextlib.contextmanager
def _quiet():
    """DeepSpeed and bitsandbytes print banners on import; keep stdout for the report."""
    with contextlib.redirect_stdout(io.StringIO()):
        yield
