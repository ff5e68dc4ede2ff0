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


def absolute_if_local(name: str) -> str:
    """A local path made absolute, a hub id unchanged: what an adapter or a tokenized dataset records about its
    sources must work from any directory (elsewhere a relative path would be taken for a hub id)."""
    path = Path(name).expanduser()
    return str(path.resolve()) if path.exists() else name


def _probe_target(endpoint: str) -> tuple[str, int, str]:
    """(host, port, what) that a connection to `endpoint` really opens: the proxy for it when HTTPS_PROXY /
    HTTP_PROXY apply (and NO_PROXY does not exempt the host), else the endpoint itself."""
    from urllib.request import getproxies, proxy_bypass

    parsed = urlparse(endpoint)
    host = parsed.hostname or "huggingface.co"
    port = parsed.port or (443 if parsed.scheme != "http" else 80)
    proxy = getproxies().get(parsed.scheme or "https")
    if proxy and not proxy_bypass(host):
        proxied = urlparse(proxy if "://" in proxy else f"http://{proxy}")
        if proxied.hostname:
            return proxied.hostname, proxied.port or 8080, f"the proxy {proxied.hostname}:{proxied.port or 8080}"
    return host, port, host


def hub_offline_reason() -> str | None:
    """Why the hub cannot be used right now, or None when it (or the proxy that reaches it) answers."""
    if os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on"):
        return "HF_HUB_OFFLINE is set"
    host, port, what = _probe_target(os.environ.get("HF_ENDPOINT", "https://huggingface.co"))
    try:
        with socket.create_connection((host, port), timeout=_PROBE_TIMEOUT_S):
            return None
    except OSError as exc:
        return f"{what} is unreachable ({exc.strerror or exc})"


def in_hub_cache(repo_id: str, repo_type: str = "model") -> bool:
    """Whether the HF cache holds a snapshot of `repo_id`: then it loads without the hub (libraries fall back to the
    cache when the hub does not answer), so it must not be refused for being offline."""
    from huggingface_hub import constants

    snapshots = Path(constants.HF_HUB_CACHE) / f"{repo_type}s--{repo_id.replace('/', '--')}" / "snapshots"
    return snapshots.is_dir() and any(snapshots.iterdir())


def require_hub(name: str, what: str) -> None:
    """Raise a clear error when `name` must come from the hub and the hub cannot be reached."""
    reason = hub_offline_reason()
    if reason:
        raise ModelLoadError(
            f"cannot load {what} '{name}': it is not a local path and the Hugging Face Hub cannot be reached: {reason}",
            hint=f"pass a local {_LOCAL_EXAMPLE.get(what, 'directory')}, or run where the hub is reachable; files "
                 "already in the HF cache load offline",
        )


# what a user would pass instead of a hub id, by what is loaded
_LOCAL_EXAMPLE = {
    "tokenizer": "directory (for example one written by `llmkit tokenize train`)",
    "model": "directory (for example a run's model/, or a config .json to build from scratch)",
    "model config": "config .json or model directory",
    "adapter": "adapter directory (the adapter/ of an `llmkit peft` run)",
    "dataset": "data file (jsonl, json, csv, parquet, txt) or a saved datasets dir",
}
