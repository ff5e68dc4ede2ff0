"""Output directories that are written whole or not at all."""

from __future__ import annotations

import contextlib
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

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
    if final.exists():
        shutil.rmtree(final)
    scratch.rename(final)
