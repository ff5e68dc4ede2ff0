"""A content-keyed cache of prepared data (tokenized corpora, rendered conversations), one directory per entry.

An entry's key hashes everything its contents are a function of: the bytes of every local source file, the
tokenizer's full serialization (vocabulary, merges, normalizer, added tokens, chat template), the settings, and
CACHE_VERSION. So a rerun with the same inputs reuses the entry (memory-mapped, no tokenizing), and a changed file,
another tokenizer or other settings get a new one. An entry is built in a scratch dir and renamed into place with a
marker that repeats its key: an interrupted build leaves no entry, and an entry that fails its check (truncated,
edited, written by another version) is rebuilt, never trusted. Two processes (launch's ranks) building one entry:
the first builds under a lock, the others wait and reuse it.
"""

from __future__ import annotations

import glob
import hashlib
import json
import os
import shutil
import time
from pathlib import Path
from typing import Any, Callable

CACHE_VERSION = 1
MARKER = "llmkit_cache.json"
_CHUNK = 1 << 20


def cache_root(cache_dir: str | None = None) -> Path:
    """--data-cache, else $LLMKIT_CACHE, else ~/.cache/llmkit (XDG_CACHE_HOME respected)."""
    if cache_dir:
        return Path(cache_dir).expanduser().absolute()
    if os.environ.get("LLMKIT_CACHE"):
        return Path(os.environ["LLMKIT_CACHE"]).expanduser().absolute()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base).expanduser().absolute() / "llmkit"


def source_digest(source: str) -> str:
    """The bytes of a local file, or of every file under a local directory (names included); a hub or other
    non-local source is keyed by its name (its revision belongs in the settings)."""
    path = Path(source).expanduser()
    digest = hashlib.blake2b(digest_size=20)
    if path.is_file():
        _hash_file(digest, path)
    elif path.is_dir():
        _hash_files(digest, path, sorted(p for p in path.rglob("*") if p.is_file() and p.name != MARKER))
    elif glob.has_magic(source):   # a glob of shards: the files it matches now
        _hash_files(digest, Path("/"), sorted(Path(p).absolute() for p in glob.glob(str(path), recursive=True)
                                              if Path(p).is_file()))
    else:
        digest.update(b"name:" + source.encode())
    return digest.hexdigest()


def tokenizer_digest(tokenizer) -> str:
    """Everything about a transformers tokenizer that changes the ids or the rendering."""
    digest = hashlib.blake2b(digest_size=20)
    backend = getattr(tokenizer, "backend_tokenizer", None)
    digest.update((backend.to_str() if backend is not None else repr(tokenizer.get_vocab())).encode())
    extra = {"class": type(tokenizer).__name__, "special": tokenizer.special_tokens_map,
             "chat_template": getattr(tokenizer, "chat_template", None),
             "padding_side": getattr(tokenizer, "padding_side", None)}
    digest.update(json.dumps(extra, sort_keys=True, default=str).encode())
    return digest.hexdigest()


def entry_key(kind: str, *, sources: list[str], tokenizer=None, settings: dict[str, Any]) -> str:
    """The key of a cache entry of `kind` ("tokens", "sft", ...) for these inputs."""
    parts = {"version": CACHE_VERSION, "kind": kind, "sources": [source_digest(s) for s in sources],
             "tokenizer": tokenizer_digest(tokenizer) if tokenizer is not None else None, "settings": settings}
    return hashlib.blake2b(json.dumps(parts, sort_keys=True, default=str).encode(), digest_size=16).hexdigest()


def cached_entry(kind: str, key: str, build: Callable[[Path], dict[str, Any]], *,
                 check: Callable[[Path, dict[str, Any]], bool] | None = None, cache_dir: str | None = None,
                 wait_seconds: float = 3600.0) -> tuple[Path, bool]:
    """The directory of entry `key`, built by `build(scratch_dir)` when missing or failing `check(dir, info)`;
    returns (directory, reused). `build` returns a JSON-able dict (row and token counts, ...) kept in the marker
    and handed to `check`."""
    from llmkit.outputs import release_lock, take_lock

    root = cache_root(cache_dir) / kind
    root.mkdir(parents=True, exist_ok=True)
    entry = root / key
    lock_path = root / f"{key}.lock"
    deadline = time.monotonic() + wait_seconds
    while (handle := take_lock(lock_path)) is None:
        if time.monotonic() > deadline:
            from llmkit.errors import DataError

            raise DataError(f"the data cache entry {entry} is being built by another process for more than "
                            f"{wait_seconds:.0f} s", hint=f"wait for it, or remove {lock_path} if no job runs")
        time.sleep(0.2)
    try:
        info = read_marker(entry, key)
        if info is not None and (check is None or _passes(check, entry, info)):
            return entry, True
        scratch = root / f".{key}.{os.getpid()}.tmp"
        shutil.rmtree(scratch, ignore_errors=True)
        scratch.mkdir()
        try:
            info = build(scratch)
            (scratch / MARKER).write_text(json.dumps({"key": key, "version": CACHE_VERSION, "info": info}),
                                          encoding="utf-8")
            shutil.rmtree(entry, ignore_errors=True)
            os.replace(scratch, entry)
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
        return entry, False
    finally:
        release_lock(handle, lock_path)


def read_marker(entry: Path, key: str) -> dict[str, Any] | None:
    """The info an intact entry was built with, or None (no entry, no marker, or a marker for another key)."""
    try:
        marker = json.loads((entry / MARKER).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(marker, dict) or marker.get("key") != key or marker.get("version") != CACHE_VERSION:
        return None
    return marker.get("info") or {}


def _passes(check, entry: Path, info: dict[str, Any]) -> bool:
    try:
        return bool(check(entry, info))
    except Exception:   # a corrupt entry may fail in any library's reader: it is rebuilt either way
        return False


def _hash_files(digest, root: Path, files: list[Path]) -> None:
    for file in files:
        digest.update(str(file.relative_to(root)).encode() + b"\0")
        _hash_file(digest, file)


def file_digest(path: Path) -> str:
    """The blake2b digest of one file's bytes, read (not mapped: checking an entry leaves none of it resident)."""
    digest = hashlib.blake2b(digest_size=20)
    _hash_file(digest, path)
    return digest.hexdigest()


def _hash_file(digest, path: Path) -> None:
    with path.open("rb") as f:
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
