"""The staging index: what the next commit will change, on disk (``.coral/index``).

Staged tensors are already in the object store; the index only names them, so
committing writes no tensor twice and a new process sees what was staged.
Callers hold the refs lock while they read-modify-write it.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from coral_core.errors import CorruptObjectError
from coral_core.files import write_file_atomic
from coral_core.model import TreeEntry


@dataclass
class Staged:
    """Staged changes: tensors to add or replace, names to remove.

    ``replace`` means the next commit holds exactly ``entries`` (a full snapshot)
    instead of the parent's tensors updated by them.
    """

    entries: dict[str, TreeEntry] = field(default_factory=dict)
    removed: set[str] = field(default_factory=set)
    replace: bool = False

    @property
    def empty(self) -> bool:
        return not self.entries and not self.removed and not self.replace

    def apply(self, parent: Mapping[str, TreeEntry]) -> dict[str, TreeEntry]:
        """The tree the next commit gets, given the parent's tree."""
        tree = {} if self.replace else dict(parent)
        for name in self.removed:
            tree.pop(name, None)
        tree.update(self.entries)
        return dict(sorted(tree.items()))


class StagingIndex:
    """Reads and writes :class:`Staged` at ``path``."""

    def __init__(self, path: Path, fsync: bool = True) -> None:
        self.path = path
        self.fsync = fsync

    def read(self) -> Staged:
        try:
            data = json.loads(self.path.read_bytes())
            return Staged(
                entries={str(k): TreeEntry.from_dict(v) for k, v in data["entries"].items()},
                removed={str(name) for name in data["removed"]},
                replace=bool(data["replace"]),
            )
        except FileNotFoundError:
            return Staged()
        except (ValueError, KeyError, TypeError, AttributeError, CorruptObjectError) as exc:
            raise CorruptObjectError(
                f"staging index {self.path} is damaged ({exc!r}); `coral-ml reset` clears it"
            ) from None

    def write(self, staged: Staged) -> None:
        if staged.empty:
            self.clear()
            return
        data = {
            "version": 1,
            "replace": staged.replace,
            "removed": sorted(staged.removed),
            "entries": {name: entry.to_dict() for name, entry in sorted(staged.entries.items())},
        }
        write_file_atomic(self.path, json.dumps(data).encode(), fsync=self.fsync)

    def clear(self) -> None:
        self.path.unlink(missing_ok=True)
