"""Which commits' weights are held: kept, pruned, or never fetched (shallow).

History is append-only: a commit keeps its place, message, metrics and
parents forever. Its weights (its trees and what only they reference) can go:

- **pruned**: retention, or a user, let them go. A prune mark
  ``refs/pruned/<commit>`` says so; it travels with push and fetch, so a
  commit pruned on one side is pruned on the other. A mark does not take
  what a branch tip, tag, pin or run pointer holds: those stay kept while
  their weights are still there. (A remote-tracking branch holds nothing:
  it says where a remote was, and the remote keeps its own tips.)
- **shallow**: a ``clone --depth`` or ``fetch --depth`` did not bring them;
  ``.coral/shallow`` lists such commits (one id per line) until a
  ``fetch --deepen`` or ``--unshallow`` does.

``gc``, ``verify``, ``repack`` and every transfer walk history through a
:class:`WeightsView`, so none of them looks for what is not meant to be there.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from coral_core.errors import CoralError
from coral_core.files import write_file_atomic
from coral_core.hashing import is_object_id
from coral_core.object_format import ObjectKind
from coral_core.refs import HEADS, PINS, RUNS, TAGS

KEPT, PRUNED, SHALLOW = "kept", "pruned", "shallow"
SHALLOW_FILE = "shallow"


class RefSource(Protocol):
    """Refs by full name and by prefix: a repository's or a remote's."""

    def read(self, ref: str) -> str | None:
        """The id ``ref`` holds, or None."""

    def list_refs(self, prefix: str) -> dict[str, str]:
        """Every ref under ``prefix``, by the rest of its name."""


def protected_commits(
    refs: RefSource, peel: Callable[[str], str], extra: Iterable[str] = ()
) -> frozenset[str]:
    """Commits whose weights no prune mark takes: branch tips, tag targets,
    pins, run pointers, and ``extra`` (HEAD)."""
    found = set(extra)
    for prefix in (HEADS, PINS, RUNS):
        found.update(refs.list_refs(prefix).values())
    for tag in refs.list_refs(TAGS).values():
        try:
            found.add(peel(tag))
        except CoralError:  # a damaged tag protects nothing; verify reports it
            continue
    return frozenset(found)


@dataclass(frozen=True)
class WeightsView:
    """A snapshot of which commits' weights a repository or remote holds.

    Args:
        marked: commits with a prune mark.
        protected: commits a ref holds (see :func:`protected_commits`).
        shallow: commits whose weights were never fetched.
        has: whether an object is stored (asked only for marked, protected commits).
    """

    marked: frozenset[str]
    protected: frozenset[str]
    shallow: frozenset[str]
    has: Callable[[str], bool]

    def status(self, commit: str, trees: Sequence[str]) -> str:
        """:data:`KEPT`, :data:`PRUNED` or :data:`SHALLOW` for ``commit``, whose
        trees (model and training state) are ``trees``."""
        if commit in self.shallow:
            return SHALLOW
        if commit not in self.marked:
            return KEPT
        if commit in self.protected and all(self.has(tree) for tree in trees):
            return KEPT
        return PRUNED

    def follow(
        self, commit: str, references: Sequence[tuple[str, ObjectKind]]
    ) -> list[tuple[str, ObjectKind]]:
        """What a walk of history follows from ``commit``: everything it
        references when its weights are kept, else its parents only."""
        trees = [child for child, kind in references if kind == ObjectKind.TREE]
        if self.status(commit, trees) == KEPT:
            return list(references)
        return [(child, kind) for child, kind in references if kind == ObjectKind.COMMIT]


class ShallowList:
    """``.coral/shallow``: the commits of this repository whose weights were never fetched."""

    def __init__(self, coral_dir: Path, fsync: bool = True) -> None:
        self.path = coral_dir / SHALLOW_FILE
        self.fsync = fsync

    def read(self) -> frozenset[str]:
        """The shallow commits (empty for a full repository); lines that are not ids are skipped."""
        try:
            text = self.path.read_text(encoding="ascii", errors="replace")
        except FileNotFoundError:
            return frozenset()
        return frozenset(line for line in text.split() if is_object_id(line))

    def write(self, commits: Iterable[str]) -> None:
        """Replace the list (the caller holds the refs lock); no file when empty."""
        ids = sorted(set(commits))
        if not ids:
            self.path.unlink(missing_ok=True)
            return
        write_file_atomic(self.path, "".join(f"{c}\n" for c in ids).encode(), fsync=self.fsync)
