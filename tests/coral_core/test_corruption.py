"""Damage several objects of a repository at once (bit flips, truncation,
deletion, in any object: chunks, delta bases, tensors, trees, commits, tags):
``verify()`` names every damaged object and exactly the commits and tensors it
affects, and every read of an affected tensor fails while every other one
comes back bit for bit.

``test_objects.py`` covers one damaged object at a time in an object database;
this covers what a repository makes of it, through its history.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from coral_core import (
    CorruptObjectError,
    LocalStore,
    MissingObjectError,
    RefNotFoundError,
    Repository,
    bit_view,
)
from coral_core.maintenance import VerifyReport
from coral_core.object_format import Codec, ObjectKind, object_key
from tests.coral_core.conftest import make_weights
from tests.coral_core.test_objects import RAW_SIZE_HIGH_BITS, closure

DAMAGE = (CorruptObjectError, MissingObjectError)


@dataclass
class History:
    """A repository with branches, a tag and delta chains, and what it should hold."""

    repo: Repository
    arrays: dict[str, dict[str, np.ndarray]]  # commit -> tensor name -> data
    needs: dict[str, dict[str, set[str]]]  # commit -> tensor name -> objects it reads
    own: dict[str, set[str]]  # commit -> its commit and tree objects
    roots: list[str]  # what the branches and tags point at
    bases: dict[str, str]  # delta chunk -> its base chunk
    edges: dict[str, list[str]]  # object -> the objects it names

    def path(self, object_id: str) -> Path:
        return self.repo.coral_dir / "objects" / object_key(object_id)

    def chain(self, chunk: str) -> set[str]:
        """A chunk and every base below it."""
        found = {chunk}
        while chunk in self.bases:
            chunk = self.bases[chunk]
            found.add(chunk)
        return found

    def known(self, damaged: set[str]) -> set[str]:
        """Objects ``verify`` can know of: named by the refs or by a readable object."""
        seen: set[str] = set()
        stack = list(self.roots)
        while stack:
            object_id = stack.pop()
            if object_id not in seen:
                seen.add(object_id)
                if object_id not in damaged:
                    stack.extend(self.edges[object_id])
        return seen

    def reached(self, damaged: set[str]) -> set[str]:
        """Commits ``verify`` reaches: from the refs, through commits it can read."""
        return self.known(damaged) & set(self.arrays)


def evolve(step: int) -> dict[str, np.ndarray]:
    """The model after ``step`` updates: the matrix drifts slightly (its chunks
    become deltas of the last commit's), the bias is new, ``frozen`` never changes."""
    matrix = np.asarray(make_weights(0)["encoder.weight"].data)
    noise = np.random.default_rng(100 + step).standard_normal(matrix.shape) * 1e-4
    return {
        "encoder.weight": matrix + noise.astype(np.float32),
        "encoder.bias": np.asarray(make_weights(step)["encoder.bias"].data),
        "step": np.array(step, dtype=np.int64),
        "frozen": np.arange(2048, dtype=np.float16),
    }


@pytest.fixture(scope="module")
def history(tmp_path_factory: pytest.TempPathFactory) -> History:
    folder = tmp_path_factory.mktemp("corruption") / "repo"
    # loose objects, one file each, so a damage is one file's (test_packs damages packs)
    loose = LocalStore(folder / ".coral" / "objects")
    repo = Repository(folder, init=True, chunk_size=4096, store=loose)
    commits = [repo.commit(f"step {step}", weights=evolve(step)).commit_hash for step in range(4)]
    repo.create_branch("side", start=commits[1])
    side = repo.commit("side step", weights=evolve(10), branch="side").commit_hash
    repo.tag_version("v1", ref=commits[0])
    arrays, needs, own = {}, {}, {}
    for commit in [*commits, side]:
        tree = repo.ls_tree(commit)
        arrays[commit] = {name: w.data for name, w in repo.get_all_weights(commit).items()}
        needs[commit] = {name: closure(repo.objects, e.tensor) for name, e in tree.items()}
        own[commit] = {commit, repo.read_commit(commit).tree_hash}
    bases, edges = {}, {}
    for object_id in repo.objects.iter_ids():
        kind = repo.objects.kind_of(object_id)
        edges[object_id] = [child for child, _ in repo.objects.references(object_id, kind)]
        if kind == ObjectKind.CHUNK and repo.objects.chunk_params(object_id)[0] == Codec.DELTA:
            bases[object_id] = edges[object_id][0]
    assert len(bases) >= 6, "the history has too few delta chunks to test their bases"
    roots = [commits[-1], side, str(repo.refs.read("refs/tags/v1"))]
    return History(repo, arrays, needs, own, roots, bases, edges)


def all_objects(history: History) -> list[str]:
    return sorted(history.repo.objects.iter_ids())


@st.composite
def damage(draw: st.DrawFn, history: History) -> dict[str, bytes | None]:
    """1 to 3 objects and what each becomes: flipped, cut short, or deleted (None)."""
    chosen = draw(st.sets(st.sampled_from(all_objects(history)), min_size=1, max_size=3))
    damaged: dict[str, bytes | None] = {}
    for object_id in sorted(chosen):
        data = history.path(object_id).read_bytes()
        how = draw(st.sampled_from(["flip", "truncate", "delete"]))
        if how == "flip":
            bits = st.integers(0, len(data) * 8 - 1).filter(lambda b: b not in RAW_SIZE_HIGH_BITS)
            bit = draw(bits)
            flipped = bytearray(data)
            flipped[bit // 8] ^= 1 << (bit % 8)
            damaged[object_id] = bytes(flipped)
        elif how == "truncate":
            damaged[object_id] = data[: draw(st.integers(0, len(data) - 1))]
        else:
            damaged[object_id] = None
    return damaged


def assert_report_is_exact(
    history: History, report: VerifyReport, damaged: dict[str, bytes | None]
) -> None:
    """Every damaged object is named: as a problem of its own, or (a deleted
    delta base) in the problem of the delta built on it; only a deleted object
    that nothing readable names is unknowable. Every other object named is a
    delta whose base chain is damaged. The affected commits and tensors are
    exactly those that read a damaged object (in commits verify can reach)."""
    problems = {p.object_id: p for p in report.problems}
    broken_ids = set(damaged)
    known = history.known(broken_ids)
    for object_id, broken in damaged.items():
        if broken is not None:  # still on disk: found as an object of its own
            assert problems[object_id].used_by, object_id
        elif object_id in known:
            messages = " ".join(p.message for p in report.problems)
            assert object_id in problems or object_id in messages, object_id
    for object_id in set(problems) - broken_ids:
        assert history.chain(object_id) & broken_ids, f"{object_id} reported but sound"
    expected_commits = set()
    for commit in history.reached(broken_ids):
        if history.own[commit] & broken_ids:
            expected_commits.add(commit)
            hits = history.own[commit] & broken_ids
            # a damaged commit hides its tree (then reported as unreferenced): name the commit
            hit = commit if commit in hits else next(iter(hits))
            assert commit in problems[hit].commits
            continue
        for name, needed in history.needs[commit].items():
            if needed & broken_ids:
                expected_commits.add(commit)
                user = f"commit {commit}: tensor {name}"
                used = [p for p in report.problems if user in p.used_by and commit in p.commits]
                assert used, user
    assert set(report.affected_commits) == expected_commits


def assert_reads_are_right_or_refused(history: History, damaged: set[str]) -> None:
    """Affected tensors raise; all others come back bit for bit."""
    repo = Repository(history.repo.path)
    for commit, arrays in history.arrays.items():
        for name, expected in arrays.items():
            broken = (history.own[commit] | history.needs[commit][name]) & damaged
            if not broken:
                data = repo.get_weight(name, commit).data
                assert data.dtype == expected.dtype
                assert np.array_equal(bit_view(data), bit_view(expected)), (commit, name)
                continue
            refused = (*DAMAGE, RefNotFoundError) if commit in damaged else DAMAGE
            with pytest.raises(refused):
                repo.get_weight(name, commit)


@settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(data=st.data())
def test_verify_and_reads_after_random_damage(history: History, data: st.DataObject) -> None:
    damaged = data.draw(damage(history), label="damage")
    originals = {object_id: history.path(object_id).read_bytes() for object_id in damaged}
    try:
        for object_id, broken in damaged.items():
            if broken is None:
                history.path(object_id).unlink()
            else:
                history.path(object_id).write_bytes(broken)
        report = Repository(history.repo.path).verify()
        assert not report.ok
        assert_report_is_exact(history, report, damaged)
        assert_reads_are_right_or_refused(history, set(damaged))
    finally:
        for object_id, original in originals.items():
            history.path(object_id).write_bytes(original)
    assert Repository(history.repo.path).verify().ok
