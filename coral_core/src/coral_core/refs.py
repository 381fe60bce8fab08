"""Branches, tags, HEAD and the reflog, as small files under ``.coral``.

Layout (as git): ``HEAD`` holds ``ref: refs/heads/<branch>`` or a commit id
(detached); ``refs/heads/<name>`` and ``refs/tags/<name>`` hold one id each;
``logs/<ref>`` is an append-only JSON-lines reflog. Every file is replaced
atomically; callers hold :meth:`RefDatabase.lock` around read-modify-write.

Beyond git's: ``refs/runs/<experiment>/<run>/best`` and ``.../last`` are a
training run's pointers (they only move forward along the run); a file
``refs/pins/<commit>`` keeps a commit's weights whatever retention says, and
``refs/pruned/<commit>`` records that retention let them go. Pins and prune
marks hold their own commit id; prune marks are not roots of anything.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from coral_core.errors import CorruptObjectError, InvalidRefNameError, RefExistsError
from coral_core.files import TEMP_PREFIX, append_lines, write_file_atomic
from coral_core.hashing import is_object_id
from coral_core.locks import file_lock
from coral_core.store.local import REF_LOCK

_log = logging.getLogger("coral.refs")
HEADS = "refs/heads/"
TAGS = "refs/tags/"
REMOTES = "refs/remotes/"  # branches as last fetched from (or pushed to) each remote
RUNS = "refs/runs/"
PINS = "refs/pins/"
PRUNED = "refs/pruned/"
#: What a ref file being replaced by a compare-and-swap is called meanwhile.
LOCK_SUFFIX = ".lock"
_SYMREF = "ref: "


@dataclass(frozen=True)
class Head:
    """Where HEAD points: a branch (maybe with no commit yet) or a detached commit."""

    branch: str | None
    commit: str | None

    @property
    def detached(self) -> bool:
        return self.branch is None


@dataclass(frozen=True)
class ReflogEntry:
    """One move of a ref: from ``old`` to ``new`` (None for created/deleted)."""

    ref: str
    old: str | None
    new: str | None
    author: str
    timestamp: float
    message: str


class RefDatabase:
    """Reads and writes refs under ``coral_dir``."""

    def __init__(self, coral_dir: Path, fsync: bool = True) -> None:
        self.root = coral_dir
        self.fsync = fsync

    @contextmanager
    def lock(self, timeout: float = 60.0) -> Iterator[None]:
        """Exclusive lock for every ref, HEAD, index and reflog update."""
        with file_lock(self.root / REF_LOCK, timeout=timeout):
            yield

    def _path(self, ref: str) -> Path:
        """The file of a full ref name; names that could leave ``.coral``, or that
        no file can have (a NUL byte, a part over 255 bytes), are refused."""
        if not ref.startswith("refs/") or ".." in ref or "\\" in ref or "//" in ref:
            raise InvalidRefNameError(f"{ref!r} is not a ref under refs/")
        try:
            fits = all(b"\0" not in p and len(p) <= 255 for p in map(os.fsencode, ref.split("/")))
        except UnicodeEncodeError:
            fits = False
        if not fits:
            raise InvalidRefNameError(
                f"{ref[:80]!r} cannot name a file: a NUL, an unencodable character "
                "or a part longer than 255 bytes"
            )
        return self.root / ref

    def _write(self, path: Path, text: str) -> None:
        write_file_atomic(path, text.encode(), fsync=self.fsync)

    # -- HEAD ----------------------------------------------------------------------

    def head(self) -> Head:
        """Where HEAD points.

        Raises:
            CorruptObjectError: for a HEAD that names no branch nor commit (a
                damaged file, or a ref outside ``refs/heads/``).
        """
        text = _text(self.root / "HEAD")
        if text.startswith(_SYMREF):
            ref = text[len(_SYMREF) :]
            if not ref.startswith(HEADS) or len(ref) == len(HEADS):
                raise CorruptObjectError(
                    f"{self.root / 'HEAD'} names {ref!r}, not a branch; repair it with "
                    "`coral-ml checkout main`"
                )
            return Head(branch=ref.removeprefix(HEADS), commit=self.read(ref))
        if not is_object_id(text):
            raise CorruptObjectError(f"{self.root / 'HEAD'} holds {text!r}, not a ref or commit id")
        return Head(branch=None, commit=text)

    def set_head(self, branch: str | None = None, commit: str | None = None) -> None:
        """Point HEAD at ``branch``, or detach it at ``commit``."""
        self._write(self.root / "HEAD", f"{_SYMREF}{HEADS}{branch}\n" if branch else f"{commit}\n")

    # -- refs ----------------------------------------------------------------------

    def read(self, ref: str) -> str | None:
        """Id a full ref name (``refs/heads/main``) points at, or None."""
        path = self._path(ref)
        try:
            text = _text(path)
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
            return None
        if not is_object_id(text):
            raise CorruptObjectError(f"ref file {path} holds {text!r}, not an object id")
        return text

    def write(self, ref: str, object_id: str) -> None:
        path = self._path(ref)
        self._check_no_clash(ref)
        self._write(path, object_id + "\n")

    def set_if_equals(
        self, ref: str, old: str | None, new: str | None, author: str, message: str
    ) -> bool:
        """Compare-and-swap ``ref`` from ``old`` to ``new`` (None: absent, or
        delete) under :meth:`lock`, with its reflog line in the same step (as
        dulwich's ``set_if_equals``); False when it held something else. For
        writers from elsewhere (a push into this repository's folder); the
        caller must not hold the lock."""
        with self.lock():
            if self.read(ref) != old:
                return False
            if new is None:
                self.delete(ref)
            else:
                self.write(ref, new)
            if ref.startswith(HEADS) or ref.startswith(RUNS):
                self.log_move(ref, old, new, author, message)
            return True

    def delete(self, ref: str) -> None:
        path = self._path(ref)
        path.unlink(missing_ok=True)
        top = self.root / ref.split("/")[0] / ref.split("/")[1]
        parent = path.parent
        while parent != top and parent.is_dir() and not any(parent.iterdir()):
            parent.rmdir()
            parent = parent.parent

    def _check_no_clash(self, ref: str) -> None:
        """``a`` and ``a/b`` cannot both exist: one would be a file and a folder."""
        path = self._path(ref)
        if path.is_dir():
            raise RefExistsError(
                f"cannot create {ref}: refs named {ref}/... exist; pick another name"
            )
        for parent in path.relative_to(self.root).parents:
            if (self.root / parent).is_file():
                raise RefExistsError(f"cannot create {ref}: {parent.as_posix()} exists")

    def names(self, prefix: str) -> list[str]:
        """The names of the refs under ``prefix``, without reading them (for
        pins and prune marks, whose names are their commits)."""
        found: list[str] = []
        pending = [("", os.path.join(self.root, prefix))]
        while pending:
            below, folder = pending.pop()
            try:
                entries = list(os.scandir(folder))
            except (FileNotFoundError, NotADirectoryError):
                continue
            for entry in entries:
                if entry.is_dir(follow_symlinks=False):
                    pending.append((f"{below}{entry.name}/", entry.path))
                elif not entry.name.startswith(TEMP_PREFIX) and not entry.name.endswith(
                    LOCK_SUFFIX
                ):
                    found.append(below + entry.name)
        return sorted(found)

    def list_refs(self, prefix: str) -> dict[str, str]:
        """Every ref under ``prefix`` (``refs/heads/``), by short name."""
        base = self.root / prefix
        refs: dict[str, str] = {}
        if not base.is_dir():
            return refs
        for dirpath, _, filenames in os.walk(base):
            for filename in filenames:
                if filename.startswith(TEMP_PREFIX) or filename.endswith(LOCK_SUFFIX):
                    continue
                path = Path(dirpath) / filename
                object_id = self.read(path.relative_to(self.root).as_posix())
                if object_id:
                    refs[path.relative_to(base).as_posix()] = object_id
        return dict(sorted(refs.items()))

    # -- reflog --------------------------------------------------------------------

    def _log_path(self, ref: str) -> Path:
        if ref != "HEAD":
            self._path(ref)  # validates
        return self.root / "logs" / ref

    def log_move(
        self, ref: str, old: str | None, new: str | None, author: str, message: str
    ) -> None:
        """Append one line to the reflog of ``ref``. The move it records has
        happened: a disk that fails now costs the line (with a warning), not
        an error that would say the move did not happen."""
        path = self._log_path(ref)
        line = json.dumps(
            {"old": old, "new": new, "author": author, "time": time.time(), "message": message}
        )
        try:
            append_lines(path, [line], fsync=self.fsync)
        except OSError as exc:
            _log.warning("the reflog of %s misses a move to %s: %s", ref, new, exc)

    def reflog(self, ref: str = "HEAD") -> list[ReflogEntry]:
        """Moves of ``ref``, newest first; a torn last line (crash) is skipped."""
        path = self._log_path(ref)
        if not path.is_file():
            return []
        entries = []
        for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
            try:
                item = json.loads(line)
                entry = ReflogEntry(
                    ref, item["old"], item["new"], item["author"], item["time"], item["message"]
                )
            except (ValueError, KeyError, TypeError):
                continue
            if _sound(entry):  # a damaged line is skipped, as a torn one is
                entries.append(entry)
        return entries[::-1]


def _text(path: Path) -> str:
    """A small file's text, stripped; bytes that are not text read as damage, not a crash."""
    return path.read_bytes().decode("utf-8", errors="replace").strip()


def _sound(entry: ReflogEntry) -> bool:
    ids = all(v is None or (isinstance(v, str) and is_object_id(v)) for v in (entry.old, entry.new))
    return (
        ids
        and isinstance(entry.author, str)
        and isinstance(entry.message, str)
        and isinstance(entry.timestamp, (int, float))
        and not isinstance(entry.timestamp, bool)
    )
