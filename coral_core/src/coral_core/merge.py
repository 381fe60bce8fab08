"""Three-way merges of weight trees, and the model-merging methods that resolve conflicts.

Per tensor name, against the merge base: a tensor changed by one side only
takes that side; changed by several is a conflict, and the
:class:`MergeStrategy` decides: ``OURS`` / ``THEIRS`` pick a side, ``FAIL``
raises :class:`MergeConflictError` listing every conflict, and the arithmetic
strategies combine the versions: ``AVERAGE``, ``WEIGHTED`` (``alpha``, or
``weights`` for several), and on the change from the base (the task vector)
``TASK_ARITHMETIC`` (``scaling``), ``TIES`` (``density``, sign election),
``DARE`` (``drop_rate``, seeded per tensor so a merge is reproducible) and
``SLERP`` (``t``). Arithmetic runs in float32 (float64 for float64 tensors)
and is cast back to the stored dtype; integer and bool tensors are never
averaged: they follow ours (theirs with ``THEIRS``) and are reported.

More strategies plug in through the entry point group
``coral.merge_strategies``: each is a :data:`MergeFunction`.
"""

from __future__ import annotations

import enum
import math
import zlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from importlib.metadata import entry_points
from typing import Any

import numpy as np

from coral_core.errors import ConfigError, CoralError
from coral_core.model import TreeEntry

#: Entry point group of merge strategies; each entry point is a :data:`MergeFunction`.
STRATEGY_GROUP = "coral.merge_strategies"


class MergeConflictError(CoralError, ValueError):
    """Tensors changed on several sides that the strategy cannot (or may not) resolve."""

    def __init__(self, conflicts: Mapping[str, str]) -> None:
        self.conflicts = dict(sorted(conflicts.items()))
        listed = "; ".join(f"{name}: {why}" for name, why in list(self.conflicts.items())[:20])
        more = f" and {len(conflicts) - 20} more" if len(conflicts) > 20 else ""
        super().__init__(
            f"{len(conflicts)} conflicting tensor(s): {listed}{more}. Nothing was changed; "
            "merge again with a strategy (OURS, THEIRS, AVERAGE, TIES, ...)"
        )


class MergeStrategy(str, enum.Enum):
    """How conflicting tensors are resolved."""

    OURS = "ours"
    THEIRS = "theirs"
    FAIL = "fail"
    AVERAGE = "average"
    WEIGHTED = "weighted"
    TASK_ARITHMETIC = "task_arithmetic"
    TIES = "ties"
    DARE = "dare"
    SLERP = "slerp"


@dataclass(frozen=True)
class MergeOptions:
    """Parameters of the arithmetic strategies (each uses the ones it names).

    Args:
        weights: one per merged version (ours first), for AVERAGE, WEIGHTED,
            TASK_ARITHMETIC, TIES and DARE; normalized where they average.
        alpha: WEIGHTED of two: ``alpha * ours + (1 - alpha) * theirs``.
        scaling: how much of the combined task vector is added to the base.
        density: TIES keeps this fraction of each task vector (largest magnitudes).
        drop_rate: DARE drops this fraction of each task vector, rescaling the rest.
        seed: DARE's random seed (mixed with each tensor's name).
        t: SLERP's position from ours (0) to theirs (1).

    Raises:
        ConfigError: for values out of range.
    """

    weights: tuple[float, ...] | None = None
    alpha: float = 0.5
    scaling: float = 1.0
    density: float = 0.2
    drop_rate: float = 0.5
    seed: int = 0
    t: float = 0.5

    def __post_init__(self) -> None:
        for name, low, high in (
            ("alpha", 0.0, 1.0),
            ("density", 0.0, 1.0),
            ("t", 0.0, 1.0),
            ("drop_rate", 0.0, 0.999999),
        ):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or not low <= value <= high:
                raise ConfigError(f"merge option {name} must be in [{low}, {high}], not {value!r}")
        if self.density == 0:
            raise ConfigError("merge option density must be above 0")
        if self.weights is not None:
            if not self.weights or any(not math.isfinite(w) for w in self.weights):
                raise ConfigError("merge weights must be finite numbers, one per version")
            if sum(self.weights) == 0:
                raise ConfigError("merge weights must not sum to 0")

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["weights"] = list(self.weights) if self.weights is not None else None
        return data


#: ``fn(versions, base, options, name) -> merged``: float arrays of one shape
#: (ours first); ``base`` is None when no ancestor has the tensor.
MergeFunction = Callable[[list[np.ndarray], "np.ndarray | None", MergeOptions, str], np.ndarray]


def _weights(options: MergeOptions, count: int, normalized: bool) -> np.ndarray:
    if options.weights is None:
        weights = np.ones(count)
    elif len(options.weights) != count:
        raise ConfigError(f"{len(options.weights)} merge weights for {count} versions")
    else:
        weights = np.asarray(options.weights, dtype=np.float64)
    return weights / weights.sum() if normalized else weights


def _weighted_sum(arrays: Sequence[np.ndarray], weights: np.ndarray) -> np.ndarray:
    total = np.zeros_like(arrays[0])
    for array, weight in zip(arrays, weights, strict=True):
        total += array * array.dtype.type(weight)
    return total


def _need_base(base: np.ndarray | None, method: str) -> np.ndarray:
    if base is None:
        raise _Unresolvable(f"{method} needs the tensor in the merge base (none has it)")
    return base


def _add_scaled(origin: np.ndarray, vector: np.ndarray, scaling: float) -> np.ndarray:
    """``origin + scaling * vector`` in the working dtype."""
    return np.asarray(origin + vector * origin.dtype.type(scaling))


class _Unresolvable(Exception):
    """One tensor a strategy cannot merge; collected into a MergeConflictError."""


def average(versions: list[np.ndarray], base: Any, options: MergeOptions, name: str) -> np.ndarray:
    """The (weighted) mean of the versions."""
    return _weighted_sum(versions, _weights(options, len(versions), normalized=True))


def weighted(versions: list[np.ndarray], base: Any, options: MergeOptions, name: str) -> np.ndarray:
    """``alpha * ours + (1 - alpha) * theirs``; with ``weights``, their normalized mix."""
    if options.weights is None and len(versions) == 2:
        return _weighted_sum(versions, np.array([options.alpha, 1.0 - options.alpha]))
    if options.weights is None:
        raise _Unresolvable("WEIGHTED of more than two versions needs weights")
    return average(versions, base, options, name)


def task_arithmetic(
    versions: list[np.ndarray], base: np.ndarray | None, options: MergeOptions, name: str
) -> np.ndarray:
    """``base + scaling * sum(w_i * (version_i - base))``."""
    origin = _need_base(base, "TASK_ARITHMETIC")
    vectors = [v - origin for v in versions]
    summed = _weighted_sum(vectors, _weights(options, len(versions), normalized=False))
    return _add_scaled(origin, summed, options.scaling)


def ties(
    versions: list[np.ndarray], base: np.ndarray | None, options: MergeOptions, name: str
) -> np.ndarray:
    """TIES-merging: trim each task vector to its ``density`` largest magnitudes,
    elect each element's sign by the summed trimmed vectors, and average the
    entries that agree with it; ``base + scaling * merged``."""
    origin = _need_base(base, "TIES")
    weights = _weights(options, len(versions), normalized=False)
    trimmed = []
    for version, weight in zip(versions, weights, strict=True):
        vector = (version - origin).reshape(-1) * origin.dtype.type(weight)
        keep = max(1, math.ceil(options.density * vector.size)) if vector.size else 0
        if keep < vector.size:
            threshold_index = np.argpartition(np.abs(vector), vector.size - keep)[
                : vector.size - keep
            ]
            vector = vector.copy()
            vector[threshold_index] = 0
        trimmed.append(vector)
    stacked = np.stack(trimmed)
    sign = np.sign(stacked.sum(axis=0))
    agree = (np.sign(stacked) == sign) & (stacked != 0)
    count = agree.sum(axis=0)
    merged = np.where(agree, stacked, 0).sum(axis=0) / np.maximum(count, 1).astype(stacked.dtype)
    return _add_scaled(origin, merged.reshape(origin.shape), options.scaling)


def dare(
    versions: list[np.ndarray], base: np.ndarray | None, options: MergeOptions, name: str
) -> np.ndarray:
    """DARE: drop ``drop_rate`` of each task vector's entries at random (seeded by
    ``seed`` and the tensor's name), rescale the rest by ``1 / (1 - drop_rate)``,
    and add their (weighted) sum, times ``scaling``, to the base."""
    origin = _need_base(base, "DARE")
    rng = np.random.default_rng([options.seed, zlib.crc32(name.encode())])
    keep = origin.dtype.type(1.0 / (1.0 - options.drop_rate))
    vectors = [
        (v - origin) * (rng.random(origin.shape) >= options.drop_rate) * keep for v in versions
    ]
    summed = _weighted_sum(vectors, _weights(options, len(versions), normalized=False))
    return _add_scaled(origin, summed, options.scaling)


def slerp(versions: list[np.ndarray], base: Any, options: MergeOptions, name: str) -> np.ndarray:
    """Spherical interpolation from ours to theirs at ``t`` (linear when they are
    (anti)parallel or zero)."""
    if len(versions) != 2:
        raise _Unresolvable(f"SLERP merges two versions, not {len(versions)}")
    a, b = (v.astype(np.float64).reshape(-1) for v in versions)
    t = options.t
    norms = np.linalg.norm(a) * np.linalg.norm(b)
    cosine = float(np.dot(a, b) / norms) if norms else 1.0
    if abs(cosine) > 0.9995:
        mixed = (1 - t) * a + t * b
    else:
        theta = math.acos(max(-1.0, min(1.0, cosine)))
        mixed = (math.sin((1 - t) * theta) * a + math.sin(t * theta) * b) / math.sin(theta)
    return mixed.reshape(versions[0].shape).astype(versions[0].dtype)


BUILT_IN: dict[str, MergeFunction] = {
    MergeStrategy.AVERAGE.value: average,
    MergeStrategy.WEIGHTED.value: weighted,
    MergeStrategy.TASK_ARITHMETIC.value: task_arithmetic,
    MergeStrategy.TIES.value: ties,
    MergeStrategy.DARE.value: dare,
    MergeStrategy.SLERP.value: slerp,
}
_PICKS = {MergeStrategy.OURS.value, MergeStrategy.THEIRS.value, MergeStrategy.FAIL.value}


def strategy_name(strategy: MergeStrategy | str) -> str:
    """The strategy's name, checked: a built-in or an installed plugin.

    Raises:
        ConfigError: for an unknown strategy.
    """
    name = strategy.value if isinstance(strategy, MergeStrategy) else str(strategy).lower()
    if name in BUILT_IN or name in _PICKS:
        return name
    if any(entry.name == name for entry in entry_points(group=STRATEGY_GROUP)):
        return name
    known = sorted([*BUILT_IN, *_PICKS, *(e.name for e in entry_points(group=STRATEGY_GROUP))])
    raise ConfigError(f"unknown merge strategy {name!r}; known: {', '.join(known)}")


def merge_function(name: str) -> MergeFunction:
    """The arithmetic of a strategy (built in, else from its entry point)."""
    if name in BUILT_IN:
        return BUILT_IN[name]
    for entry in entry_points(group=STRATEGY_GROUP, name=name):
        function: MergeFunction = entry.load()
        return function
    raise ConfigError(f"merge strategy {name!r} has no arithmetic")


@dataclass
class MergeOutcome:
    """The merged tree: entries kept as they are, arrays computed, and what happened."""

    entries: dict[str, TreeEntry | np.ndarray] = field(default_factory=dict)
    resolved: list[str] = field(default_factory=list)  # conflicts the strategy combined or picked
    kept_ours: list[str] = field(default_factory=list)  # integer/bool conflicts left as ours/theirs


def merge_trees(
    versions: Sequence[Mapping[str, TreeEntry]],
    base: Mapping[str, TreeEntry],
    strategy: MergeStrategy | str,
    options: MergeOptions,
    load: Callable[[str], np.ndarray],
) -> MergeOutcome:
    """Merge trees (ours first) against their merge base.

    Raises:
        MergeConflictError: listing every tensor the strategy cannot resolve
            (all of them with ``FAIL``); nothing is computed for the others then.
    """
    name = strategy_name(strategy)
    outcome = MergeOutcome()
    conflicts: dict[str, str] = {}
    combine: dict[str, list[TreeEntry]] = {}
    for tensor in sorted({n for tree in versions for n in tree} | set(base)):
        present = [tree.get(tensor) for tree in versions]
        before = base.get(tensor)
        changed = {_id(e) for e in present if _id(e) != _id(before)}
        if not changed:
            if before is not None:
                outcome.entries[tensor] = before
            continue
        if len(changed) == 1:  # one version differs from the base: it wins
            chosen = next(e for e in present if _id(e) in changed)
            if chosen is not None:
                outcome.entries[tensor] = chosen
            continue
        if name in (MergeStrategy.OURS.value, MergeStrategy.THEIRS.value):
            chosen = present[0] if name == MergeStrategy.OURS.value else present[-1]
            if chosen is not None:
                outcome.entries[tensor] = chosen
            outcome.resolved.append(tensor)
            continue
        why = _why_not_combinable(present)
        if name == MergeStrategy.FAIL.value:
            conflicts[tensor] = why or "changed on several sides"
        elif why:
            conflicts[tensor] = why
        elif not _is_float(present[0].dtype):  # type: ignore[union-attr]
            outcome.entries[tensor] = present[0]  # type: ignore[assignment]
            outcome.kept_ours.append(tensor)
        else:
            combine[tensor] = [e for e in present if e is not None]
    if conflicts:
        raise MergeConflictError(conflicts)
    function = merge_function(name) if combine else average
    for tensor, entries in combine.items():
        first = load(entries[0].tensor)  # read once: its dtype, then its values
        stored = first.dtype
        work = np.float64 if stored == np.float64 else np.float32
        arrays = [first.astype(work), *(load(e.tensor).astype(work) for e in entries[1:])]
        origin = base.get(tensor)
        base_array = None
        if origin is not None and origin.shape == entries[0].shape:
            base_array = load(origin.tensor).astype(work)
        try:
            merged = function(arrays, base_array, options, tensor)
        except _Unresolvable as exc:
            conflicts[tensor] = str(exc)
            continue
        outcome.entries[tensor] = np.asarray(merged).astype(stored)
        outcome.resolved.append(tensor)
    if conflicts:
        raise MergeConflictError(conflicts)
    return outcome


def _id(entry: TreeEntry | None) -> str | None:
    return entry.tensor if entry is not None else None


def _why_not_combinable(present: Sequence[TreeEntry | None]) -> str | None:
    """Why these versions cannot be combined element by element, or None."""
    if any(e is None for e in present):
        return "deleted on one side, changed on another"
    shapes = {e.shape for e in present if e is not None}
    dtypes = {e.dtype for e in present if e is not None}
    if len(shapes) > 1:
        return f"shapes differ: {' vs '.join(str(list(s)) for s in sorted(shapes))}"
    if len(dtypes) > 1:
        return f"dtypes differ: {' vs '.join(sorted(dtypes))}"
    return None


def _is_float(dtype: str) -> bool:
    return dtype.startswith(("float", "bfloat"))


def merge_base(parents: Callable[[str], Sequence[str]], a: str, b: str) -> str | None:
    """The best common ancestor of commits ``a`` and ``b`` (``a`` or ``b`` itself
    when one contains the other). With several (criss-cross history), the one
    ``parents`` lists first on the way from ``b`` wins, so the answer is stable.
    None when they share no history."""
    ours = _ancestors(parents, [a])
    candidates: list[str] = []
    seen: set[str] = set()
    queue = [b]
    while queue:
        commit = queue.pop(0)
        if commit in seen:
            continue
        seen.add(commit)
        if commit in ours:
            candidates.append(commit)  # its own ancestors are common, but not best
            continue
        queue.extend(parents(commit))
    best = [
        c
        for c in candidates
        if not any(c != other and c in _ancestors(parents, [other]) for other in candidates)
    ]
    return best[0] if best else None


def _ancestors(parents: Callable[[str], Sequence[str]], starts: Sequence[str]) -> set[str]:
    found: set[str] = set()
    stack = list(starts)
    while stack:
        commit = stack.pop()
        if commit not in found:
            found.add(commit)
            stack.extend(parents(commit))
    return found


@dataclass
class SoupResult:
    """A greedy soup: the commits averaged, the score of the average, every score tried."""

    ingredients: list[str]
    score: float
    scores: dict[str, float]
    weights: dict[str, np.ndarray]


def greedy_soup(
    models: Mapping[str, Mapping[str, np.ndarray]],
    evaluate: Callable[[dict[str, np.ndarray]], float],
) -> SoupResult:
    """Greedy model soup (Wortsman et al., 2022): rank the models by ``evaluate``
    (higher is better), start from the best, and add each next one to the
    uniform average only if the average does not score worse.

    Args:
        models: commit id -> tensors by name (the same names and shapes).
        evaluate: scores a model's tensors; higher is better (negate a loss).
    """
    scores = {commit: float(evaluate(dict(arrays))) for commit, arrays in models.items()}
    ranked = sorted(models, key=lambda c: -scores[c])
    chosen = [ranked[0]]
    current = {n: np.array(a) for n, a in models[ranked[0]].items()}
    best = scores[ranked[0]]
    for candidate in ranked[1:]:
        trial = _uniform_average([*(models[c] for c in chosen), models[candidate]], current)
        score = float(evaluate(trial))
        scores[f"soup+{candidate}"] = score
        if score >= best:
            chosen.append(candidate)
            current, best = trial, score
    return SoupResult(chosen, best, scores, current)


def _uniform_average(
    models: Sequence[Mapping[str, np.ndarray]], first: Mapping[str, np.ndarray]
) -> dict[str, np.ndarray]:
    """The element-wise mean of float tensors (others as in ``first``), cast back."""
    averaged = {}
    for name, array in first.items():
        if not _is_float(str(array.dtype)) or any(name not in m for m in models):
            averaged[name] = array
            continue
        work = np.float64 if array.dtype == np.float64 else np.float32
        total = np.zeros(array.shape, work)
        for model in models:
            total += np.asarray(model[name]).astype(work)
        averaged[name] = (total / work(len(models))).astype(array.dtype)
    return averaged
