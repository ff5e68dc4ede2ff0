"""Outputs that are written whole or not at all, that are on disk when the writer says so, and that one process at
a time writes (a lock)."""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO

from llmkit.errors import ConfigError


def check_output_dir(path: str | Path, overwrite: bool) -> Path:
    path = Path(path).expanduser()
    if path.exists() and not path.is_dir():
        raise ConfigError(f"--output-dir {path} exists and is a file", hint="choose a directory path")
    if path.is_dir() and any(path.iterdir()) and not overwrite:
        raise ConfigError(f"--output-dir {path} exists and is not empty", hint="pass --overwrite or choose another dir")
    return path


@contextlib.contextmanager
def atomic_output_dir(path: str | Path, overwrite: bool) -> Iterator[Path]:
    """Yield a scratch dir beside `path`; it replaces `path` only when the block finishes without an error."""
    final = check_output_dir(path, overwrite)
    final.parent.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix=f".{final.name}.partial-", dir=final.parent))
    try:
        yield scratch
    except BaseException:
        shutil.rmtree(scratch, ignore_errors=True)
        raise
    fsync_tree(scratch)
    if final.exists():
        shutil.rmtree(final)
    scratch.rename(final)
    fsync_path(final.parent)


# ------------------------------------------------------------------------------------------------- durability

def fsync_path(path: Path) -> None:
    """Flush a file's bytes, or a directory's entries, to disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_tree(path: Path) -> None:
    """Flush every file under `path` and every directory's entries (`path`'s own included): after a crash, all of
    it is there as written."""
    for folder, _, names in os.walk(path, topdown=False):
        for name in names:
            fsync_path(Path(folder) / name)
        fsync_path(Path(folder))


def write_text_atomic(path: Path, text: str) -> None:
    """`text` in `path`, whole or not at all (a file beside it, flushed to disk, then renamed over it)."""
    scratch = path.with_name(path.name + ".tmp")
    scratch.write_text(text, encoding="utf-8")
    fsync_path(scratch)
    os.replace(scratch, path)
    fsync_path(path.parent)


# ---------------------------------------------------------------------------------------------------- locking

def take_lock(path: Path) -> IO | None:
    """An exclusive lock on the file `path` (created, and saying "pid N"), held until `release_lock`; None while
    another process holds it. The lock dies with its process: a killed job's file is simply taken over."""
    import fcntl

    while True:
        handle = path.open("a+")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.close()
            return None
        try:
            still_there = os.stat(path).st_ino == os.fstat(handle.fileno()).st_ino
        except FileNotFoundError:
            still_there = False
        if still_there:
            break
        handle.close()   # the holder released (and removed) the file while we opened it: lock the new one
    handle.seek(0)
    handle.truncate()
    handle.write(f"pid {os.getpid()}")
    handle.flush()
    return handle


def lock_holder(path: Path) -> str | None:
    """Who holds the lock file `path` ("pid N"), or None when nobody does; creates nothing. It asks by taking a
    shared lock for an instant: a job taking the lock in that instant is refused (the safe way round)."""
    import fcntl

    try:
        handle = path.open("r")
    except FileNotFoundError:
        return None
    with handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return handle.read().strip() or "another process"
    return None


def release_lock(handle: IO, path: Path) -> None:
    """Remove the lock file, then let go of the lock (in this order, so nobody locks a file about to vanish)."""
    path.unlink(missing_ok=True)
    handle.close()
