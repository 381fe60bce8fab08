"""The data commands print: commits, trees and their storage, as plain dicts (the JSON shapes)."""

from __future__ import annotations

import datetime
from typing import Any

from coral_core import Commit, CoralError, Repository, runs
from coral_core.object_format import Codec
from coral_core.refs import REMOTES


def tags_by_commit(repo: Repository) -> dict[str, list[str]]:
    """Tag names per commit id."""
    found: dict[str, list[str]] = {}
    for tag in repo.list_tags():
        found.setdefault(tag.commit, []).append(tag.name)
    return found


def branches_by_commit(repo: Repository) -> dict[str, list[str]]:
    """Branch names per commit id, as git's log decorates: ``HEAD -> main``,
    ``feature``, ``origin/main`` (remote-tracking)."""
    found: dict[str, list[str]] = {}
    head = repo.head
    for branch in repo.list_branches():
        if branch.commit is not None:
            label = f"HEAD -> {branch.name}" if branch.current else branch.name
            found.setdefault(branch.commit, []).append(label)
    if head.branch is None and head.commit is not None:
        found.setdefault(head.commit, []).insert(0, "HEAD")
    for name, commit in repo.refs.list_refs(REMOTES).items():
        found.setdefault(commit, []).append(name)
    return found


def pointers_by_commit(repo: Repository) -> dict[str, list[str]]:
    """Run pointer names per commit id (``exp/best``, ``exp/<run>/best``)."""
    return runs.pointers_by_commit(repo.refs, repo.read_commit)


def commit_data(
    commit: Commit,
    tags: dict[str, list[str]],
    weights: str = "kept",
    pointers: dict[str, list[str]] | None = None,
    branches: dict[str, list[str]] | None = None,
) -> dict[str, Any]:
    """A commit as ``log --json`` and ``show --json`` print it; ``weights`` is
    ``kept``, ``pruned`` or ``shallow`` (see ``Repository.weights_status``)."""
    return {
        "commit": commit.commit_hash,
        "parents": list(commit.parent_hashes),
        "author": commit.author,
        "timestamp": commit.timestamp,
        "message": commit.message,
        "metrics": commit.metrics,
        "labels": list(commit.metadata.tags),
        "tags": sorted(tags.get(commit.commit_hash, [])),
        "pointers": (pointers or {}).get(commit.commit_hash, []),
        "branches": (branches or {}).get(commit.commit_hash, []),
        "lossy": commit.lossy,
        "training_state": commit.training is not None,
        "weights": weights,
    }


def decoration(row: dict[str, Any]) -> str:
    """`` (HEAD -> main, tag: v1, exp/best)``: the branches, tags and run
    pointers naming a commit (an
    experiment's own pointer in place of its run's), and whether its weights are gone."""
    names = list(row.get("branches", []))
    names += [f"tag: {t}" for t in row["tags"]]
    short = [p for p in row["pointers"] if p.count("/") == 1]
    names += short or row["pointers"]
    return (f" ({', '.join(names)})" if names else "") + weights_marker(row["weights"])


def weights_marker(weights: str) -> str:
    """What ``log`` and ``show`` print beside a commit whose weights are gone."""
    return {"pruned": " [pruned: weights gone]", "shallow": " [shallow: weights not fetched]"}.get(
        weights, ""
    )


def when(timestamp: float) -> str:
    """A commit time in local time, to the second."""
    return datetime.datetime.fromtimestamp(timestamp).strftime("%Y-%m-%d %H:%M:%S")


def tree_data(repo: Repository, commit: Commit) -> list[dict[str, Any]]:
    """Each tensor of a commit with its stored size and how it is stored:
    ``dedup`` (the parent has these bytes already), ``delta`` (some chunk is a
    delta against another) or ``full``."""
    tree = repo.tree_at(commit.commit_hash)
    parent_ids: set[str] = set()
    if commit.parent_hashes and repo.weights_status(commit.parent_hashes[0]) == "kept":
        parent_ids = {e.tensor for e in repo.tree_at(commit.parent_hashes[0]).values()}
    rows = []
    for name, entry in tree.items():
        stored, storage = 0, "full"
        try:
            for chunk in repo.objects.tensor_descriptor(entry.tensor).chunks:
                stored += repo.objects.stored_size(chunk)
                if repo.objects.chunk_params(chunk)[0] == Codec.DELTA:
                    storage = "delta"
        except CoralError:
            storage = "damaged"
        rows.append(
            {
                "name": name,
                "shape": list(entry.shape),
                "dtype": entry.dtype,
                "bytes": entry.nbytes,
                "stored_bytes": stored,
                "storage": "dedup" if entry.tensor in parent_ids else storage,
                "tensor": entry.tensor,
            }
        )
    return rows
