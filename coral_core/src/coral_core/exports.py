"""Commits written back as files their framework loads (``coral-ml export``).

A commit's tensors go to any :mod:`~coral_core.formats` file, but some
frameworks need more than tensors by name: Keras' ``load_weights`` reads its
own layout (``layers/dense/vars/0``), ``from_pretrained`` a folder with
``config.json`` and the tokenizer's files. A framework package that made a
commit knows how to write it for that framework: it declares a
:class:`CommitExport` under the entry point group ``coral.exports``, the
entry point named after the commit metadata key it writes
(``coral_tf.model``), so finding the exporter of a commit imports only the
framework that made it.

Tied tensors (an LM head sharing its embedding's matrix) are stored once
and listed in the commit's ``coral_torch.ties``: a plain export writes each
of their names, as ``state_dict()`` has them, so a strict load finds all.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from importlib.metadata import entry_points
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from coral_core.errors import CoralError
from coral_core.model import Commit

if TYPE_CHECKING:
    from coral_core.repository import Repository

#: Entry point group of framework exporters; each entry point is a :class:`CommitExport`.
EXPORT_GROUP = "coral.exports"
#: Commit metadata key: ``{alias: name stored}`` for tensors that share memory.
TIES_KEY = "coral_torch.ties"
#: The suffix that stands for a folder in :attr:`CommitExport.suffixes`.
FOLDER = ""


@dataclass(frozen=True)
class CommitExport:
    """How a framework writes the commits it made as files it loads.

    Attributes:
        framework: the framework's name, for messages.
        suffixes: the targets it writes (``".keras"``; :data:`FOLDER` for a folder).
        write: writes ``(repository, commit, target)``; returns the files written.
    """

    framework: str
    suffixes: tuple[str, ...]
    write: Callable[[Repository, Commit, Path], list[Path]]


def target_suffix(path: str | os.PathLike[str]) -> str:
    """The export kind a path asks for: its suffix (``.weights.h5`` whole), or
    :data:`FOLDER` for a path without one."""
    name = Path(path).name.lower()
    if name.endswith(".weights.h5"):
        return ".weights.h5"
    return Path(name).suffix


def exporter_for(commit: Commit, path: str | os.PathLike[str]) -> CommitExport | None:
    """The exporter of the framework that made ``commit``, when it writes
    ``path``'s kind; None for a plain export of the tensors.

    Raises:
        CoralError: when an entry point of :data:`EXPORT_GROUP` is not a
            :class:`CommitExport`.
    """
    suffix = target_suffix(path)
    for entry in entry_points(group=EXPORT_GROUP):
        if entry.name not in commit.metadata.metadata:
            continue
        exporter = entry.load()
        if not isinstance(exporter, CommitExport):
            raise CoralError(f"entry point {entry.name!r} in {EXPORT_GROUP} is not a CommitExport")
        if suffix in exporter.suffixes:
            return exporter
    return None


def tensor_aliases(commit: Commit) -> dict[str, str]:
    """``{alias: name stored}`` of the commit's tied tensors (none for most)."""
    ties = commit.metadata.metadata.get(TIES_KEY)
    if not isinstance(ties, dict):
        return {}
    return {str(alias): str(name) for alias, name in ties.items()}


def with_aliases(arrays: Mapping[str, np.ndarray], commit: Commit) -> dict[str, np.ndarray]:
    """``arrays`` plus each tied alias of a tensor among them, under its own name."""
    found = dict(arrays)
    for alias, name in tensor_aliases(commit).items():
        if name in arrays and alias not in found:
            found[alias] = arrays[name]
    return found
