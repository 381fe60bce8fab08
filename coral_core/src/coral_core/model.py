"""The records a repository hands out: commits, tree entries, tags, branches."""

from __future__ import annotations

import math
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from coral_core.errors import CorruptObjectError, InvalidMetricError
from coral_core.hashing import is_object_id

#: Key under which a tree entry's ``compression_info`` and a commit's metadata
#: record that a lossy codec stored the tensor (and how far off it may be).
LOSSY_KEY = "coral.lossy"

MetricValue = float | int | str | bool


def clean_metrics(metrics: Mapping[str, Any] | None) -> dict[str, MetricValue]:
    """Validate metrics: string keys; numbers (numpy scalars too), strings or bools.

    Raises:
        InvalidMetricError: naming the offending metric.
    """
    cleaned: dict[str, MetricValue] = {}
    for key, value in (metrics or {}).items():
        if not isinstance(key, str) or not key:
            raise InvalidMetricError(f"metric names must be non-empty strings, got {key!r}")
        if hasattr(value, "item") and callable(value.item):  # numpy / torch scalars
            value = value.item()
        if not isinstance(value, (int, float, str, bool)):
            raise InvalidMetricError(
                f"metric {key!r} is a {type(value).__name__}; use a number, string or bool"
            )
        cleaned[key] = value
    return cleaned


@dataclass(frozen=True)
class TreeEntry:
    """One named tensor of a commit: the id of its data plus what describes it."""

    tensor: str
    dtype: str
    shape: tuple[int, ...]
    nbytes: int
    layer_type: str | None = None
    model_name: str | None = None
    compression_info: dict[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            "tensor": self.tensor,
            "dtype": self.dtype,
            "shape": list(self.shape),
            "nbytes": self.nbytes,
        }
        for key in ("layer_type", "model_name", "compression_info"):
            if getattr(self, key) is not None:
                data[key] = getattr(self, key)
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> TreeEntry:
        """An entry from its JSON (a tree, the index): data from disk or a
        remote, so every field is checked.

        Raises:
            CorruptObjectError: for a field missing or of the wrong kind.
        """
        try:
            entry = cls(
                tensor=data["tensor"],
                dtype=data["dtype"],
                shape=tuple(data["shape"]),
                nbytes=data["nbytes"],
                layer_type=data.get("layer_type"),
                model_name=data.get("model_name"),
                compression_info=data.get("compression_info"),
            )
        except (KeyError, TypeError, AttributeError) as exc:
            raise CorruptObjectError(f"a tree entry is malformed: {exc!r}") from None
        counts = [*entry.shape, entry.nbytes]
        sound = (
            isinstance(entry.tensor, str)
            and is_object_id(entry.tensor)
            and isinstance(entry.dtype, str)
            and all(isinstance(n, int) and not isinstance(n, bool) and n >= 0 for n in counts)
            and all(isinstance(v, (str, type(None))) for v in (entry.layer_type, entry.model_name))
            and isinstance(entry.compression_info, (dict, type(None)))
        )
        if not sound:
            raise CorruptObjectError(f"a tree entry is malformed: {dict(data)!r:.200}")
        return entry


@dataclass(frozen=True)
class CommitMetadata:
    """Who made a commit, when (now, unless given), why, and what it scored;
    ``tags`` are labels (any sequence of strings; kept as a tuple)."""

    message: str
    author: str
    timestamp: float = field(default_factory=time.time)
    metrics: dict[str, MetricValue] = field(default_factory=dict)
    tags: tuple[str, ...] = ()
    metadata: dict[str, Any] = field(default_factory=dict)
    environment: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not isinstance(self.tags, tuple):  # the book passes a list
            object.__setattr__(self, "tags", tuple(self.tags))


@dataclass(frozen=True)
class Commit:
    """A commit: its id, its tree, its parents and its metadata."""

    commit_hash: str
    tree_hash: str
    parent_hashes: tuple[str, ...]
    metadata: CommitMetadata
    #: ``{"state": <JSON>, "tree": <tree id or None>}`` when the commit carries a
    #: :class:`~coral_core.TrainingState` (read it with ``Repository.training_state``).
    training: dict[str, Any] | None = None

    @property
    def message(self) -> str:
        return self.metadata.message

    @property
    def author(self) -> str:
        return self.metadata.author

    @property
    def timestamp(self) -> float:
        return self.metadata.timestamp

    @property
    def metrics(self) -> dict[str, MetricValue]:
        return self.metadata.metrics

    @property
    def short_hash(self) -> str:
        return self.commit_hash[:12]

    @property
    def trees(self) -> dict[str, str]:
        """The trees this commit names, by what their entries are: ``tensor``
        (the model) and ``training tensor`` (its training state's), when it has one."""
        trees = {"tensor": self.tree_hash}
        training_tree = (self.training or {}).get("tree")
        if training_tree:
            trees["training tensor"] = str(training_tree)
        return trees

    @property
    def lossy(self) -> dict[str, Any] | None:
        """Set when a lossy codec stored tensors of this commit: ``type``,
        ``max_abs_error`` (the largest error of any element) and ``tensors``."""
        summary = self.metadata.metadata.get(LOSSY_KEY)
        return summary if isinstance(summary, dict) else None

    def to_document(self) -> dict[str, Any]:
        meta = self.metadata
        return {
            "tree": self.tree_hash,
            "parents": list(self.parent_hashes),
            "message": meta.message,
            "author": meta.author,
            "timestamp": meta.timestamp,
            "metrics": meta.metrics,
            "tags": list(meta.tags),
            "metadata": meta.metadata,
            "environment": meta.environment,
            **({"training": self.training} if self.training is not None else {}),
        }

    @classmethod
    def from_document(cls, commit_hash: str, doc: Mapping[str, Any]) -> Commit:
        """A commit from its document (from disk or a remote: every field is checked).

        Raises:
            CorruptObjectError: for a field missing or of the wrong kind.
        """
        try:
            commit = cls(
                commit_hash=commit_hash,
                tree_hash=doc["tree"],
                parent_hashes=tuple(doc["parents"]),
                metadata=CommitMetadata(
                    message=doc["message"],
                    author=doc["author"],
                    timestamp=doc["timestamp"],
                    metrics=dict(doc.get("metrics", {})),
                    tags=tuple(doc.get("tags", ())),
                    metadata=dict(doc.get("metadata", {})),
                    environment=dict(doc.get("environment", {})),
                ),
                training=dict(doc["training"]) if isinstance(doc.get("training"), dict) else None,
            )
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise CorruptObjectError(f"commit {commit_hash} is malformed: {exc!r}") from None
        meta = commit.metadata
        ids = [commit.tree_hash, *commit.parent_hashes]
        sound = (
            all(isinstance(i, str) and is_object_id(i) for i in ids)
            and isinstance(meta.message, str)
            and isinstance(meta.author, str)
            and isinstance(meta.timestamp, (int, float))
            and not isinstance(meta.timestamp, bool)
        )
        if not sound:
            raise CorruptObjectError(f"commit {commit_hash} is malformed")
        return commit


@dataclass(frozen=True)
class Tag:
    """A named version of a commit with a description and metrics."""

    name: str
    commit: str
    description: str | None = None
    metrics: dict[str, MetricValue] = field(default_factory=dict)
    tagger: str | None = None
    timestamp: float | None = None

    @property
    def metadata(self) -> dict[str, MetricValue]:
        """The tag's metrics (the book's name for them)."""
        return self.metrics


@dataclass(frozen=True)
class Branch:
    """A branch and the commit it points at (None before its first commit)."""

    name: str
    commit: str | None
    current: bool


def compare_metric(value: Any, op: str, target: Any) -> bool:
    """Evaluate ``value <op> target`` for a metric filter; False when not comparable."""
    if isinstance(value, float) and math.isnan(value):
        return False
    try:
        if op == ">":
            return bool(value > target)
        if op == ">=":
            return bool(value >= target)
        if op == "<":
            return bool(value < target)
        if op == "<=":
            return bool(value <= target)
        if op in ("==", "="):
            return bool(value == target)
        if op == "!=":
            return bool(value != target)
    except TypeError:
        return False
    raise InvalidMetricError(f"unknown comparison {op!r}; use one of > >= < <= == !=")
