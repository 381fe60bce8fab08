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
parallel, in one write batch: into a folder's packs, or into a bucket's
(:mod:`coral_core.store.bucket_packs`), so a push of one checkpoint is a pack
and its index, not a request per object, and a fetch reads runs of a pack in
one request each. A ref moves only after all its objects are there, with
compare-and-swap, so an interrupted transfer leaves both sides consistent
(run it again) and two pushes racing to one branch never silently lose a
commit. Fetched objects are verified against their ids before any ref names them.
Fetched branches land under ``refs/remotes/<remote>/``.

History is append-only on both sides: the weights of a pruned commit do not
travel (its prune mark does, so it is pruned on the other side too), a run's
pointers push and fetch like branches (forward only), and pins go with the
commits they hold. ``clone --depth N`` and ``fetch --depth N`` bring the
weights of the newest N commits of each branch only; older commits come
without weights (shallow) until ``fetch --deepen`` or ``--unshallow``.
A push holds a shared lock on the remote and ``gc --remote`` an exclusive
one (:mod:`coral_core.remote_locks`), so a remote gc never takes objects a
push in progress is about to name.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING

from coral_core.availability import KEPT, WeightsView, protected_commits
from coral_core.errors import (
    ConfigError,
    CoralError,
    CorruptObjectError,
    MissingObjectError,
    RefNotFoundError,
    RepositoryNotFoundError,
)
from coral_core.files import write_file_atomic
from coral_core.hashing import is_object_id
from coral_core.maintenance import GCResult, delete_objects, live_objects, ref_roots
from coral_core.maintenance import Progress as MaintenanceProgress
from coral_core.object_format import ObjectKind, object_key
from coral_core.objects import ObjectDatabase
from coral_core.refnames import validate_ref_name
from coral_core.refs import HEADS, PINS, PRUNED, REMOTES, RUNS, TAGS, RefDatabase
from coral_core.remote_locks import LEASE_SECONDS, gc_lock, push_lock
from coral_core.runs import split_pointer
from coral_core.store.base import WeightStore, WriteBatch
from coral_core.store.bucket_packs import BucketPacks
from coral_core.store.local import LocalStore
from coral_core.store.packs import PackedStore
from coral_core.store.prefix import PrefixStore

if TYPE_CHECKING:
    from coral_core.repository import Repository

_log = logging.getLogger("coral.remote")
_THREADS = 8
#: The file in ``.coral`` that marks a clone not finished yet.
CLONING = "CLONING"
#: The folder in ``.coral`` that keeps the pack indexes of each bucket remote.
PACK_CACHE = "cache/packs"
#: Objects the walk read whole and the copy reuses instead of reading them
#: again (documents and small chunks: a request each saved on a remote).
KEPT_BYTES = 64 << 20
#: Objects copied per read ahead (of chunks of 4 MiB, what a bucket's read ahead holds).
PREFETCH_GROUP = 64
Node = tuple[str, ObjectKind]
Progress = Callable[[int], None]  # called with the bytes of each object moved


class PushRejectedError(CoralError, RuntimeError):
    """The remote branch has commits this repository does not: fetch (pull) first.

    Attributes:
        ref: the full name of the ref that was refused.
    """

    def __init__(self, message: str, ref: str | None = None) -> None:
        super().__init__(message)
        self.ref = ref

    def __reduce__(self) -> tuple[type, tuple[str, str | None]]:
        return type(self), (str(self), self.ref)


@dataclass
class TransferResult:
    """What a push or fetch moved: objects and bytes, and the refs it set."""

    objects: int = 0
    bytes: int = 0
    refs: dict[str, tuple[str | None, str | None]] = field(default_factory=dict)  # (old, new)
    commits: list[str] = field(default_factory=list)  # the commits copied

    def add(self, other: TransferResult) -> None:
        self.objects += other.objects
        self.bytes += other.bytes
        self.refs.update(other.refs)
        self.commits += other.commits


#: The key prefix of a remote's objects (its refs are beside them).
OBJECTS = "objects/"


def open_store(url: str, base: Path | None = None) -> WeightStore:
    """The store a remote URL names: ``s3://bucket/prefix`` (endpoint from
    ``CORAL_S3_ENDPOINT_URL`` or ``AWS_ENDPOINT_URL``), ``file://path`` or a
    path (a relative one from ``base``, else from the current folder).

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
    folder = Path(url.removeprefix("file://")).expanduser()
    if base is not None and not folder.is_absolute():
        folder = base / folder
    if (folder / ".coral" / "config").is_file():
        folder = folder / ".coral"
    return PackedStore(folder, area=OBJECTS)  # a repository's packs are in objects/packs


class RemoteRefs:
    """A remote store's refs and objects (``cache``: a folder that keeps the
    indexes of a bucket's packs, so each is read from the remote once)."""

    def __init__(self, store: WeightStore, cache: Path | None = None) -> None:
        self.store = store
        objects: WeightStore = PrefixStore(store, OBJECTS)
        if not store.packs_objects:  # a bucket: packs of its own (a folder packs itself)
            objects = BucketPacks(objects, cache)
        self.objects = ObjectDatabase(objects)
        #: A repository's own refs when the remote is its folder (someone's live
        #: repository): ref updates take its lock and write its reflog.
        self.live: RefDatabase | None = None
        if isinstance(store, LocalStore) and (store.root / "config").is_file():
            self.live = RefDatabase(store.root)

    def read(self, ref: str) -> str | None:
        """The id ``ref`` holds on the remote, or None.

        Raises:
            CorruptObjectError: when the remote's ref holds something else.
        """
        try:
            text = self.store.get(ref).decode("ascii", errors="replace").strip()
        except MissingObjectError:
            return None
        if not is_object_id(text):
            raise CorruptObjectError(f"remote ref {ref} holds {text[:80]!r}, not an object id")
        return text

    def names(self, prefix: str) -> set[str]:
        """The names below ``prefix`` (one listing, no reads: for pins and
        prune marks, whose names are their commits)."""
        return {
            key[len(prefix) :]
            for key in self.store.list(prefix)
            if not key.endswith(".lock") and is_object_id(key[len(prefix) :])
        }

    def list_refs(self, prefix: str) -> dict[str, str]:
        """Every ref under ``prefix`` (``refs/heads/``), by the rest of its name."""
        refs = {}
        for key in self.store.list(prefix):
            if key.endswith(".lock"):
                continue
            value = self.read(key)
            if value is not None:
                refs[key[len(prefix) :]] = value
        return dict(sorted(refs.items()))

    def list(self, prefix: str) -> dict[str, str]:
        """Full ref name -> id, for refs under ``prefix``."""
        return {prefix + name: value for name, value in self.list_refs(prefix).items()}

    def swap(self, ref: str, old: str | None, new: str | None) -> bool:
        """Compare-and-swap ``ref`` from ``old`` to ``new`` (None: absent / delete)."""
        if self.live is not None:
            return self.live.set_if_equals(ref, old, new, transfer_author("push"), "push")
        expected = None if old is None else f"{old}\n".encode()
        if new is None:
            return expected is not None and self.store.compare_and_delete(ref, expected)
        return self.store.compare_and_swap(ref, expected, f"{new}\n".encode())

    def mark(self, ref: str, commit: str) -> None:
        """Write an immutable ref that names its own commit (a pin or prune mark)."""
        if self.live is not None:
            self.live.set_if_equals(ref, None, commit, transfer_author("push"), "push")
            return
        self.store.put_if_absent(ref, f"{commit}\n".encode())

    def weights_view(self) -> WeightsView:
        """Which commits' weights the remote holds (it is never shallow)."""
        return WeightsView(
            marked=frozenset(self.names(PRUNED)),
            protected=protected_commits(self, self.objects.peel),
            shallow=frozenset(),
            has=self.objects.has,
        )


def transfer_author(action: str) -> str:
    """Who a reflog line of a transfer names: ``alice (push)``, ``alice (pull)``."""
    from coral_core.repository import default_author

    return f"{default_author()} ({action})"


# -- the object walk -----------------------------------------------------------------


def missing_objects(
    source: ObjectDatabase,
    has: Callable[[str], bool],
    roots: Iterable[Node],
    pool: ThreadPoolExecutor,
    kept: dict[str, bytes],
    follow: Callable[[str, list[Node]], list[Node]] | None = None,
) -> tuple[list[list[Node]], dict[Node, list[Node]]]:
    """The objects reachable from ``roots`` that ``has`` lacks, in levels: each
    level only references objects of earlier levels (or ones already there);
    and what each of them references.

    Each missing object is read once for what it references; the ones that
    read got whole (documents, small chunks) go into ``kept``, up to
    ``KEPT_BYTES`` in all, for the copy to use instead of a second read.
    ``follow(commit, references)`` says what of a commit to walk into (its
    parents only, for one whose weights stay behind)."""
    edges: dict[Node, list[Node]] = {}
    seen: set[str] = set()
    budget = KEPT_BYTES
    frontier = list(roots)
    while frontier:
        fresh = [n for n in dict.fromkeys(frontier) if n[0] not in seen]
        seen.update(n[0] for n in fresh)
        present = list(pool.map(lambda n: has(object_key(n[0])), fresh))
        missing = [n for n, there in zip(fresh, present, strict=True) if not there]
        source.store.prefetch(object_key(n[0]) for n in missing)
        read = list(pool.map(lambda n: source.references_read_once(*n), missing))
        frontier = []
        for node, (refs, blob) in zip(missing, read, strict=True):
            if follow is not None and node[1] == ObjectKind.COMMIT:
                refs = follow(node[0], refs)
            edges[node] = refs
            if blob is not None and len(blob) <= budget:
                kept[node[0]] = blob
                budget -= len(blob)
            frontier.extend(refs)
    height: dict[Node, int] = {}
    for node in edges:  # iterative post-order: a node after the missing ones it references
        stack = [(node, False)]
        path: set[Node] = set()  # the nodes being expanded: one met again is a loop
        while stack:
            current, expanded = stack.pop()
            if current in height:
                continue
            below = [c for c in edges[current] if c in edges]
            if expanded:
                height[current] = 1 + max((height[c] for c in below), default=-1)
                path.discard(current)
                continue
            if current in path:
                raise CorruptObjectError(
                    f"object {current[0]} references itself (through {len(path)} others): "
                    "a loop no writer makes; nothing was copied"
                )
            path.add(current)
            stack.append((current, True))
            stack.extend((c, False) for c in below if c not in height)
    levels: list[list[Node]] = [[] for _ in range(1 + max(height.values(), default=-1))]
    for node, level in height.items():
        levels[level].append(node)
    return levels, edges


def copy_objects(
    source: ObjectDatabase,
    dest: ObjectDatabase,
    roots: Sequence[Node],
    *,
    verify: bool,
    follow: Callable[[str, list[Node]], list[Node]] | None = None,
    check: Callable[[list[list[Node]]], None] | None = None,
    progress: Progress | None = None,
) -> TransferResult:
    """Copy every object reachable from ``roots`` that ``dest`` lacks, level by level.

    Args:
        follow: what of a commit to walk into (see :func:`missing_objects`).
        check: called with the levels to copy before anything is copied; may raise.

    Raises:
        CorruptObjectError: (with ``verify``) when an object does not match its
            id; it is removed from ``dest`` again, and no ref has moved.
    """
    result = TransferResult()
    kept: dict[str, bytes] = {}
    with ThreadPoolExecutor(_THREADS, "coral-transfer") as pool:
        levels, edges = missing_objects(source, dest.store.has, roots, pool, kept, follow)
        if check is not None:
            check(levels)
        result.commits = [n[0] for level in levels for n in level if n[1] == ObjectKind.COMMIT]

        def move(batch: WriteBatch, node: Node) -> int:
            key = object_key(node[0])
            data = kept.pop(node[0], None)
            if data is None:
                data = source.store.get(key)
            batch.put_if_absent(key, data)
            if progress is not None:
                progress(len(data))
            return len(data)

        pending = list(levels)
        while pending:  # one batch (a pack where dest packs), a level at a time in it
            with dest.store.write_batch() as batch:
                while pending:
                    level = pending.pop(0)
                    for at in range(0, len(level), PREFETCH_GROUP):  # a few requests per group
                        group = level[at : at + PREFETCH_GROUP]
                        source.store.prefetch(object_key(n[0]) for n in group if n[0] not in kept)
                        sizes = list(pool.map(partial(move, batch), group))
                        result.objects += len(sizes)
                        result.bytes += sum(sizes)
                    if not batch.ordered:
                        break  # what names this level goes in a batch of its own
                    batch.barrier()
        if verify:
            _verify_levels(dest, levels, edges, pool)
    return result


def _verify_levels(
    dest: ObjectDatabase,
    levels: list[list[Node]],
    edges: dict[Node, list[Node]],
    pool: ThreadPoolExecutor,
) -> None:
    """Check what arrived, a level at a time. At the first level with bad
    objects, they go again, and so does every object above that names one of
    them, however indirectly: nothing stays that names what is not there.

    Raises:
        CorruptObjectError: naming the first bad object.
    """

    def problem(node: Node) -> CoralError | None:
        try:
            _verify(dest, *node)
        except CoralError as exc:
            return exc
        return None

    for at, level in enumerate(levels):
        bad = [(n, e) for n, e in zip(level, pool.map(problem, level), strict=True) if e]
        if not bad:
            continue
        doomed = {node for node, _ in bad}
        for above in levels[at + 1 :]:
            doomed.update(n for n in above if any(t in doomed for t in edges[n]))
        for node in doomed:
            dest.store.delete(object_key(node[0]))
        dest.store.reclaim()
        first, exc = bad[0]
        raise CorruptObjectError(f"object {first[0]} from the remote: {exc}") from exc


def _verify(objects: ObjectDatabase, object_id: str, kind: ObjectKind) -> None:
    """Check an object that arrived against its id: its header, checksum and
    kind; a chunk decoded and hashed; a tensor's every byte rebuilt from its
    chunks (already here: they travel first) and hashed, so no descriptor can
    claim a tensor it does not hold.

    Raises:
        CorruptObjectError: naming what does not match.
    """
    found = objects.kind_of(object_id)
    if found != kind:
        raise CorruptObjectError(f"is a {found.name.lower()}, named as a {kind.name.lower()}")
    if kind == ObjectKind.TENSOR:
        problems = objects.check_tensor(object_id)
        if problems:
            raise CorruptObjectError("; ".join(problems.values()))
        return
    objects.check_object(object_id)


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
    if "://" not in url:  # a folder: where it is now, whichever folder a later command runs in
        url = str(Path(url).expanduser().absolute())
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
    url = remotes[name]
    cache = repo.coral_dir / PACK_CACHE / hashlib.sha256(url.encode()).hexdigest()[:16]
    return RemoteRefs(open_store(url, base=repo.path), cache)


def push(
    repo: Repository,
    remote: str = "origin",
    branches: Sequence[str] | None = None,
    *,
    tags: bool = False,
    force: bool = False,
    force_with_lease: bool = False,
    delete: Sequence[str] = (),
    refs: Sequence[str] = (),
    progress: Progress | None = None,
    lease: float = LEASE_SECONDS,
) -> TransferResult:
    """Send branches (HEAD's by default) and, with ``tags``, every tag; only
    objects the remote lacks travel, and each remote ref moves by compare-and-swap.

    The run pointers (``refs/runs/...``) of commits in the pushed history go
    along, as do the pins and prune marks of those commits; the weights of
    pruned commits stay behind. Everything happens under a shared lock on the
    remote, so a ``gc --remote`` waits for the push and the other way round.

    Args:
        branches: the branches to push; None for HEAD's branch (no branch
            when only deleting).
        tags: push every tag too; a tag the remote has on another commit is
            refused (tags do not move) unless ``force``.
        force: replace remote branches, pointers and tags even when that
            drops commits there.
        force_with_lease: replace a remote branch only if it is where this
            repository last saw it (its remote-tracking branch): a rewrite
            that cannot drop a push made since.
        delete: branches to delete on the remote.
        refs: more refs to push, by full name (a run's pointers).
        lease: seconds the remote lock lives without a heartbeat.

    Raises:
        PushRejectedError: when a remote branch or pointer has commits this
            repository lacks (fetch or pull first), or another push won the
            race; ``ref`` names it. Refs already pushed stay pushed, nothing
            is half-done.
        RemoteBusyError: when a gc holds the remote for too long.
    """
    target = _remote(repo, remote)
    names = list(branches) if branches is not None else ([] if delete else [_current_branch(repo)])
    local: dict[str, str] = {}
    for ref in [HEADS + validate_ref_name(b) for b in names] + list(refs):
        value = repo.refs.read(ref)
        if value is None:
            what = f"branch {ref.removeprefix(HEADS)!r}" if ref.startswith(HEADS) else ref
            raise RefNotFoundError(f"no {what} to push")
        local[ref] = value
    history = {c.commit_hash for c in repo.iter_commits(list(dict.fromkeys(local.values())))}
    for name, commit in repo.refs.list_refs(RUNS).items():
        if commit in history:
            local.setdefault(RUNS + name, commit)
    if tags:
        local.update({TAGS + name: tag for name, tag in repo.refs.list_refs(TAGS).items()})
    pins = {c for c in repo.pins() if c in history}
    marks = {c for c in repo.refs.names(PRUNED) if c in history}
    view = repo.weights_view()
    with push_lock(target.store, lease) as held:
        updates = []
        for ref, new in local.items():
            old = target.read(ref)
            if old != new:
                _check_update(repo, remote, ref, old, new, force, force_with_lease)
                updates.append((ref, old, new))
        deletions = []
        for branch in delete:
            ref = HEADS + validate_ref_name(branch)
            old = target.read(ref)
            if old is None:
                raise RefNotFoundError(f"remote {remote!r} has no branch {branch!r} to delete")
            deletions.append((ref, old))
        roots = [(new, repo.objects.kind_of(new)) for _, _, new in updates]
        result = copy_objects(
            repo.objects,
            target.objects,
            roots,
            verify=False,
            follow=view.follow,
            check=lambda levels: _refuse_shallow(view, levels, remote),
            progress=progress,
        )
        for commit in sorted(marks - target.names(PRUNED)) if marks else ():
            target.mark(PRUNED + commit, commit)
        for commit in sorted(pins - target.names(PINS)) if pins else ():  # a listing each
            target.mark(PINS + commit, commit)
        moves: list[tuple[str, str | None, str | None]] = [*updates]
        moves.sort(key=_push_order)
        moves += [(ref, old, None) for ref, old in deletions]
        if moves:
            held.check()  # still this push's remote: no gc took objects it relies on
        for ref, before, after in moves:
            if not target.swap(ref, before, after):
                raise PushRejectedError(
                    f"{ref} on remote {remote!r} moved while pushing (another push won); "
                    "fetch first, then push again",
                    ref,
                )
            result.refs[ref] = (before, after)
            if ref.startswith(HEADS):
                _track(repo, remote, ref.removeprefix(HEADS), after)
    return result


def _check_update(
    repo: Repository,
    remote: str,
    ref: str,
    old: str | None,
    new: str,
    force: bool,
    force_with_lease: bool,
) -> None:
    """Refuse a remote ref update that would drop commits there (unless forced)."""
    if old is None:
        return
    if ref.startswith(TAGS):
        if not force:
            raise PushRejectedError(
                f"remote {remote!r} has tag {ref.removeprefix(TAGS)!r} on another commit; tags "
                "do not move (push --force replaces it)",
                ref,
            )
        return
    if ref.startswith(HEADS) and force_with_lease:
        branch = ref.removeprefix(HEADS)
        expected = repo.refs.read(f"{REMOTES}{remote}/{branch}")
        if old != expected:
            seen = expected[:12] if expected else "nothing"
            raise PushRejectedError(
                f"branch {branch!r} on remote {remote!r} is at {old[:12]}, not where this "
                f"repository last saw it ({seen}): someone pushed since; fetch first",
                ref,
            )
        return
    if force or is_ancestor(repo, old, new):
        return
    if ref.startswith(HEADS):
        branch = ref.removeprefix(HEADS)
        raise PushRejectedError(
            f"remote {remote!r} has commits on {branch!r} that this repository does not "
            f"({old[:12]}); fetch first: `coral-ml pull {remote} {branch}`",
            ref,
        )
    raise PushRejectedError(
        f"{ref} on remote {remote!r} is at {old[:12]}, which {new[:12]} does not descend "
        "from; fetch first",
        ref,
    )


def _push_order(update: tuple[str, str | None, str | None]) -> int:
    """Run pointers and tags before branches: a branch that names a commit
    last, once everything about its history is there."""
    ref = update[0]
    return 0 if ref.startswith(RUNS) else 1 if ref.startswith(TAGS) else 2


def _refuse_shallow(view: WeightsView, levels: list[list[Node]], remote: str) -> None:
    """A shallow clone cannot give a remote commits whose weights it never had."""
    for level in levels:
        for object_id, kind in level:
            if kind == ObjectKind.COMMIT and object_id in view.shallow:
                raise CoralError(
                    f"commit {object_id[:12]} has no weights in this shallow clone and remote "
                    f"{remote!r} lacks it; fetch --unshallow first, or push from a full clone"
                )


def _current_branch(repo: Repository) -> str:
    branch = repo.current_branch
    if branch is None:
        raise CoralError("HEAD is detached; name the branch to push")
    return branch


def _track(repo: Repository, remote: str, branch: str, commit: str | None) -> None:
    with repo.refs.lock():
        if commit is None:
            repo.refs.delete(f"{REMOTES}{remote}/{branch}")
        else:
            repo.refs.write(f"{REMOTES}{remote}/{branch}", commit)


def fetch(
    repo: Repository,
    remote: str = "origin",
    ref: str | None = None,
    *,
    depth: int | None = None,
    deepen: int | None = None,
    unshallow: bool = False,
    progress: Progress | None = None,
) -> TransferResult:
    """Bring a remote's branches (as ``refs/remotes/<remote>/<branch>``), the
    tags this repository lacks, run pointers, pins and prune marks here, verified.

    Args:
        ref: fetch only this branch (or tag) of the remote.
        depth: bring the weights of the newest ``depth`` commits of each
            branch and run pointer only; older commits come without weights
            (shallow, listed in ``.coral/shallow``).
        deepen: bring the weights of ``deepen`` more generations of shallow commits.
        unshallow: bring the weights of every shallow commit the remote keeps.

    Raises:
        ConfigError: for a depth below 1.
        RefNotFoundError: when the remote has no ``ref``.
        CorruptObjectError: when an object does not match its id (no ref moves).
    """
    for name, value in (("depth", depth), ("deepen", deepen)):
        if value is not None and (
            isinstance(value, bool) or not isinstance(value, int) or value < 1
        ):
            raise ConfigError(f"{name} must be a positive number of commits, not {value!r}")
    source = _remote(repo, remote)
    store = source.store
    if isinstance(store, LocalStore) and not store.root.is_dir():
        raise RepositoryNotFoundError(
            f"remote {remote!r}: {store.root} does not exist; check the path with "
            "`coral-ml remote list`"
        )
    branches = source.list_refs(HEADS)
    tags = source.list_refs(TAGS)
    pointers = source.list_refs(RUNS)
    for name in [*branches, *tags, *pointers]:
        validate_ref_name(name)  # a remote's names must not escape .coral/refs
    pointers = {n: c for n, c in pointers.items() if split_pointer(n) is not None}
    if ref is not None:
        if ref not in branches and ref not in tags:
            raise RefNotFoundError(f"remote {remote!r} has no branch or tag {ref!r}")
        branches = {ref: branches[ref]} if ref in branches else {}
        tags = {ref: tags[ref]} if ref in tags else {}
    new_tags = {n: t for n, t in tags.items() if repo.refs.read(TAGS + n) is None}
    view = source.weights_view()
    tips = list(dict.fromkeys([*branches.values(), *(() if ref else pointers.values())]))
    weighted = None if depth is None else _within_depth(source, repo, tips, depth)
    withheld: set[str] = set()

    def follow(commit: str, references: list[Node]) -> list[Node]:
        followed = view.follow(commit, references)
        if weighted is None or commit in weighted or len(followed) < len(references):
            return followed
        withheld.add(commit)  # beyond the depth, kept on the remote: shallow here
        return [(c, k) for c, k in references if k == ObjectKind.COMMIT]

    shallow = repo.shallow.read()
    deepened = _to_deepen(repo, shallow, deepen, unshallow)
    roots: list[Node] = [(c, ObjectKind.COMMIT) for c in tips]
    roots += [(t, source.objects.kind_of(t)) for t in new_tags.values()]
    for commit in deepened:
        if view.status(commit, list(repo.read_commit(commit).trees.values())) == KEPT:
            roots += [(t, ObjectKind.TREE) for t in repo.read_commit(commit).trees.values()]
    with repo.writing_objects():
        result = copy_objects(
            source.objects, repo.objects, roots, verify=True, follow=follow, progress=progress
        )
        for name, target in [*branches.items(), *pointers.items(), *new_tags.items()]:
            _require_commit(repo, remote, name, target)  # before any ref moves
        with repo.refs.lock():
            for commit in source.names(PRUNED):
                if repo.refs.read(PRUNED + commit) is None and repo.objects.has(commit):
                    repo.refs.write(PRUNED + commit, commit)
            repo.shallow.write((shallow - deepened) | withheld)
            for commit in source.names(PINS):
                if repo.refs.read(PINS + commit) is None and repo.objects.has(commit):
                    repo.refs.write(PINS + commit, commit)
            for name, commit in pointers.items():
                _fast_forward(repo, RUNS + name, commit, f"fetch: {remote}", result)
            for branch, commit in branches.items():
                tracking = f"{REMOTES}{remote}/{branch}"
                old = repo.refs.read(tracking)
                if old != commit:
                    repo.refs.write(tracking, commit)
                    result.refs[tracking] = (old, commit)
            for name, tag_id in new_tags.items():
                repo.refs.write(TAGS + name, tag_id)
                result.refs[TAGS + name] = (None, tag_id)
    return result


def _require_commit(repo: Repository, remote: str, name: str, target: str) -> None:
    """A fetched ref must name a commit (a tag: through tags, at most 8 deep)
    that is here now, verified.

    Raises:
        CorruptObjectError: naming the remote's ref and what it names instead.
    """
    try:
        kind = repo.objects.kind_of(repo.objects.peel(target))
    except CoralError as exc:
        raise CorruptObjectError(f"remote {remote!r}: {name} names {target[:12]}: {exc}") from exc
    if kind != ObjectKind.COMMIT:
        raise CorruptObjectError(
            f"remote {remote!r}: {name} names a {kind.name.lower()} ({target[:12]}), not a "
            "commit; nothing was changed here"
        )


def _within_depth(
    source: RemoteRefs, repo: Repository, tips: Sequence[str], depth: int
) -> set[str]:
    """The commits at most ``depth`` generations from ``tips`` (commits this
    repository already has end the walk: their weights are here or not already)."""
    found: set[str] = set()
    level = [c for c in tips if not repo.objects.has(c)]
    for _ in range(depth):
        fresh = [c for c in dict.fromkeys(level) if c not in found]
        found.update(fresh)
        level = [
            parent
            for commit in fresh
            for parent in source.objects.read_document(ObjectKind.COMMIT, commit)["parents"]
            if isinstance(parent, str) and not repo.objects.has(parent)
        ]
    return found


def _to_deepen(
    repo: Repository, shallow: frozenset[str], deepen: int | None, every: bool
) -> set[str]:
    """The shallow commits a ``--deepen N`` (the N generations next to commits
    with weights) or an ``--unshallow`` (all) brings the weights of."""
    if every:
        return set(shallow)
    if not deepen or not shallow:
        return set()
    below: dict[str, list[str]] = {}
    boundary = []
    for commit in repo.iter_commits(repo.ref_commits()):
        if commit.commit_hash in shallow:
            below[commit.commit_hash] = list(commit.parent_hashes)
        else:
            boundary += [p for p in commit.parent_hashes if p in shallow]
    chosen: set[str] = set()
    for _ in range(deepen):
        fresh = [c for c in dict.fromkeys(boundary) if c not in chosen]
        chosen.update(fresh)
        boundary = [p for c in fresh for p in below.get(c, []) if p in shallow]
    return chosen


def _fast_forward(
    repo: Repository, ref: str, commit: str, message: str, result: TransferResult
) -> None:
    """Move a local run pointer to the remote's when that only moves it forward
    (the caller holds the refs lock); a pointer ahead here, or diverged, stays."""
    old = repo.refs.read(ref)
    if old == commit or not repo.objects.has(commit):
        return
    if old is not None and not is_ancestor(repo, old, commit):
        return
    repo.refs.write(ref, commit)
    repo.refs.log_move(ref, old, commit, "coral fetch", message)
    result.refs[ref] = (old, commit)


def pull(
    repo: Repository,
    remote: str = "origin",
    branch: str | None = None,
    strategy: str = "fail",
    progress: Progress | None = None,
) -> TransferResult:
    """Fetch, then merge the remote's ``branch`` (HEAD's by default) into the
    current branch (a fast-forward when possible; conflicts go to ``strategy``)."""
    result = fetch(repo, remote, progress=progress)
    name = branch or _current_branch(repo)
    tracking = f"{REMOTES}{remote}/{name}"
    if repo.refs.read(tracking) is None:
        raise RefNotFoundError(f"remote {remote!r} has no branch {name!r}")
    repo.merge(tracking, strategy, f"Merge {remote}/{name}")
    return result


def pull_every_branch(
    repo: Repository, remote: str = "origin", strategy: str = "fail"
) -> dict[str, str]:
    """Fetch, then bring every branch of the remote here: a branch only there
    is made here, one behind here moves forward to it, the current one merges
    it (conflicts go to ``strategy``); one that has diverged is left as it is,
    to merge by hand. Returns what happened to each branch: ``created``,
    ``fast-forward``, ``merged``, ``up to date``, ``ahead`` or ``diverged``."""
    fetch(repo, remote)
    outcome: dict[str, str] = {}
    current = repo.current_branch
    for branch, theirs in repo.refs.list_refs(f"{REMOTES}{remote}/").items():
        ours = repo.refs.read(HEADS + branch)
        if branch == current:
            before = repo.resolve("HEAD")
            repo.merge(f"{REMOTES}{remote}/{branch}", strategy, f"Merge {remote}/{branch}")
            after = repo.resolve("HEAD")
            outcome[branch] = "up to date" if after == before else "merged"
        elif ours == theirs:
            outcome[branch] = "up to date"
        elif ours is None or is_ancestor(repo, ours, theirs):
            ref, author = HEADS + branch, transfer_author("pull")
            moved = repo.refs.set_if_equals(ref, ours, theirs, author, f"pull: {remote}")
            made = "created" if ours is None else "fast-forward"
            outcome[branch] = made if moved else "diverged"  # (it moved meanwhile)
        else:
            outcome[branch] = "ahead" if is_ancestor(repo, theirs, ours) else "diverged"
    return outcome


def clone(
    url: str,
    path: str | os.PathLike[str],
    progress: Progress | None = None,
    *,
    depth: int | None = None,
) -> Repository:
    """A new repository at ``path`` with every branch and tag of ``url`` (remote ``origin``).

    A clone that was interrupted (killed, a full disk, the network) is taken
    up again by running it once more with the same arguments.

    Args:
        depth: bring the weights of the newest ``depth`` commits of each branch
            and run pointer only (a shallow clone; see :func:`fetch`).

    Raises:
        ConfigError: when ``path`` already holds a repository (other than an
            unfinished clone of ``url``).
        RepositoryNotFoundError: when ``url`` is a folder that does not exist.
    """
    from coral_core.repository import Repository

    store = open_store(url)
    if isinstance(store, LocalStore) and not store.root.is_dir():
        raise RepositoryNotFoundError(f"cannot clone {url}: {store.root} does not exist")
    marker = Path(path) / ".coral" / CLONING
    if (Path(path) / ".coral" / "config").is_file():
        if not marker.is_file():
            raise ConfigError(f"{path} already holds a Coral repository; clone into a new folder")
        began = marker.read_text(errors="replace")
        if began != url:
            raise ConfigError(
                f"{path} holds an unfinished clone of {began}, not of {url}; clone that "
                "again, or remove the folder"
            )
        repo = Repository(path)  # an unfinished clone: take it up again
    else:
        repo = Repository(path, init=True)
        write_file_atomic(marker, url.encode())
        add_remote(repo, "origin", url)
    fetch(repo, "origin", depth=depth, progress=progress)
    tracked = repo.refs.list_refs(f"{REMOTES}origin/")
    with repo.refs.lock():
        for branch, commit in tracked.items():
            repo.refs.write(HEADS + branch, commit)
        if tracked:
            repo.refs.set_head(branch="main" if "main" in tracked else sorted(tracked)[0])
    if not tracked:
        _log.warning("cloned %s, which has no branches: an empty remote, or a mistyped one?", url)
    marker.unlink()
    return repo


def unpin_on_remote(
    repo: Repository, remote: str, commit: str, lease: float = LEASE_SECONDS
) -> bool:
    """Remove the pin of ``commit`` on the remote; whether there was one."""
    target = _remote(repo, remote)
    with push_lock(target.store, lease):
        return target.store.delete(PINS + commit)


def collect_remote_garbage(
    repo: Repository,
    remote: str = "origin",
    *,
    dry_run: bool = False,
    progress: MaintenanceProgress | None = None,
    lease: float = LEASE_SECONDS,
) -> GCResult:
    """Delete on the remote every object no remote ref, pin or kept commit needs.

    Holds the remote's exclusive gc lock (pushes wait, and it waits for the
    pushes in progress), then marks from the remote's branches, tags, run
    pointers and pins, skipping the weights of commits pruned there, and
    deletes the rest in an order that a kill at any point leaves sound. A
    remote that is someone's live repository (its folder) is collected as its
    owner's ``gc`` would, with its HEAD, index and remote-tracking branches.
    """
    from coral_core.repository import Repository

    target = _remote(repo, remote)
    if target.live is not None:
        return Repository(target.live.root).gc(dry_run=dry_run, progress=progress)
    with gc_lock(target.store, lease):
        keep = live_objects(
            target.objects, ref_roots(target, target.objects.kind_of), target.weights_view()
        )
        stored = list(target.objects.iter_ids())
        removed, freed = delete_objects(
            target.objects, (i for i in stored if i not in keep), dry_run, progress
        )
        if not dry_run:
            target.objects.store.reclaim()  # packed garbage: its space, packs cut off
            target.objects.store.consolidate()  # loose objects and a push's small packs
    return GCResult(removed, freed, len(stored) - removed, 0, dry_run)


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
    result = fetch(repo, remote, progress=progress)
    pushable = [
        row.branch
        for row in sync_status(repo, remote)
        if row.local is not None and row.ahead and not row.behind
    ]
    result.add(push(repo, remote, pushable, tags=True, progress=progress))
    return result
