"""Inter-process locks on files (``fcntl.flock``).

The kernel drops a flock when its process dies, so a process killed mid-commit
never leaves a stale lock behind.
"""

from __future__ import annotations

import fcntl
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from coral_core.errors import LockTimeoutError

DEFAULT_TIMEOUT = 60.0


@contextmanager
def file_lock(path: Path, shared: bool = False, timeout: float = DEFAULT_TIMEOUT) -> Iterator[None]:
    """Hold an exclusive (or shared) lock on ``path`` for the ``with`` block.

    Raises:
        LockTimeoutError: when another process holds the lock for ``timeout`` seconds.
    """
    fd = _acquire(path, fcntl.LOCK_SH if shared else fcntl.LOCK_EX, time.monotonic() + timeout)
    try:
        yield
    finally:
        os.close(fd)  # closing releases the lock


@contextmanager
def fair_lock(path: Path, shared: bool = False, timeout: float = DEFAULT_TIMEOUT) -> Iterator[None]:
    """A readers-writer lock on ``path`` in which a waiting writer is not starved.

    Every taker first passes a turnstile (``path`` + ``.turnstile``); an
    exclusive taker keeps it while it waits and works, so shared takers that
    come after it queue at the turnstile instead of overlapping forever.

    Raises:
        LockTimeoutError: when the lock cannot be had within ``timeout`` seconds.
    """
    deadline = time.monotonic() + timeout
    turnstile = _acquire(path.with_name(path.name + ".turnstile"), fcntl.LOCK_EX, deadline)
    try:
        fd = _acquire(path, fcntl.LOCK_SH if shared else fcntl.LOCK_EX, deadline)
    except BaseException:
        os.close(turnstile)
        raise
    if shared:
        os.close(turnstile)
    try:
        yield
    finally:
        os.close(fd)
        if not shared:
            os.close(turnstile)


def _acquire(path: Path, mode: int, deadline: float) -> int:
    """Open ``path`` and flock it in ``mode``, polling until ``deadline``; return the fd."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    delay = 0.001
    while True:
        try:
            fcntl.flock(fd, mode | fcntl.LOCK_NB)
            return fd
        except BlockingIOError:
            if time.monotonic() >= deadline:
                os.close(fd)
                raise LockTimeoutError(
                    f"another Coral process holds {path}; wait for it to finish and retry"
                ) from None
            time.sleep(delay)
            delay = min(delay * 2, 0.05)
