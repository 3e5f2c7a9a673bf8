"""SIGTERM and SIGINT held back while a repository change is in progress.

`Held()` replaces both handlers with one that only notes the signal; the journal looks at it
between steps (`pending`), so the step in progress always finishes, and then the whole change
is rolled back (or, past its commit record, completed). `release()` puts the old handlers
back and answers the signal as they would have: SIGTERM with its default action exits with
status 143 (as `SystemExit`, so `finally` blocks and temporary directories are cleaned up),
SIGINT raises KeyboardInterrupt, and a handler of the caller's own is called.

Handlers can only be set in the main thread: elsewhere (a publish run from a worker thread)
nothing is held, as before.
"""

from __future__ import annotations

import signal
import threading
from types import FrameType
from typing import Any

SIGNALS = (signal.SIGTERM, signal.SIGINT)


class Held:
    """SIGTERM/SIGINT noted, not acted on, until `release()`."""

    def __init__(self) -> None:
        self.pending: int | None = None
        self._old: dict[int, Any] = {}
        if threading.current_thread() is not threading.main_thread():
            return
        for sig in SIGNALS:
            try:
                self._old[sig] = signal.signal(sig, self._note)
            except (ValueError, OSError):  # not the main interpreter, or no such signal
                continue

    def _note(self, signum: int, _frame: FrameType | None) -> None:
        if self.pending is None:
            self.pending = signum

    def release(self) -> None:
        """Old handlers back; then the held signal, if any, as they would have answered it."""
        for sig, old in self._old.items():
            signal.signal(sig, old)
        self._old.clear()
        signum, self.pending = self.pending, None
        if signum is not None:
            deliver(signum, signal.getsignal(signum))


def deliver(signum: int, handler: Any) -> None:
    if handler == signal.SIG_IGN or handler is None:
        return
    if handler == signal.SIG_DFL:
        if signum == signal.SIGINT:
            raise KeyboardInterrupt
        raise SystemExit(128 + signum)
    handler(signum, None)  # Python's default SIGINT handler raises KeyboardInterrupt
