"""Progress reporting for library loops: a rich bar on a terminal, plain periodic lines off one, nothing when disabled."""

from __future__ import annotations

import contextlib
import sys
import time
from collections.abc import Callable, Iterator
from typing import TextIO

from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

LINE_INTERVAL_S = 10.0  # off a terminal, one progress line at most this often (and one at the end)


def _fields_text(fields: dict) -> str:
    return "  ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in fields.items())


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    hours, rest = divmod(seconds, 3600)
    return f"{hours}:{rest // 60:02d}:{rest % 60:02d}"


def progress_line(description: str, done: int, total: int, elapsed: float, fields: dict) -> str:
    """One plain progress line: label, done/total, rate, elapsed and eta, and the loop's latest fields."""
    rate = done / elapsed if elapsed > 0 else 0.0
    eta = _duration((total - done) / rate) if rate > 0 and total >= done else "?"
    text = f"{description}: {done}/{total} ({rate:.3g}/s, elapsed {_duration(elapsed)}, eta {eta})"
    info = _fields_text(fields)
    return f"{text}  {info}" if info else text


@contextlib.contextmanager
def plain_progress(
    description: str,
    total: int,
    stream: TextIO | None = None,
    interval: float = LINE_INTERVAL_S,
    clock: Callable[[], float] = time.monotonic,
) -> Iterator[Callable[..., None]]:
    """Yield ``advance(n=1, **fields)`` that writes a line every ``interval`` seconds and one at the end."""
    stream = stream if stream is not None else sys.stderr
    started = clock()
    state = {"done": 0, "last": started, "fields": {}, "printed_at": -1}

    def emit() -> None:
        now = clock()
        line = progress_line(description, state["done"], total, now - started, state["fields"])
        print(line, file=stream, flush=True)
        state["last"], state["printed_at"] = now, state["done"]

    def advance(n: int = 1, **fields) -> None:
        state["done"] += n
        state["fields"] = fields
        if clock() - state["last"] >= interval:
            emit()

    yield advance
    if state["printed_at"] != state["done"]:
        emit()


def stream_is_terminal(stream: TextIO) -> bool:
    isatty = getattr(stream, "isatty", None)
    return bool(isatty and isatty())


@contextlib.contextmanager
def progress_bar(description: str, total: int, enabled: bool = True) -> Iterator[Callable[..., None]]:
    """Yield ``advance(n=1, **fields)``: a rich bar on a terminal's stderr, plain periodic lines off a
    terminal (log files, cluster jobs), nothing when disabled."""
    if not enabled:
        yield lambda n=1, **fields: None
        return
    if not stream_is_terminal(sys.stderr):
        with plain_progress(description, total) as advance:
            yield advance
        return
    from rich.console import Console

    columns = (
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TextColumn("eta"),
        TimeRemainingColumn(),
        TextColumn("{task.fields[info]}"),
    )
    with Progress(*columns, console=Console(file=sys.stderr), transient=False) as progress:
        task = progress.add_task(description, total=total, info="")

        def advance(n: int = 1, **fields) -> None:
            progress.update(task, advance=n, info=_fields_text(fields))

        yield advance
