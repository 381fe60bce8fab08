"""Per-tensor differences between two commits, with numeric change statistics."""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import numpy as np

from coral_core.dtypes import bit_view
from coral_core.model import MetricValue, TreeEntry

ADDED, REMOVED, MODIFIED, UNCHANGED = "added", "removed", "modified", "unchanged"
_BLOCK = 1 << 20  # elements per float64 block, so statistics need bounded memory


@dataclass(frozen=True)
class ChangeStats:
    """How much a tensor changed (computed in float64)."""

    changed_elements: int  # elements whose bits differ
    relative_l2: float  # ||b - a|| / ||a||
    max_abs_change: float
    cosine_similarity: float


@dataclass(frozen=True)
class TensorDiff:
    """One tensor's status between two commits; ``stats`` for same-shape changes."""

    name: str
    status: str
    before: TreeEntry | None
    after: TreeEntry | None
    stats: ChangeStats | None = None


@dataclass(frozen=True)
class CommitDiff:
    """Every tensor's status between ``commit_a`` and ``commit_b``, and their metrics.

    When either commit's weights are gone (pruned or shallow), ``weights_gone``
    names it and ``tensors`` is empty: only the metrics can be compared.
    """

    commit_a: str
    commit_b: str
    tensors: dict[str, TensorDiff]
    metrics: dict[str, tuple[MetricValue | None, MetricValue | None]] = field(default_factory=dict)
    weights_gone: tuple[str, ...] = ()

    def _names(self, status: str) -> list[str]:
        return [name for name, item in self.tensors.items() if item.status == status]

    @property
    def added(self) -> list[str]:
        return self._names(ADDED)

    @property
    def removed(self) -> list[str]:
        return self._names(REMOVED)

    @property
    def modified(self) -> list[str]:
        return self._names(MODIFIED)

    @property
    def unchanged(self) -> list[str]:
        return self._names(UNCHANGED)


def change_stats(before: np.ndarray, after: np.ndarray) -> ChangeStats:
    """Statistics of ``after - before`` for two arrays of one shape and dtype."""
    flat_a, flat_b = before.reshape(-1), after.reshape(-1)
    changed = int(np.count_nonzero(bit_view(flat_a) != bit_view(flat_b)))
    diff_sq = norm_a_sq = norm_b_sq = dot = 0.0
    max_abs = 0.0
    for start in range(0, flat_a.size, _BLOCK):
        a = flat_a[start : start + _BLOCK].astype(np.float64)
        b = flat_b[start : start + _BLOCK].astype(np.float64)
        delta = b - a
        diff_sq += float(np.dot(delta, delta))
        norm_a_sq += float(np.dot(a, a))
        norm_b_sq += float(np.dot(b, b))
        dot += float(np.dot(a, b))
        if delta.size:
            max_abs = max(max_abs, float(np.max(np.abs(delta))))
    norm_a, norm_b = math.sqrt(norm_a_sq), math.sqrt(norm_b_sq)
    from_zero = 0.0 if diff_sq == 0 else math.inf  # a change from all zeros is infinite
    relative = math.sqrt(diff_sq) / norm_a if norm_a > 0 else from_zero
    if norm_a > 0 and norm_b > 0:
        cosine = dot / (norm_a * norm_b)
    else:
        cosine = 1.0 if norm_a == norm_b else 0.0
    return ChangeStats(changed, relative, max_abs, cosine)


def diff_trees(
    tree_a: Mapping[str, TreeEntry],
    tree_b: Mapping[str, TreeEntry],
    load: Callable[[str], np.ndarray],
    with_stats: bool = True,
) -> dict[str, TensorDiff]:
    """Compare two trees by tensor id; load data only for changed tensors of one shape."""
    result: dict[str, TensorDiff] = {}
    for name in sorted(set(tree_a) | set(tree_b)):
        before, after = tree_a.get(name), tree_b.get(name)
        if before is None:
            result[name] = TensorDiff(name, ADDED, None, after)
        elif after is None:
            result[name] = TensorDiff(name, REMOVED, before, None)
        elif before.tensor == after.tensor:
            result[name] = TensorDiff(name, UNCHANGED, before, after)
        else:
            stats = None
            if with_stats and before.shape == after.shape and before.dtype == after.dtype:
                stats = change_stats(load(before.tensor), load(after.tensor))
            result[name] = TensorDiff(name, MODIFIED, before, after, stats)
    return result
