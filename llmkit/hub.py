"""Reaching the Hugging Face Hub: fail within seconds, naming the id, when it cannot be reached.

Without this check transformers retries for about a minute before it gives up on an offline machine.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path
from urllib.parse import urlparse

from llmkit.errors import ModelLoadError

_PROBE_TIMEOUT_S = 3.0


def looks_like_local_path(name: str) -> bool:
    """A hub id is `name` or `org/name`; anything else that is not on disk is a path the user got wrong."""
    return name.startswith((".", "/", "~")) or name.count("/") > 1 or Path(name).expanduser().exists()


def hub_offline_reason() -> str | None:
    """Why the hub cannot be used right now, or None when it answers."""
    if os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on"):
        return "HF_HUB_OFFLINE is set"
    endpoint = os.environ.get("HF_ENDPOINT", "https://huggingface.co")
    parsed = urlparse(endpoint)
    host = parsed.hostname or "huggingface.co"
    port = parsed.port or (443 if parsed.scheme != "http" else 80)
    try:
        with socket.create_connection((host, port), timeout=_PROBE_TIMEOUT_S):
            return None
    except OSError as exc:
        return f"{host} is unreachable ({exc.strerror or exc})"


def require_hub(name: str, what: str) -> None:
    """Raise a clear error when `name` must come from the hub and the hub cannot be reached."""
    reason = hub_offline_reason()
    if reason:
        raise ModelLoadError(
            f"cannot load {what} '{name}': it is not a local path and the Hugging Face Hub cannot be reached: {reason}",
            hint="pass a local directory (for example one written by `llmkit tokenize train`), "
                 "or run where the hub is reachable; files already in the HF cache load offline",
        )
