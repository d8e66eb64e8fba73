"""Ctrl-C and SIGTERM as an exception, so that every open run is closed KILLED on the way out,
and the process still exits with the conventional code (128 + the signal's number)."""

from __future__ import annotations

import signal
from types import FrameType

_HANDLED = (signal.SIGINT, signal.SIGTERM)


class Interrupted(KeyboardInterrupt):
    """The process was asked to stop by a signal."""

    def __init__(self, signum: int) -> None:
        super().__init__(f"stopped by {signal.Signals(signum).name}")
        self.signum = signum


received: int | None = None  # The first stop signal this process received, if any.


def _raise(signum: int, frame: FrameType | None) -> None:
    global received
    if received is None:
        received = signum
    raise Interrupted(signum)


def install() -> None:
    """Turn SIGINT and SIGTERM into :class:`Interrupted` (main thread only)."""
    for signum in _HANDLED:
        signal.signal(signum, _raise)


def exit_code(error: BaseException) -> int:
    """130 for Ctrl-C, 143 for SIGTERM."""
    return 128 + int(getattr(error, "signum", signal.SIGINT))
