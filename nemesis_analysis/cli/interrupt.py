"""Graceful Ctrl-C and SIGTERM for long commands: the first signal asks the library to stop at its next saved point.

The handler only sets a flag; the library reads it through its ``should_stop`` callbacks (after each
training epoch, before each sweep chunk), saves what it has and returns. A second signal quits at once
(KeyboardInterrupt, exit code 130).
"""

from __future__ import annotations

import contextlib
import signal
import sys
from collections.abc import Iterator

SIGNALS = (signal.SIGINT, signal.SIGTERM)
NOTICE = "stopping at the next saved point (after this epoch or chunk); press Ctrl-C again to quit now"


class StopRequest:
    """Which signal asked the command to stop (None: none yet)."""

    def __init__(self) -> None:
        self.signum: int | None = None

    def __call__(self, *_) -> bool:
        """The library's ``should_stop`` callback."""
        return self.signum is not None

    @property
    def exit_code(self) -> int:
        """128 + the signal number: 130 for SIGINT, 143 for SIGTERM."""
        return 128 + int(self.signum or signal.SIGINT)


_active = StopRequest()


def stop_requested(*_) -> bool:
    """``should_stop`` for library calls: True once a signal arrived inside :func:`graceful_stop`."""
    return _active()


@contextlib.contextmanager
def graceful_stop() -> Iterator[StopRequest]:
    """Install the SIGINT/SIGTERM handlers for the block (outside the main thread: none, signals act as usual)."""
    global _active
    request = _active = StopRequest()

    def handler(signum, frame) -> None:
        if request.signum is not None:
            raise KeyboardInterrupt
        request.signum = signum
        if sys.stderr.isatty():
            print(NOTICE, file=sys.stderr, flush=True)

    previous = {}
    with contextlib.suppress(ValueError):  # signal handlers can only be set in the main thread
        for signum in SIGNALS:
            previous[signum] = signal.signal(signum, handler)
    try:
        yield request
    finally:
        for signum, old in previous.items():
            signal.signal(signum, old)
        _active = StopRequest()
