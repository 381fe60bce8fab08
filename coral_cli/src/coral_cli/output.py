"""The one place coral-ml prints: tables, ``--json``, ``--quiet``, errors and progress.

Every command builds plain data and hands it to :meth:`Output.emit` with a
function that renders it for people; ``--json`` prints the data itself (the
documented, stable shape), ``--quiet`` prints nothing but errors. Errors of
Coral (and bad files) become one line on stderr with exit status 1, through
:func:`user_errors`.
"""

from __future__ import annotations

import json
import math
import sys
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, TypeVar

import click

from coral_core import CoralError

T = TypeVar("T")

#: Exit status of a user error (usage errors exit 2, as click does).
USER_ERROR = 1


@dataclass
class Output:
    """How this invocation prints: ``json`` for scripts, ``quiet`` for nothing."""

    json: bool = False
    quiet: bool = False

    def emit(self, data: Any, render: Callable[[Any], str | None] | None = None) -> None:
        """Print ``data`` as JSON, or as ``render(data)`` for people."""
        if self.json:  # strict JSON: NaN and infinities (a metric may be one) as null
            click.echo(json.dumps(_finite(data), indent=2, default=str, allow_nan=False))
        elif not self.quiet and render is not None:
            text = render(data)
            if text:
                click.echo(text)

    def note(self, message: str) -> None:
        """A line for people (not in ``--json`` or ``--quiet`` mode)."""
        if not self.json and not self.quiet:
            click.echo(message)

    @contextmanager
    def counter(self, label: str) -> Iterator[Callable[[int, int | None], None] | None]:
        """A ``(done, total)`` callback that keeps one status line on a terminal's
        stderr (``label: done/total``); None in json/quiet mode or without a terminal."""
        if self.json or self.quiet or not sys.stderr.isatty():
            yield None
            return

        def show(done: int, total: int | None) -> None:
            shown = f"{done}/{total}" if total is not None else str(done)
            sys.stderr.write(f"\r{label}: {shown}")
            sys.stderr.flush()

        try:
            yield show
        finally:
            sys.stderr.write("\r\033[K")  # clear the line before the result is printed
            sys.stderr.flush()

    def progress(self, items: Sequence[T], label: str) -> Iterator[T]:
        """Iterate ``items`` with a progress bar on a terminal (never in json/quiet mode)."""
        if self.json or self.quiet or not sys.stderr.isatty() or len(items) < 2:
            yield from items
            return
        with click.progressbar(items, label=label, file=sys.stderr) as bar:
            yield from bar


def table(headers: Sequence[str], rows: Iterable[Sequence[Any]], right: Sequence[int] = ()) -> str:
    """A plain-text table; columns in ``right`` (numbers) are right-aligned."""
    cells = [[str(h) for h in headers], *[[_cell(v) for v in row] for row in rows]]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    lines = []
    for index, row in enumerate(cells):
        parts = [
            value.rjust(widths[i]) if i in right else value.ljust(widths[i])
            for i, value in enumerate(row)
        ]
        lines.append("  ".join(parts).rstrip())
        if index == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def human_bytes(size: float) -> str:
    """``1536`` -> ``"1.5 KiB"``."""
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(size) < 1024 or unit == "GiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.1f} TiB"


@contextmanager
def user_errors() -> Iterator[None]:
    """Turn Coral's errors and bad files into one line on stderr and exit status 1."""
    try:
        yield
    except (CoralError, OSError) as exc:  # a disk or OS refusal is one line too
        message = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        if isinstance(exc, OSError) and not isinstance(exc, CoralError) and exc.filename:
            message = f"{exc.strerror}: {exc.filename}"
        click.echo(f"error: {message}", err=True)
        raise SystemExit(USER_ERROR) from None


def _finite(data: Any) -> Any:
    """``data`` with every NaN and infinity as None: what strict JSON can hold."""
    if isinstance(data, float):
        return data if math.isfinite(data) else None
    if isinstance(data, dict):
        return {key: _finite(value) for key, value in data.items()}
    if isinstance(data, (list, tuple)):
        return [_finite(value) for value in data]
    return data
