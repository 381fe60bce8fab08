"""Training runs: which run made each checkpoint, and the pointers that move with it.

A checkpoint is a commit whose metadata holds ``coral.checkpoint``, a
:class:`CheckpointRecord`: the experiment's name, the run's id, the
checkpoint's place in the run (``index``, from 1), epoch, step, branch, the
metric that ranks checkpoints and its direction, and the run's
hyperparameters where known. Every training run gets a new id, so a rerun
under the same experiment name (a sweep) is a run of its own.

A run's pointers are refs ``refs/runs/<experiment>/<run>/best`` and
``.../last``. They move forward along the run only, by compare-and-swap in
the same step as the commit, and push, fetch and clone like branches.
``<experiment>/best`` and ``<experiment>/last`` resolve through them: the best
checkpoint of the experiment's runs by their metric, and the newest run's last.
Checkpoints written before runs had ids (format 1) belong to the run ``legacy``.
"""

from __future__ import annotations

import math
import re
import secrets
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from coral_core.availability import KEPT, RefSource
from coral_core.errors import ConfigError
from coral_core.model import Commit
from coral_core.refnames import validate_ref_name
from coral_core.refs import RUNS

if TYPE_CHECKING:
    from coral_core.repository import Repository

#: Commit metadata key of a checkpoint's :class:`CheckpointRecord`.
CHECKPOINT_KEY = "coral.checkpoint"
#: The run of checkpoints committed before runs had ids.
LEGACY_RUN = "legacy"
BEST, LAST = "best", "last"
POINTERS = (BEST, LAST)
_RUN_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")


def new_run_id() -> str:
    """A fresh run id: the UTC start time and 6 random hex digits (``20261203-131500-a1b2c3``)."""
    return f"{time.strftime('%Y%m%d-%H%M%S', time.gmtime())}-{secrets.token_hex(3)}"


def validate_run_id(run: str) -> str:
    """Return ``run`` if it can name a run.

    Raises:
        ConfigError: for anything but 1-64 letters, digits, ``.``, ``_``, ``-``
            (starting with a letter or digit), and for ``best`` and ``last``.
    """
    if not isinstance(run, str) or not _RUN_ID.fullmatch(run) or run in POINTERS:
        raise ConfigError(
            f"run id {run!r}: use 1-64 letters, digits, '.', '_' or '-' (not 'best' or 'last')"
        )
    return run


def pointer_ref(experiment: str, run: str, pointer: str) -> str:
    """The full ref of a run's pointer: ``refs/runs/<experiment>/<run>/<pointer>``."""
    return RUNS + validate_ref_name(f"{experiment}/{run}/{pointer}", "run pointer")


def split_pointer(name: str) -> tuple[str, str, str] | None:
    """``(experiment, run, pointer)`` of a pointer's name below ``refs/runs/``, else None."""
    experiment, _, rest = name.rpartition("/")
    experiment, _, run = experiment.rpartition("/")
    if not experiment or rest not in POINTERS or not run:
        return None
    return experiment, run, rest


@dataclass(frozen=True)
class CheckpointRecord:
    """What a checkpoint commit says about itself (``coral.checkpoint``)."""

    experiment: str
    run: str
    index: int | None
    epoch: int
    step: int
    branch: str | None = None
    monitor: str | None = None
    minimize: bool | None = None
    hyperparameters: dict[str, Any] = field(default_factory=dict)
    parent_run: str | None = None

    def to_dict(self) -> dict[str, Any]:
        record: dict[str, Any] = {
            "experiment": self.experiment,
            "run": self.run,
            "index": self.index,
            "epoch": self.epoch,
            "step": self.step,
        }
        optional = {
            "branch": self.branch,
            "monitor": self.monitor,
            "minimize": self.minimize,
            "parent_run": self.parent_run,
        }
        record.update({k: v for k, v in optional.items() if v is not None})
        if self.hyperparameters:
            record["hyperparameters"] = self.hyperparameters
        return record

    @classmethod
    def of(cls, commit: Commit) -> CheckpointRecord | None:
        """The record of a checkpoint commit; None for other commits and for
        records that do not hold what a record must (metadata is data: any
        remote may have written it)."""
        info = commit.metadata.metadata.get(CHECKPOINT_KEY)
        if not isinstance(info, Mapping) or not isinstance(info.get("experiment"), str):
            return None
        run = info.get("run", LEGACY_RUN)
        index = info.get("index")
        if not isinstance(run, str) or not _RUN_ID.fullmatch(run):
            return None
        text = {k: info.get(k) if isinstance(info.get(k), str) else None for k in _TEXT}
        hyperparameters = info.get("hyperparameters")
        minimize = info.get("minimize")
        return cls(
            experiment=info["experiment"],
            run=run,
            index=index if _is_int(index) else None,
            epoch=info["epoch"] if _is_int(info.get("epoch")) else 0,
            step=info["step"] if _is_int(info.get("step")) else 0,
            branch=text["branch"],
            monitor=text["monitor"],
            minimize=minimize if isinstance(minimize, bool) else None,
            hyperparameters=dict(hyperparameters) if isinstance(hyperparameters, Mapping) else {},
            parent_run=text["parent_run"],
        )

    def score(self, commit: Commit) -> float | None:
        """The commit's value of the run's metric, when it has a finite one."""
        return metric_value(commit.metrics.get(self.monitor)) if self.monitor else None


_TEXT = ("branch", "monitor", "parent_run")


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def metric_value(value: Any) -> float | None:
    """A metric value that can be ranked: a finite number, else None."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value) if math.isfinite(value) else None


def run_pointers(refs: RefSource, experiment: str, pointer: str) -> dict[str, str]:
    """Run id -> commit, of every run of ``experiment`` with that pointer."""
    found = {}
    for name, commit in refs.list_refs(f"{RUNS}{experiment}/").items():
        run, slash, rest = name.partition("/")
        if slash and rest == pointer:
            found[run] = commit
    return found


def experiment_names(refs: RefSource) -> list[str]:
    """The experiments that have run pointers, sorted."""
    names = {split_pointer(name) for name in refs.list_refs(RUNS)}
    return sorted({found[0] for found in names if found is not None})


def experiment_pointer(
    refs: RefSource, read_commit: Callable[[str], Commit], experiment: str, pointer: str
) -> str | None:
    """What ``<experiment>/best`` or ``<experiment>/last`` names, or None.

    ``last``: the newest of the runs' last checkpoints. ``best``: the best of
    the runs' best checkpoints by their metric (the newest run's metric; runs
    that ranked by another are left out), the newer one on ties.
    """
    commits = [read_commit(c) for c in run_pointers(refs, experiment, pointer).values()]
    commits.sort(key=lambda c: c.timestamp, reverse=True)
    if not commits:
        return None
    if pointer == LAST:
        return commits[0].commit_hash
    newest = CheckpointRecord.of(commits[0])
    if newest is None or newest.monitor is None:
        return commits[0].commit_hash
    chosen, chosen_score = commits[0], newest.score(commits[0])
    sign = 1.0 if newest.minimize is not False else -1.0
    for commit in commits[1:]:
        record = CheckpointRecord.of(commit)
        if record is None or record.monitor != newest.monitor:
            continue
        score = record.score(commit)
        if score is not None and (chosen_score is None or sign * score < sign * chosen_score):
            chosen, chosen_score = commit, score
    return chosen.commit_hash


def pointers_by_commit(
    refs: RefSource, read_commit: Callable[[str], Commit]
) -> dict[str, list[str]]:
    """Commit -> the run pointers naming it: ``<experiment>/<run>/<pointer>``,
    and ``<experiment>/<pointer>`` where that resolves to it too."""
    found: dict[str, set[str]] = {}
    resolved: dict[tuple[str, str], str | None] = {}
    for name, target in refs.list_refs(RUNS).items():
        parts = split_pointer(name)
        if parts is None:
            continue
        experiment, _, pointer = parts
        found.setdefault(target, set()).add(name)
        if (experiment, pointer) not in resolved:
            resolved[experiment, pointer] = experiment_pointer(
                refs, read_commit, experiment, pointer
            )
        if resolved[experiment, pointer] == target:
            found[target].add(f"{experiment}/{pointer}")
    return {commit: sorted(names) for commit, names in found.items()}


@dataclass(frozen=True)
class RunCheckpoint:
    """One checkpoint of a run: its commit, record, and whether its weights are kept."""

    commit: Commit
    record: CheckpointRecord
    status: str

    @property
    def kept(self) -> bool:
        return self.status == KEPT


@dataclass(frozen=True)
class Run:
    """A training run, from the checkpoints it committed (oldest first)."""

    experiment: str
    run_id: str
    checkpoints: tuple[RunCheckpoint, ...]
    best: str | None
    last: str | None

    @property
    def branch(self) -> str | None:
        return self.checkpoints[-1].record.branch if self.checkpoints else None

    @property
    def monitor(self) -> str | None:
        return self.checkpoints[-1].record.monitor if self.checkpoints else None

    @property
    def kept(self) -> int:
        return sum(1 for c in self.checkpoints if c.kept)

    @property
    def hyperparameters(self) -> dict[str, Any]:
        return self.checkpoints[-1].record.hyperparameters if self.checkpoints else {}

    def best_value(self) -> float | None:
        """The run's best value of its metric (from its best pointer)."""
        for checkpoint in self.checkpoints:
            if checkpoint.commit.commit_hash == self.best:
                return checkpoint.record.score(checkpoint.commit)
        return None


def list_runs(repo: Repository, commits: Iterable[Commit] | None = None) -> list[Run]:
    """Every run with a checkpoint reachable from a ref (or among ``commits``),
    ordered by experiment, then by when the run started."""
    view = repo.weights_view()
    grouped: dict[tuple[str, str], list[RunCheckpoint]] = {}
    for commit in commits if commits is not None else repo.log(all_refs=True):
        record = CheckpointRecord.of(commit)
        if record is None:
            continue
        status = view.status(commit.commit_hash, list(commit.trees.values()))
        grouped.setdefault((record.experiment, record.run), []).append(
            RunCheckpoint(commit, record, status)
        )
    runs = []
    for (experiment, run_id), items in grouped.items():
        items.sort(key=lambda c: (c.record.index or 0, c.record.step, c.commit.timestamp))
        pointers = {p: repo.refs.read(pointer_ref(experiment, run_id, p)) for p in POINTERS}
        runs.append(Run(experiment, run_id, tuple(items), pointers[BEST], pointers[LAST]))
    runs.sort(key=lambda r: (r.experiment, r.checkpoints[0].commit.timestamp))
    return runs


def find_run(repo: Repository, name: str) -> list[Run]:
    """The runs ``name`` names: a run id (or the start of one, when only one
    run's id starts so), ``<experiment>/<run id>``, or an experiment's name
    (all its runs)."""
    runs = list_runs(repo)
    exact = [r for r in runs if name in (r.run_id, f"{r.experiment}/{r.run_id}")]
    if exact:
        return exact
    by_name = [r for r in runs if r.experiment == name]
    if by_name:
        return by_name
    started = [r for r in runs if r.run_id.startswith(name) or r.run_id.endswith(name)]
    return started if len(started) == 1 else []


def nearest_kept(repo: Repository, commit: Commit) -> str | None:
    """The kept checkpoint of ``commit``'s run closest to it in steps (the later on ties)."""
    record = CheckpointRecord.of(commit)
    if record is None:
        return None
    run = [r for r in find_run(repo, f"{record.experiment}/{record.run}") if r.run_id == record.run]
    kept = [c for r in run for c in r.checkpoints if c.kept]
    if not kept:
        return None
    chosen = min(kept, key=lambda c: (abs(c.record.step - record.step), -c.record.step))
    return chosen.commit.commit_hash
