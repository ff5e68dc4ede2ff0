"""How core code reports progress and messages without printing: the Reporter protocol and its implementations.

Core functions take a Reporter; commands choose one (rich on stderr for people, plain lines under --json, silent in
tests). Everything a Reporter writes goes to stderr, so stdout stays free for results and JSON.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Callable, Iterator
from typing import Protocol

Advance = Callable[[int], None]


class Reporter(Protocol):
    def info(self, message: str) -> None: ...

    def warn(self, message: str) -> None: ...

    def progress(self, description: str, total: int | None = None) -> contextlib.AbstractContextManager[Advance]: ...


class SilentReporter:
    """Reports nothing (library use and tests)."""

    def __init__(self) -> None:
        self.warnings: list[str] = []

    def info(self, message: str) -> None:
        pass

    def warn(self, message: str) -> None:
        self.warnings.append(message)

    @contextlib.contextmanager
    def progress(self, description: str, total: int | None = None) -> Iterator[Advance]:
        yield lambda n=1: None


class PlainReporter(SilentReporter):
    """Plain lines on stderr, no bars or colour: what scripts get under --json."""

    def info(self, message: str) -> None:
        print(message, file=sys.stderr, flush=True)

    def warn(self, message: str) -> None:
        super().warn(message)
        print(f"Warning: {message}", file=sys.stderr, flush=True)


class RichReporter:
    """Progress bars and coloured messages on stderr, for people at a terminal."""

    def __init__(self) -> None:
        from rich.console import Console

        self.console = Console(stderr=True, highlight=False)
        self.warnings: list[str] = []

    def info(self, message: str) -> None:
        self.console.print(message, markup=False)

    def warn(self, message: str) -> None:
        self.warnings.append(message)
        self.console.print(f"[yellow]Warning:[/yellow] {_escape(message)}")

    @contextlib.contextmanager
    def progress(self, description: str, total: int | None = None) -> Iterator[Advance]:
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

        if not self.console.is_terminal:  # a redirected stderr gets no bar, only the messages
            yield lambda n=1: None
            return
        columns = [SpinnerColumn(), TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                   TimeElapsedColumn()]
        with Progress(*columns, console=self.console, transient=True) as bar:
            task = bar.add_task(description, total=total)
            yield lambda n=1: bar.advance(task, n)


def format_bytes(n: float | None) -> str:
    """1536 -> '1.5 KiB' (powers of 2, one decimal; '?' when unknown)."""
    if n is None:
        return "?"
    for unit, scale in (("GiB", 2 ** 30), ("MiB", 2 ** 20), ("KiB", 2 ** 10)):
        if n >= scale:
            return f"{n / scale:,.1f} {unit}"
    return f"{int(n)} B"


def _escape(text: str) -> str:
    from rich.markup import escape

    return escape(text)


def reporter_for(json_mode: bool) -> Reporter:
    return PlainReporter() if json_mode else RichReporter()
