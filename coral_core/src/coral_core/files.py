"""Files written so that a crash leaves the old one or the new one, never half,
and what the disk or the OS refuses (full, read-only, not allowed, too many
open files, a symlink loop) as one :class:`~coral_core.DiskError`.

Everything under ``.coral`` and every folder remote is written through here.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import os
import sys
import uuid
from collections.abc import Callable, Iterator, Sequence
from functools import cache
from pathlib import Path
from typing import BinaryIO

from coral_core.errors import DiskError, UnsafePathError

TEMP_PREFIX = ".tmp-"
#: What each refusal of the OS means to someone who can act on it.
_ADVICE = {
    errno.ENOSPC: "the disk is full: free space and run it again",
    errno.EDQUOT: "the disk quota is used up: free space and run it again",
    errno.EROFS: "the file system is read-only: reads work, writes need it mounted read-write",
    errno.EACCES: "permission denied: run it as a user who may write there",
    errno.EPERM: "not permitted: run it as a user who may write there",
    errno.EMFILE: "too many open files: raise the limit (ulimit -n) and run it again",
    errno.ENFILE: "the system has too many open files: run it again later",
    errno.ELOOP: "a symlink loop (or a symlink where none may be)",
    errno.EIO: "the disk reported an input/output error: check it",
}


@contextlib.contextmanager
def disk_errors(action: str) -> Iterator[None]:
    """Turn an ``OSError`` of the block into a :class:`DiskError` saying what
    was being done (``"write .coral/refs/heads/main"``) and what to do.
    A missing file stays what it is: callers tell that case apart themselves."""
    try:
        yield
    except DiskError:
        raise
    except (FileNotFoundError, NotADirectoryError, IsADirectoryError, FileExistsError):
        raise
    except OSError as exc:
        advice = _ADVICE.get(exc.errno or 0, exc.strerror or str(exc))
        where = f" ({exc.filename})" if exc.filename else ""
        raise DiskError(f"cannot {action}: {advice}{where}", exc.errno, exc.filename) from exc


def write_file_atomic(path: Path, data: bytes | memoryview, fsync: bool = True) -> None:
    """Write ``path`` through a temporary file in the same folder and ``os.replace``.

    A crash leaves either the old file or the new one, never half of one; a file
    someone has memory-mapped is replaced, not rewritten.

    Raises:
        DiskError: when the disk or the OS refuses; ``path`` is as it was.
    """
    with disk_errors(f"write {path}"):
        _write_file_atomic(path, data, fsync)


def _write_file_atomic(path: Path, data: bytes | memoryview, fsync: bool) -> None:
    tmp = write_temp_file(path.parent, data, fsync)
    try:
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise
    if fsync:
        fsync_dir(path.parent)


def write_temp_file(folder: Path, data: bytes | memoryview, fsync: bool) -> Path:
    """Write ``data`` to a new hidden temporary file in ``folder`` and return its path."""
    if isinstance(data, memoryview) and not data.contiguous:
        data = data.tobytes()  # a strided view cannot be written as one buffer
    tmp = folder / f"{TEMP_PREFIX}{os.getpid()}-{uuid.uuid4().hex}"
    try:
        try:
            handle = open(tmp, "xb")  # noqa: SIM115 (closed by the with below)
        except FileNotFoundError:  # the folder's first file (mkdir only then: one syscall less)
            folder.mkdir(parents=True, exist_ok=True)
            handle = open(tmp, "xb")  # noqa: SIM115
        with handle:
            handle.write(data)
            if fsync:
                handle.flush()
                os.fsync(handle.fileno())
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise
    return tmp


def append_lines(path: Path, lines: Sequence[str], fsync: bool = True) -> None:
    """Append text lines to ``path`` in one write; if a crash left the last line
    torn, start on a new line so the torn one stays the only casualty. A
    symlink in ``path``'s place is not followed out of its folder.

    Raises:
        DiskError: when the disk or the OS refuses.
    """
    with disk_errors(f"append to {path}"):
        _append_lines(path, lines, fsync)


def _append_lines(path: Path, lines: Sequence[str], fsync: bool) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    flags = os.O_RDWR | os.O_APPEND | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0)
    with os.fdopen(os.open(path, flags, 0o644), "a+b") as handle:
        handle.seek(0, os.SEEK_END)
        torn = handle.tell() > 0 and not _ends_with_newline(handle)
        text = "".join(f"{line}\n" for line in lines)
        handle.write((("\n" if torn else "") + text).encode())
        if fsync:
            handle.flush()
            os.fsync(handle.fileno())


def _ends_with_newline(handle: BinaryIO) -> bool:
    handle.seek(-1, os.SEEK_END)
    return handle.read(1) == b"\n"


def fsync_dir(folder: Path) -> None:
    """Make a rename in ``folder`` durable."""
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@cache
def _syncfs() -> Callable[[int], int] | None:
    """Linux's ``syncfs(fd)``: flush one file system in one call; None elsewhere."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        function = ctypes.CDLL(None, use_errno=True).syncfs
    except (OSError, AttributeError):
        return None
    function.argtypes = [ctypes.c_int]
    function.restype = ctypes.c_int
    return function


def flush_paths(root: Path, paths: Iterator[Path]) -> None:
    """Make ``paths`` (files or folders on the file system of ``root``) durable:
    one ``syncfs`` where the platform has it, one ``fsync`` per path otherwise."""
    syncfs = _syncfs()
    if syncfs is None:
        for path in paths:
            fsync_dir(path)  # opening read-only and fsync works for files too
        return
    fd = os.open(root, os.O_RDONLY)
    try:
        if syncfs(fd) != 0:
            error = ctypes.get_errno()
            raise OSError(error, f"syncfs failed: {os.strerror(error)}", str(root))
    finally:
        os.close(fd)


def confined_path(folder: Path, name: str) -> Path:
    """``folder / name`` for a file name that came from data (a commit's
    metadata, a remote), refused unless it stays inside ``folder``.

    Raises:
        UnsafePathError: for an absolute name, a drive letter, ``..``, a NUL,
            a backslash, or a symlink in ``folder`` that leads elsewhere.
    """
    parts = name.split("/")
    if (
        not name
        or "\0" in name
        or "\\" in name
        or name.startswith("/")
        or (len(name) > 1 and name[1] == ":")
        or any(part in ("", ".", "..") for part in parts)
    ):
        raise UnsafePathError(f"{name!r} cannot name a file inside {folder}; nothing was written")
    target = folder / name
    root = os.path.realpath(folder)
    where = os.path.realpath(target)
    if where != root and not where.startswith(root + os.sep):
        raise UnsafePathError(f"{name!r} leads out of {folder} (to {where}); nothing was written")
    return target
