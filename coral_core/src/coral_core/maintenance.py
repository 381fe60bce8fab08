"""Garbage collection and integrity checks (``gc``, ``verify``)."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from functools import partial
from typing import TYPE_CHECKING, TypeVar

from coral_core.availability import KEPT, PRUNED, RefSource, WeightsView
from coral_core.errors import CoralError, MissingObjectError
from coral_core.fingerprints import Fingerprint
from coral_core.locks import fair_lock
from coral_core.object_format import ObjectKind, object_key
from coral_core.objects import ObjectDatabase
from coral_core.refs import HEADS, PINS, REMOTES, RUNS, TAGS
from coral_core.store.local import GC_LOCK, LocalStore

if TYPE_CHECKING:
    from coral_core.model import TreeEntry
    from coral_core.repository import Repository

T = TypeVar("T")
Node = tuple[str, ObjectKind]
#: ``progress(done, total)``: how far a long operation is (total None when unknown).
Progress = Callable[[int, "int | None"], None]


@dataclass(frozen=True)
class GCResult:
    """What ``gc`` removed (or would remove, with ``dry_run``)."""

    removed_objects: int
    freed_bytes: int
    kept_objects: int
    temp_files_removed: int
    dry_run: bool


@dataclass(frozen=True)
class Problem:
    """A missing or damaged object and where it is used."""

    object_id: str
    message: str
    used_by: tuple[str, ...] = ()  # "commit <id>: tensor <name>", "tag <name>", ...
    commits: tuple[str, ...] = ()  # commits that cannot be restored in full because of it


@dataclass
class VerifyReport:
    """Result of ``verify``: every object read, decoded and checked against its id."""

    objects_checked: int = 0
    commits_checked: int = 0
    tensors_checked: int = 0
    commits_without_weights: int = 0  # pruned or shallow: only their commits are checked
    problems: list[Problem] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    @property
    def affected_commits(self) -> list[str]:
        """Commits that cannot be restored in full."""
        return sorted({commit for problem in self.problems for commit in problem.commits})


def ref_roots(refs: RefSource, kind_of: Callable[[str], ObjectKind]) -> list[Node]:
    """The objects the refs under ``refs`` hold: branch tips (remote-tracking
    ones too), tags, run pointers and pins. Prune marks hold nothing."""
    roots = [
        (c, ObjectKind.COMMIT)
        for p in (HEADS, REMOTES, RUNS, PINS)
        for c in refs.list_refs(p).values()
    ]
    roots += [(t, kind_of(t)) for t in refs.list_refs(TAGS).values()]
    return roots


def _roots(repo: Repository) -> list[Node]:
    roots = ref_roots(repo.refs, repo.objects.kind_of)
    head = repo.refs.head().commit
    if head:
        roots.append((head, ObjectKind.COMMIT))
    roots += [(e.tensor, ObjectKind.TENSOR) for e in repo.index.read().entries.values()]
    return roots


def live_objects(objects: ObjectDatabase, roots: Iterable[Node], view: WeightsView) -> set[str]:
    """Every object reachable from ``roots``, without the weights of commits
    ``view`` says are pruned or shallow.

    Raises:
        MissingObjectError, CorruptObjectError: when a reachable object cannot be
            read, since what it references would be unknown.
    """
    marked: set[str] = set()
    frontier = list(roots)
    while frontier:
        fresh = [n for n in dict.fromkeys(frontier) if n[0] not in marked]
        marked.update(object_id for object_id, _ in fresh)
        # documents read ahead (on a bucket, a request per pack); of a chunk only its head is read
        objects.store.prefetch(object_key(i) for i, kind in fresh if kind != ObjectKind.CHUNK)
        frontier = []
        for object_id, kind in fresh:
            children = objects.references(object_id, kind)
            if kind == ObjectKind.COMMIT:
                children = view.follow(object_id, children)
            frontier.extend(children)
    return marked


def reachable_objects(repo: Repository) -> set[str]:
    """Every object reachable from a ref, HEAD or the index (see :func:`live_objects`)."""
    return live_objects(repo.objects, _roots(repo), repo.weights_view())


def in_deletion_order(objects: ObjectDatabase, garbage: Iterable[str]) -> list[str]:
    """The unreferenced objects ``garbage``, each after all garbage that
    references it (see :func:`_deletion_graph`)."""
    return _deletion_graph(objects, garbage)[0]


def _deletion_graph(
    objects: ObjectDatabase, garbage: Iterable[str]
) -> tuple[list[str], dict[str, list[str]]]:
    """The unreferenced objects ``garbage``, each after all garbage that references it.

    Deleting in this order means a gc stopped at any point leaves no object whose
    delta base (or other reference) is gone: garbage stays readable until it goes.
    Garbage that cannot be read references nothing and goes first.
    """
    garbage = list(garbage)
    in_garbage = set(garbage)
    edges: dict[str, list[str]] = {}
    referrers = dict.fromkeys(garbage, 0)
    for object_id in garbage:
        try:
            kind = objects.kind_of(object_id)
            targets = [t for t, _ in objects.references(object_id, kind) if t in in_garbage]
        except CoralError:
            targets = []
        edges[object_id] = targets
        for target in targets:
            referrers[target] += 1
    ready = [object_id for object_id in garbage if referrers[object_id] == 0]
    order: list[str] = []
    while ready:
        object_id = ready.pop()
        order.append(object_id)
        for target in edges[object_id]:
            referrers[target] -= 1
            if referrers[target] == 0:
                ready.append(target)
    return order, edges


def delete_objects(
    objects: ObjectDatabase, garbage: Iterable[str], dry_run: bool, progress: Progress | None
) -> tuple[int, int]:
    """Delete ``garbage`` in :func:`in_deletion_order`; (objects, bytes) it frees.

    In packs a deletion takes effect only when the store's ``reclaim``
    records it, all at once: an object in its own file that packed garbage
    references (a chunk of a repository from before packs, a delta base now)
    goes only after that, so a gc stopped at any point still leaves no visible
    object whose base is gone.
    """
    order, edges = _deletion_graph(objects, garbage)
    store = objects.store
    in_packs = {i for i in order if store.is_packed(object_key(i))}
    held = {t for i in order if i in in_packs for t in edges[i]}  # referenced by packed garbage
    later = [i for i in order if i in held and i not in in_packs]
    waiting = set(later)
    freed = 0
    for done, object_id in enumerate(order, 1):
        with contextlib.suppress(MissingObjectError):  # another gc took it meanwhile
            freed += objects.stored_size(object_id)
            if not dry_run and object_id not in waiting:
                objects.delete(object_id)
        if progress is not None:
            progress(done, len(order))
    if later and not dry_run:
        store.reclaim()  # the packed garbage out of sight for good, then what it named
        for object_id in later:
            objects.delete(object_id)
    return len(order), freed


@contextlib.contextmanager
def maintenance_lock(repo: Repository) -> Iterator[None]:
    """Exclusive: no writer is between storing objects and naming them in a ref."""
    with fair_lock(repo.coral_dir / GC_LOCK), repo.refs.lock():
        repo.objects.store.refresh()  # a gc may have rewritten packs this view still names
        yield


def collect_garbage(
    repo: Repository, dry_run: bool = False, progress: Progress | None = None
) -> GCResult:
    """Delete every object nothing references, and leftovers of interrupted writes.

    Runs under the exclusive gc lock, so no commit is writing objects meanwhile;
    a commit waits for ``gc`` to finish and the other way round. ``progress``
    is called with (objects done, objects to delete).
    """
    with maintenance_lock(repo):
        keep = reachable_objects(repo)
        stored = list(repo.objects.iter_ids())
        removed, freed = delete_objects(
            repo.objects, (i for i in stored if i not in keep), dry_run, progress
        )
        if removed and not dry_run:
            _forget_fingerprints(repo, keep)
        temps = 0
        store = repo.objects.store
        if isinstance(store, LocalStore):
            for temp in list(store.temp_files()):
                temps += 1
                if not dry_run:
                    with contextlib.suppress(FileNotFoundError):
                        temp.unlink()
        if removed and not dry_run:
            store.reclaim()
    return GCResult(removed, freed, len(stored) - removed, temps, dry_run)


def free_pruned(repo: Repository, commits: Iterable[str]) -> GCResult:
    """Delete now what only the weights of these pruned commits used.

    The targeted ``gc`` that retention runs after pruning: it marks what
    everything kept needs, then deletes the pruned commits' trees and what
    only they reach. Chunks a kept chunk's delta chain runs through stay
    (they are what the kept checkpoints need); objects are never encoded
    again in place here, since a remote holding the old encoding would then
    grow chains without bound. Commits that are not pruned (a ref holds
    them) keep their weights.
    """
    with maintenance_lock(repo):
        view = repo.weights_view()
        stack: list[Node] = []
        for commit_id in commits:
            commit = repo.read_commit(commit_id)
            trees = list(commit.trees.values())
            if view.status(commit_id, trees) == PRUNED:
                stack += [(t, ObjectKind.TREE) for t in trees]
        if not stack:
            return GCResult(0, 0, 0, 0, False)
        keep = reachable_objects(repo)
        garbage: set[str] = set()
        while stack:
            object_id, kind = stack.pop()
            if object_id in keep or object_id in garbage or not repo.objects.has(object_id):
                continue
            garbage.add(object_id)
            with contextlib.suppress(CoralError):  # damaged garbage references nothing
                stack.extend(repo.objects.references(object_id, kind))
        removed, freed = delete_objects(repo.objects, garbage, False, None)
        if removed:
            _forget_fingerprints(repo, keep)
            repo.objects.store.reclaim()
    return GCResult(removed, freed, len(keep), 0, False)


def _forget_fingerprints(repo: Repository, keep: set[str]) -> None:
    """Drop deleted tensors from the fingerprint log (and this process's index of it)."""
    live = [p for p in repo.fingerprints.read_all() if p.tensor_id in keep]
    repo.fingerprints.rewrite(live)
    repo.forget_similarity_index()


def verify_repository(repo: Repository, progress: Progress | None = None) -> VerifyReport:
    """Read every object once, check it against its id, and name what each problem affects.

    ``progress`` is called with (commits checked, None) as the walk goes.
    """
    report = VerifyReport()
    problems: dict[str, str] = {}
    users: dict[str, list[str]] = {}
    commits: dict[str, set[str]] = {}
    checked: set[str] = set()

    def use(object_id: str, user: str, commit: str | None = None) -> None:
        users.setdefault(object_id, []).append(user)
        if commit:
            commits.setdefault(object_id, set()).add(commit)

    def attempt(
        object_id: str, user: str, read: Callable[[], T], commit: str | None = None
    ) -> T | None:
        """Run ``read`` once per object; None (and a problem) when it fails."""
        use(object_id, user, commit)
        checked.add(object_id)
        if object_id in problems:
            return None
        try:
            return read()
        except CoralError as exc:
            problems[object_id] = str(exc)
            return None

    view = repo.weights_view()
    stack = [c for p in (HEADS, REMOTES, RUNS, PINS) for c in repo.refs.list_refs(p).values()]
    for name, tag_id in repo.refs.list_refs(TAGS).items():
        target = attempt(tag_id, f"tag {name}", partial(repo.peel, tag_id))
        if target is not None:
            stack.append(target)
    if repo.refs.head().commit:
        stack.append(repo.refs.head().commit)  # type: ignore[arg-type]
    tensors_seen: dict[str, dict[str, str]] = {}
    seen: set[str] = set()
    while stack:
        commit_id = stack.pop()
        if commit_id in seen:
            continue
        seen.add(commit_id)
        user = f"commit {commit_id}"
        commit = attempt(commit_id, user, partial(repo.read_commit, commit_id), commit_id)
        if commit is None:
            continue
        report.commits_checked += 1
        if progress is not None:
            progress(report.commits_checked, None)
        stack.extend(commit.parent_hashes)
        if view.status(commit_id, list(commit.trees.values())) != KEPT:
            report.commits_without_weights += 1
            continue
        for label, tree_hash in commit.trees.items():
            tree = attempt(tree_hash, user, partial(repo.read_tree, tree_hash), commit_id)
            for name, entry in (tree or {}).items():
                if entry.tensor not in tensors_seen:
                    tensors_seen[entry.tensor] = repo.objects.check_tensor(entry.tensor)
                    checked.add(entry.tensor)
                    with contextlib.suppress(CoralError):
                        checked.update(repo.objects.tensor_descriptor(entry.tensor).chunks)
                for object_id, message in tensors_seen[entry.tensor].items():
                    problems[object_id] = message
                    use(object_id, f"{user}: {label} {name}", commit_id)
    report.tensors_checked = len(tensors_seen)
    for object_id in repo.objects.iter_ids():  # unreferenced objects must be sound too
        if object_id not in checked:
            attempt(object_id, "unreferenced", partial(repo.objects.check_object, object_id))
    report.objects_checked = len(checked)
    report.problems = [
        Problem(
            object_id,
            message,
            tuple(dict.fromkeys(users.get(object_id, ()))),
            tuple(sorted(commits.get(object_id, ()))),
        )
        for object_id, message in problems.items()
    ]
    return report


@dataclass(frozen=True)
class RepackResult:
    """What ``repack`` rewrote and what the objects take before and after."""

    chunks_rewritten: int
    bytes_before: int
    bytes_after: int
    max_chain_length: int


def repack(repo: Repository, progress: Progress | None = None) -> RepackResult:
    """Re-choose the stored form of every reachable chunk along history.

    Commits are visited oldest first; each chunk is re-encoded as the smallest
    of byte planes, raw bytes, and a delta against the same chunk of its
    namesake in the first parent (bounded by ``delta.max_chain_length``).
    The fingerprint log is rebuilt from the tensor descriptors on the way.
    A base is always a chunk rewritten earlier, so no cycle can form; each
    object is replaced atomically with one holding the same bytes, so a crash
    mid-way leaves a sound repository. Writers wait while it runs.
    """
    objects = repo.objects
    with maintenance_lock(repo):
        view = repo.weights_view()
        commits = [
            c
            for c in repo.iter_commits(repo.ref_commits())
            if view.status(c.commit_hash, list(c.trees.values())) == KEPT
        ][::-1]  # oldest first; commits without weights have nothing to repack
        kept = {c.commit_hash for c in commits}
        done: set[str] = set()
        fingerprints: dict[str, Fingerprint] = {}
        totals = RepackTotals()
        for visited, commit in enumerate(commits, 1):
            if progress is not None:
                progress(visited, len(commits))
            parent = commit.parent_hashes[0] if commit.parent_hashes else None
            parent_trees = repo.read_commit(parent).trees if parent in kept else {}
            for label, tree_hash in commit.trees.items():
                parent_tree = repo.read_tree(parent_trees[label]) if label in parent_trees else {}
                for name, entry in repo.read_tree(tree_hash).items():
                    descriptor = objects.tensor_descriptor(entry.tensor)
                    if descriptor.simhash is not None:
                        fingerprints[entry.tensor] = Fingerprint(
                            entry.tensor, descriptor.dtype, descriptor.shape, descriptor.simhash
                        )
                    _repack_tensor(repo, entry.tensor, parent_tree.get(name), done, totals)
        repo.fingerprints.rewrite(list(fingerprints.values()))
        objects.store.reclaim()  # where the store packs: rewritten chunks and small packs,
        objects.store.consolidate()  # into big packs
    return RepackResult(
        totals.rewritten, totals.before, totals.after, objects.delta_config.max_chain_length
    )


@dataclass
class RepackTotals:
    """Running counts of a repack."""

    rewritten: int = 0
    before: int = 0
    after: int = 0


def _repack_tensor(
    repo: Repository,
    tensor_id: str,
    previous: TreeEntry | None,
    done: set[str],
    totals: RepackTotals,
) -> None:
    """Re-encode a tensor's chunks not rewritten yet, against ``previous``'s aligned chunks."""
    objects = repo.objects
    descriptor = objects.tensor_descriptor(tensor_id)
    bases: list[str] | None = None
    if previous is not None and previous.tensor != tensor_id:
        bases = objects.aligned_chunks(
            previous.tensor, descriptor.dtype, descriptor.nbytes, len(descriptor.chunks)
        )
    for index, chunk in enumerate(descriptor.chunks):
        if chunk in done:
            continue
        base = bases[index] if bases and bases[index] in done else None
        raw = objects.read_chunk(chunk)
        blob = objects.encode_chunk(
            memoryview(raw), descriptor.dtype, base if base != chunk else None
        )
        totals.before += objects.stored_size(chunk)
        objects.store.put(object_key(chunk), blob)
        totals.after += len(blob)
        totals.rewritten += 1
        done.add(chunk)
