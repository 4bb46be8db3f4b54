"""Progress of long work: rich on a terminal, plain lines otherwise, nothing when quiet."""

from __future__ import annotations

import contextlib
import sys
import time
from collections.abc import Iterator
from typing import Literal, TextIO

__all__ = ["Progress", "ProgressMode"]

ProgressMode = Literal["auto", "rich", "plain", "quiet"]


class Progress:
    """Reports named stages with their elapsed time, and free-form messages, to stderr."""

    def __init__(self, mode: ProgressMode = "quiet", stream: TextIO | None = None) -> None:
        self.stream = stream if stream is not None else sys.stderr
        if mode == "auto":
            mode = "rich" if self.stream.isatty() else "plain"
        self.mode = mode
        self._console = None
        if mode == "rich":
            from rich.console import Console

            self._console = Console(file=self.stream, highlight=False)

    def log(self, message: str) -> None:
        """Report a one-line message."""
        if self.mode == "quiet":
            return
        if self._console is not None:
            self._console.print(f"  {message}", markup=False)
        else:
            print(f"[infer] {message}", file=self.stream, flush=True)

    @contextlib.contextmanager
    def stage(self, name: str) -> Iterator[None]:
        """Time a stage; report its start (a spinner on terminals) and its elapsed time at the end."""
        started = time.perf_counter()
        if self.mode == "quiet":
            yield
            return
        if self._console is not None:
            with self._console.status(f"{name} ...", spinner="dots"):
                yield
            self._console.print(f"[green]✓[/] {name} [dim]{time.perf_counter() - started:.2f}s[/]")
            return
        print(f"[infer] {name} ...", file=self.stream, flush=True)
        yield
        print(
            f"[infer] {name} done in {time.perf_counter() - started:.2f}s",
            file=self.stream,
            flush=True,
        )
