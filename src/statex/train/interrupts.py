"""SIGINT and SIGTERM during training: noted, not acted on at once, so that the loop stops after the step in
progress with a checkpoint (``TrainingInterrupted``) instead of dying mid-write."""
from __future__ import annotations

import signal


class SignalCatcher:
    """``with SignalCatcher() as caught:`` ... ``caught.number`` is the last signal received (None: none)."""

    def __init__(self):
        self.number: int | None = None
        self._previous: dict = {}

    def _note(self, signum, frame) -> None:
        self.number = signum

    def install(self) -> "SignalCatcher":
        for sig in (signal.SIGINT, signal.SIGTERM):
            try:
                self._previous[sig] = signal.signal(sig, self._note)
            except ValueError:  # not the main thread: signals stay with whoever handles them
                pass
        return self

    def restore(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous = {}

    def __enter__(self) -> "SignalCatcher":
        return self.install()

    def __exit__(self, *exc) -> None:
        self.restore()
