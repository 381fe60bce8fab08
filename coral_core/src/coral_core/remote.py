"""Remotes: push, fetch, pull, clone and sync between a repository and any store.

A remote is a :class:`~coral_core.WeightStore` laid out like ``.coral``:
objects under ``objects/`` (the same keys and bytes as locally), refs under
``refs/heads/`` and ``refs/tags/`` (an id and a newline). It can be an S3
bucket (``s3://bucket/prefix``), a folder (``/path``, ``file:///path``; a
repository's folder means its ``.coral``), or any other store.

Only missing objects travel: the walk from the refs stops at every object the
other side has, since writers store objects bottom-up (chunks before the
tensors naming them, ..., commits last), so having an object means having
all it references. Objects are sent level by level in that order, in
parallel; a ref moves only after all its objects are there, with
compare-and-swap, so an interrupted transfer leaves both sides consistent
(run it again) and two pushes racing to one branch never silently lose a
commit. Fetched objects are verified against their ids before any ref names them.
Fetched branches land under ``refs/remotes/<remote>/``.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from coral_core.errors import ConfigError, CoralError, CorruptObjectError, RefNotFoundError
from coral_core.objects import ObjectDatabase, ObjectKind, object_key
from coral_core.refnames import validate_ref_name
from coral_core.refs import HEADS, REMOTES, TAGS
from coral_core.store.base import WeightStore
from coral_core.store.local import LocalStore, write_file_atomic
from coral_core.store.prefix import PrefixStore

if TYPE_CHECKING:
    from coral_core.repository import Repository

_THREADS = 8
#: Objects the walk read whole and the copy reuses instead of reading them
#: again (documents and small chunks: a request each saved on a remote).
KEPT_BYTES = 64 << 20
Node = tuple[str, ObjectKind]
Progress = Callable[[int], None]  # called with the bytes of each object moved


class PushRejectedError(CoralError, RuntimeError):
    """The remote branch has commits this repository does not: fetch (pull) first."""


@dataclass
class TransferResult:
    """What a push or fetch moved: objects and bytes, and the refs it set."""

    objects: int = 0
    bytes: int = 0
    refs: dict[str, tuple[str | None, str]] = field(default_factory=dict)  # name: (old, new)

    def add(self, other: TransferResult) -> None:
        self.objects += other.objects
        self.bytes += other.bytes
        self.refs.update(other.refs)


def open_store(url: str) -> WeightStore:
    """The store a remote URL names: ``s3://bucket/prefix`` (endpoint from
    ``CORAL_S3_ENDPOINT_URL`` or ``AWS_ENDPOINT_URL``), ``file://path`` or a path.

    Raises:
        ConfigError: for a URL scheme Coral does not know.
    """
    if url.startswith("s3://"):
        from coral_core.store.s3 import S3Config, S3Store

        bucket, _, prefix = url[len("s3://") :].partition("/")
        endpoint = os.environ.get("CORAL_S3_ENDPOINT_URL") or os.environ.get("AWS_ENDPOINT_URL")
        return S3Store(S3Config(bucket=bucket, prefix=prefix.strip("/"), endpoint_url=endpoint))
    if "://" in url and not url.startswith("file://"):
        raise ConfigError(f"remote {url!r}: Coral reaches s3:// and file:// URLs and folders")
    folder = Path(url.removeprefix("file://"))
    if (folder / ".coral" / "config").is_file():
        folder = folder / ".coral"
    return LocalStore(folder)


class RemoteRefs:
    """A remote store's refs and objects."""

    def __init__(self, store: WeightStore) -> None:
        self.store = store
        self.objects = ObjectDatabase(PrefixStore(store, "objects"))

    def read(self, ref: str) -> str | None:
        return self.store.get(ref).decode().strip() if self.store.has(ref) else None

    def list(self, prefix: str) -> dict[str, str]:
        """Full ref name -> id, for refs under ``prefix`` (``refs/heads/``)."""
        return {
            key: self.read(key) or ""
            for key in self.store.list(prefix)
            if not key.endswith(".lock")
        }

    def swap(self, ref: str, old: str | None, new: str) -> bool:
        expected = None if old is None else f"{old}\n".encode()
        return self.store.compare_and_swap(ref, expected, f"{new}\n".encode())


# -- the object walk -----------------------------------------------------------------


def missing_objects(
    source: ObjectDatabase,
    has: Callable[[str], bool],
    roots: Iterable[Node],
    pool: ThreadPoolExecutor,
    kept: dict[str, bytes],
) -> list[list[Node]]:
    """The objects reachable from ``roots`` that ``has`` lacks, in levels: each
    level only references objects of earlier levels (or ones already there).

    Each missing object is read once for what it references; the ones that
    read got whole (documents, small chunks) go into ``kept``, up to
    ``KEPT_BYTES`` in all, for the copy to use instead of a second read."""
    edges: dict[Node, list[Node]] = {}
    seen: set[str] = set()
    budget = KEPT_BYTES
    frontier = list(roots)
    while frontier:
        fresh = [n for n in dict.fromkeys(frontier) if n[0] not in seen]
        seen.update(n[0] for n in fresh)
        present = list(pool.map(lambda n: has(object_key(n[0])), fresh))
        missing = [n for n, there in zip(fresh, present, strict=True) if not there]
        read = list(pool.map(lambda n: source.references_read_once(*n), missing))
        for node, (refs, blob) in zip(missing, read, strict=True):
            edges[node] = refs
            if blob is not None and len(blob) <= budget:
                kept[node[0]] = blob
                budget -= len(blob)
        frontier = [child for refs, _ in read for child in refs]
    height: dict[Node, int] = {}
    for node in edges:  # iterative post-order: a node after the missing ones it references
        stack = [(node, False)]
        while stack:
            current, expanded = stack.pop()
            if current in height:
                continue
            below = [c for c in edges[current] if c in edges]
            if expanded:
                height[current] = 1 + max((height[c] for c in below), default=-1)
                continue
            stack.append((current, True))
            stack.extend((c, False) for c in below if c not in height)
    levels: list[list[Node]] = [[] for _ in range(1 + max(height.values(), default=-1))]
    for node, level in height.items():
        levels[level].append(node)
    return levels


def copy_objects(
    source: ObjectDatabase,
    dest: ObjectDatabase,
    roots: Sequence[Node],
    *,
    verify: bool,
    progress: Progress | None = None,
) -> TransferResult:
    """Copy every object reachable from ``roots`` that ``dest`` lacks, level by level.

    Raises:
        CorruptObjectError: (with ``verify``) when an object does not match its
            id; it is removed from ``dest`` again, and no ref has moved.
    """
    result = TransferResult()
    kept: dict[str, bytes] = {}
    with ThreadPoolExecutor(_THREADS, "coral-transfer") as pool:
        levels = missing_objects(source, dest.store.has, roots, pool, kept)

        def move(node: Node) -> int:
            key = object_key(node[0])
            data = kept.pop(node[0], None)
            if data is None:
                data = source.store.get(key)
            dest.store.put_if_absent(key, data)
            if verify:
                try:
                    dest.check_object(node[0])
                except CoralError as exc:
                    dest.store.delete(key)
                    raise CorruptObjectError(f"object {node[0]} from the remote: {exc}") from exc
            if progress is not None:
                progress(len(data))
            return len(data)

        for level in levels:
            for size in pool.map(move, level):
                result.objects += 1
                result.bytes += size
    return result


def is_ancestor(repo: Repository, ancestor: str, commit: str) -> bool:
    """Whether ``ancestor`` is ``commit`` or in its history (False if not stored here)."""
    if not repo.objects.has(ancestor):
        return False
    return any(c.commit_hash == ancestor for c in repo.iter_commits([commit]))


# -- remotes of a repository ---------------------------------------------------------


def _remotes_path(repo: Repository) -> Path:
    return repo.coral_dir / "remotes"


def list_remotes(repo: Repository) -> dict[str, str]:
    """Remote name -> URL."""
    path = _remotes_path(repo)
    if not path.is_file():
        return {}
    try:
        remotes = json.loads(path.read_text())
    except ValueError as exc:
        raise ConfigError(f"{path} is not valid JSON: {exc}") from None
    return {str(k): str(v) for k, v in remotes.items()} if isinstance(remotes, dict) else {}


def add_remote(repo: Repository, name: str, url: str) -> None:
    """Remember ``url`` as remote ``name``.

    Raises:
        ConfigError: when the name is taken.
    """
    validate_ref_name(name, "remote")
    remotes = list_remotes(repo)
    if name in remotes:
        raise ConfigError(f"remote {name!r} exists ({remotes[name]}); remove it first")
    open_store(url)  # refuse what cannot be reached by scheme
    _save_remotes(repo, {**remotes, name: url})


def remove_remote(repo: Repository, name: str) -> None:
    """Forget remote ``name`` and its remote-tracking refs."""
    remotes = list_remotes(repo)
    if name not in remotes:
        raise RefNotFoundError(f"no remote named {name!r}; see `coral-ml remote list`")
    del remotes[name]
    _save_remotes(repo, remotes)
    with repo.refs.lock():
        for branch in repo.refs.list_refs(f"{REMOTES}{name}/"):
            repo.refs.delete(f"{REMOTES}{name}/{branch}")


def _save_remotes(repo: Repository, remotes: dict[str, str]) -> None:
    write_file_atomic(_remotes_path(repo), json.dumps(remotes, indent=2).encode() + b"\n")


def _remote(repo: Repository, name: str) -> RemoteRefs:
    remotes = list_remotes(repo)
    if name not in remotes:
        raise RefNotFoundError(
            f"no remote named {name!r}; add one with `coral-ml remote add {name} <url>`"
        )
    return RemoteRefs(open_store(remotes[name]))


def push(
    repo: Repository,
    remote: str = "origin",
    branches: Sequence[str] | None = None,
    *,
    tags: bool = False,
    force: bool = False,
    progress: Progress | None = None,
) -> TransferResult:
    """Send branches (HEAD's by default) and, with ``tags``, every tag; only
    objects the remote lacks travel, and each remote ref moves by compare-and-swap.

    Args:
        branches: the branches to push; None for HEAD's branch.
        tags: push every tag too (a tag the remote has with another target is refused).
        force: replace remote branches even when that drops their commits.

    Raises:
        PushRejectedError: when a remote branch has commits this repository
            lacks (fetch or pull first), or another push won the race; refs
            already pushed stay pushed, nothing is half-done.
    """
    target = _remote(repo, remote)
    names = list(branches) if branches is not None else [_current_branch(repo)]
    updates: list[tuple[str, str | None, str]] = []
    for branch in names:
        local = repo.refs.read(HEADS + validate_ref_name(branch))
        if local is None:
            raise RefNotFoundError(f"no branch named {branch!r} to push")
        old = target.read(HEADS + branch)
        if old == local:
            continue
        if old is not None and not force and not is_ancestor(repo, old, local):
            raise PushRejectedError(
                f"remote {remote!r} has commits on {branch!r} that this repository does not "
                f"({old[:12]}); fetch first: `coral-ml pull {remote} {branch}`"
            )
        updates.append((HEADS + branch, old, local))
    if tags:
        for name, tag_id in repo.refs.list_refs(TAGS).items():
            old = target.read(TAGS + name)
            if old == tag_id:
                continue
            if old is not None and not force:
                raise PushRejectedError(f"remote {remote!r} has tag {name!r} on another commit")
            updates.append((TAGS + name, old, tag_id))
    roots = [(new, repo.objects.kind_of(new)) for _, _, new in updates]
    result = copy_objects(repo.objects, target.objects, roots, verify=False, progress=progress)
    for ref, old, new in updates:
        if not target.swap(ref, old, new):
            raise PushRejectedError(
                f"{ref} on remote {remote!r} moved while pushing (another push won); "
                f"fetch first, then push again"
            )
        result.refs[ref] = (old, new)
        if ref.startswith(HEADS):
            _track(repo, remote, ref.removeprefix(HEADS), new)
    return result


def _current_branch(repo: Repository) -> str:
    branch = repo.current_branch
    if branch is None:
        raise CoralError("HEAD is detached; name the branch to push")
    return branch


def _track(repo: Repository, remote: str, branch: str, commit: str) -> None:
    with repo.refs.lock():
        repo.refs.write(f"{REMOTES}{remote}/{branch}", commit)


def fetch(
    repo: Repository, remote: str = "origin", progress: Progress | None = None
) -> TransferResult:
    """Bring every branch and tag of the remote here: branches as
    ``refs/remotes/<remote>/<branch>``, tags this repository lacks as tags."""
    source = _remote(repo, remote)
    branches = {ref.removeprefix(HEADS): c for ref, c in source.list(HEADS).items()}
    tags = {ref.removeprefix(TAGS): t for ref, t in source.list(TAGS).items()}
    for name in [*branches, *tags]:
        validate_ref_name(name)  # a remote's names must not escape .coral/refs
    new_tags = {n: t for n, t in tags.items() if repo.refs.read(TAGS + n) is None}
    roots = [(c, ObjectKind.COMMIT) for c in branches.values()]
    roots += [(t, source.objects.kind_of(t)) for t in new_tags.values()]
    with repo.writing_objects():
        result = copy_objects(source.objects, repo.objects, roots, verify=True, progress=progress)
        with repo.refs.lock():
            for branch, commit in branches.items():
                ref = f"{REMOTES}{remote}/{branch}"
                old = repo.refs.read(ref)
                if old != commit:
                    repo.refs.write(ref, commit)
                    result.refs[ref] = (old, commit)
            for name, tag_id in new_tags.items():
                repo.refs.write(TAGS + name, tag_id)
                result.refs[TAGS + name] = (None, tag_id)
    return result


def pull(
    repo: Repository,
    remote: str = "origin",
    branch: str | None = None,
    strategy: str = "fail",
    progress: Progress | None = None,
) -> TransferResult:
    """Fetch, then merge the remote's ``branch`` (HEAD's by default) into the
    current branch (a fast-forward when possible; conflicts go to ``strategy``)."""
    result = fetch(repo, remote, progress)
    name = branch or _current_branch(repo)
    tracking = f"{REMOTES}{remote}/{name}"
    if repo.refs.read(tracking) is None:
        raise RefNotFoundError(f"remote {remote!r} has no branch {name!r}")
    repo.merge(tracking, strategy, f"Merge {remote}/{name}")
    return result


def clone(url: str, path: str | os.PathLike[str], progress: Progress | None = None) -> Repository:
    """A new repository at ``path`` with every branch and tag of ``url`` (remote ``origin``).

    Raises:
        ConfigError: when ``path`` already holds a repository.
    """
    from coral_core.repository import Repository

    if (Path(path) / ".coral" / "config").is_file():
        raise ConfigError(f"{path} already holds a Coral repository; clone into a new folder")
    repo = Repository(path, init=True)
    add_remote(repo, "origin", url)
    fetch(repo, "origin", progress)
    tracked = repo.refs.list_refs(f"{REMOTES}origin/")
    with repo.refs.lock():
        for branch, commit in tracked.items():
            repo.refs.write(HEADS + branch, commit)
        if tracked:
            repo.refs.set_head(branch="main" if "main" in tracked else sorted(tracked)[0])
    return repo


@dataclass(frozen=True)
class BranchSync:
    """How a local branch and its remote twin differ (counts None when unknown here)."""

    branch: str
    local: str | None
    remote: str | None
    ahead: int | None
    behind: int | None


def sync_status(repo: Repository, remote: str = "origin") -> list[BranchSync]:
    """Per branch (local or remote): commits only here (ahead) and only there (behind)."""
    source = _remote(repo, remote)
    theirs = {ref.removeprefix(HEADS): c for ref, c in source.list(HEADS).items()}
    ours = repo.refs.list_refs(HEADS)
    rows = []
    for branch in sorted(set(ours) | set(theirs)):
        local, other = ours.get(branch), theirs.get(branch)
        rows.append(BranchSync(branch, local, other, *_ahead_behind(repo, local, other)))
    return rows


def _ahead_behind(
    repo: Repository, local: str | None, other: str | None
) -> tuple[int | None, int | None]:
    mine = {c.commit_hash for c in repo.iter_commits([local])} if local else set()
    if other is None:
        return len(mine), 0
    if not repo.objects.has(other):
        return None, None  # fetch to know
    theirs = {c.commit_hash for c in repo.iter_commits([other])}
    return len(mine - theirs), len(theirs - mine)


def sync(
    repo: Repository, remote: str = "origin", progress: Progress | None = None
) -> TransferResult:
    """Fetch, then push every branch the remote lacks or is behind on, and every tag."""
    result = fetch(repo, remote, progress)
    pushable = [
        row.branch
        for row in sync_status(repo, remote)
        if row.local is not None and row.ahead and not row.behind
    ]
    result.add(push(repo, remote, pushable, tags=True, progress=progress))
    return result
