"""One writer per run directory: ``RunLock`` holds an exclusive advisory lock (``flock``) on ``DIR/.statex.lock``
while a run writes there. The operating system releases it when the process ends, however it ends, so a
crashed or killed run never leaves a stale lock; the file itself stays and names the last holder."""
from __future__ import annotations

import json
import os
import socket
import time
from pathlib import Path

from statex.errors import StatexError

LOCK_NAME = ".statex.lock"


class RunLock:
    def __init__(self, directory: str | Path, what: str = "run"):
        self.path = Path(directory) / LOCK_NAME
        self.what = what
        self._handle = None

    def acquire(self) -> "RunLock":
        try:
            import fcntl
        except ImportError:  # no advisory locks on this system: nothing to hold
            return self
        handle = open(self.path, "a+")
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            handle.seek(0)
            holder = _describe(handle.read())
            handle.close()
            raise StatexError(f"{self.path.parent}: in use by another {self.what} ({holder}); wait for it to "
                              "finish or choose another output directory") from None
        handle.seek(0)
        handle.truncate()
        handle.write(json.dumps({"pid": os.getpid(), "host": socket.gethostname(),
                                 "since": time.strftime("%Y-%m-%d %H:%M:%S")}) + "\n")
        handle.flush()
        self._handle = handle
        return self

    def release(self) -> None:
        if self._handle is not None:
            self._handle.close()  # closing the descriptor drops the flock
            self._handle = None

    def __enter__(self) -> "RunLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


def _describe(text: str) -> str:
    try:
        info = json.loads(text)
        return f"pid {info['pid']} on {info['host']} since {info['since']}"
    except (ValueError, KeyError, TypeError):
        return "holder unknown"
