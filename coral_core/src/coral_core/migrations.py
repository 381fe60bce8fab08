"""Bring a repository written by an older Coral up to this format, on open.

Format 2 (append-only history): retention prunes weights instead of
rewriting branches, and a run's best and last are pointers under
``refs/runs/`` instead of a moving ``<experiment>/best`` tag. Going from 1 to
2 rewrites no commit: checkpoints of format 1 belong to the run ``legacy``;
each experiment's moving best tag becomes that run's best pointer, and its
newest checkpoint the run's last. A repository that cannot be written (a
read-only mount) opens as it is: every read works, and it migrates the next
time it is opened where it can be written.

Format 3 (packs): a write batch's objects rest in ``objects/packs/`` (see
:mod:`coral_core.store.packs`), which an older Coral cannot read. Going from 2
to 3 converts nothing: loose objects stay readable, and ``repack`` packs them.
"""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING

from coral_core.config import FORMAT_VERSION, RepoConfig
from coral_core.errors import CoralError
from coral_core.refs import TAGS
from coral_core.runs import BEST, LAST, LEGACY_RUN, CheckpointRecord, pointer_ref

if TYPE_CHECKING:
    from coral_core.repository import Repository


def upgrade(repo: Repository) -> None:
    """Migrate ``repo`` to :data:`FORMAT_VERSION` if an older Coral wrote it."""
    if repo.config.get("core.format_version") >= FORMAT_VERSION:
        return
    with contextlib.suppress(OSError), repo.refs.lock():  # read-only: open as it is
        repo.config = RepoConfig.load(repo.config.path)  # another process may have done it
        version = repo.config.get("core.format_version")
        if version < 2:
            _legacy_runs(repo)
        repo.config.set_format_version(FORMAT_VERSION)


def _legacy_runs(repo: Repository) -> None:
    """Format 1 -> 2: pointers for the ``legacy`` run of each experiment (caller holds the lock)."""
    newest: dict[str, tuple[float, str]] = {}
    for commit in repo.iter_commits(repo.ref_commits()):
        record = CheckpointRecord.of(commit)
        if record is None or record.run != LEGACY_RUN:
            continue
        known = newest.get(record.experiment)
        if known is None or commit.timestamp > known[0]:
            newest[record.experiment] = (commit.timestamp, commit.commit_hash)
    author = "coral migration"
    for experiment, (_, commit_id) in newest.items():
        with contextlib.suppress(CoralError):  # an experiment name no ref can carry
            ref = pointer_ref(experiment, LEGACY_RUN, LAST)
            if repo.refs.read(ref) is None:
                repo.refs.write(ref, commit_id)
                repo.refs.log_move(ref, None, commit_id, author, "migrate: the run's last")
    for name, tag_id in repo.refs.list_refs(TAGS).items():
        experiment, _, pointer = name.rpartition("/")
        if pointer != BEST or experiment not in newest:
            continue
        target = repo.peel(tag_id)
        record = CheckpointRecord.of(repo.read_commit(target))
        if record is None or record.experiment != experiment or record.run != LEGACY_RUN:
            continue  # a tag a user made, not the moving best tag
        ref = pointer_ref(experiment, LEGACY_RUN, BEST)
        repo.refs.write(ref, target)
        repo.refs.log_move(ref, None, target, author, f"migrate: from tag {name}")
        repo.refs.delete(TAGS + name)
