"""Stopping on a signal: SIGTERM or Ctrl-C ends a run cleanly after the current training step."""

from __future__ import annotations

import signal


class StopFlag:
    """Set by SIGTERM / SIGINT: the training loop finishes its step, writes ``last.pt`` and stops."""

    def __init__(self) -> None:
        self.requested = False
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, self._handle)

    def _handle(self, signum, frame) -> None:
        if self.requested:  # a second Ctrl-C means now
            raise KeyboardInterrupt
        self.requested = True

    def __call__(self) -> bool:
        return self.requested
