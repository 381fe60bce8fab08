"""Inter-process locks on files (``fcntl.flock``).

The kernel drops a flock when its process dies, so a process killed mid-commit
never leaves a stale lock behind.
"""

from __future__ import annotations

import errno
import fcntl
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from coral_core.errors import DiskError, LockTimeoutError

DEFAULT_TIMEOUT = 60.0
_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)


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
        _release(fd)


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
        _release(turnstile)
        raise
    if shared:
        _release(turnstile)
    try:
        yield
    finally:
        _release(fd)
        if not shared:
            _release(turnstile)


def _release(fd: int | None) -> None:
    if fd is not None:
        os.close(fd)  # closing releases the lock


def _acquire(path: Path, mode: int, deadline: float) -> int | None:
    """Open ``path`` and flock it in ``mode``, polling until ``deadline``; return
    the fd. None on a read-only file system where the lock file cannot be made:
    nobody can write there, so there is nothing to exclude. The lock file is
    never followed through a symlink.

    Raises:
        DiskError: when the lock cannot be opened (a symlink, a file where the
            ``locks`` folder should be, permissions).
    """
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT | _NOFOLLOW, 0o644)
    except OSError as exc:
        if exc.errno not in (errno.EROFS, errno.EACCES):
            raise DiskError(
                f"cannot take the lock {path}: {exc.strerror}; it must be a plain file in "
                "a folder (a symlink or a file in the folder's place is refused)",
                exc.errno,
                str(path),
            ) from exc
        try:
            fd = os.open(path, os.O_RDONLY | _NOFOLLOW)  # flock works on a read-only fd
        except FileNotFoundError:
            return None  # read-only and never locked: no writer can be there
        except OSError as again:
            raise DiskError(
                f"cannot take the lock {path}: {again.strerror}", again.errno
            ) from again
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
