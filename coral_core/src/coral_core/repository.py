"""``Repository``: git for weights — staging, commits, branches, tags, history.

Every writer (the Python API, the CLI, the training callbacks) goes through
these methods. Objects are written first, without any lock (they are
content-addressed, so concurrent writers agree); then refs, HEAD, the index and
the reflog change under one inter-process lock, so two processes committing at
once lose nothing. Writers also hold the shared side of the gc lock until their
new objects are referenced, so ``gc`` never deletes a commit in the making.
"""

from __future__ import annotations

import contextlib
import fnmatch
import getpass
import heapq
import os
import platform
import re
import threading
import time
from collections.abc import Callable, Collection, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from coral_core import __version__, migrations, remote
from coral_core.availability import (
    KEPT,
    SHALLOW,
    ShallowList,
    WeightsView,
    protected_commits,
)
from coral_core.config import RepoConfig
from coral_core.delta import DeltaConfig
from coral_core.diff import CommitDiff, diff_trees
from coral_core.errors import (
    AmbiguousRefError,
    BranchInUseError,
    ConfigError,
    CoralError,
    CorruptObjectError,
    DirtyIndexError,
    MissingObjectError,
    NothingToCommitError,
    PrunedCommitError,
    RefExistsError,
    RefMovedError,
    RefNotFoundError,
    RepositoryNotFoundError,
    ShallowCommitError,
    TensorMismatchError,
    TensorNotFoundError,
)
from coral_core.fingerprints import Fingerprint, FingerprintLog, worth_fingerprint
from coral_core.hashing import is_id_prefix, is_object_id
from coral_core.index import Staged, StagingIndex
from coral_core.locks import fair_lock
from coral_core.maintenance import (
    GCResult,
    Progress,
    RepackResult,
    VerifyReport,
    collect_garbage,
    free_pruned,
    repack,
    verify_repository,
)
from coral_core.merge import (
    MergeOptions,
    MergeStrategy,
    SoupResult,
    greedy_soup,
    merge_base,
    merge_trees,
    strategy_name,
)
from coral_core.model import (
    LOSSY_KEY,
    Branch,
    Commit,
    CommitMetadata,
    Tag,
    TreeEntry,
    clean_metrics,
    compare_metric,
)
from coral_core.object_format import Codec, ObjectKind
from coral_core.objects import ObjectDatabase
from coral_core.refnames import validate_ref_name
from coral_core.refs import (
    HEADS,
    PINS,
    PRUNED,
    REMOTES,
    RUNS,
    TAGS,
    Head,
    RefDatabase,
    ReflogEntry,
)
from coral_core.remote import collect_remote_garbage, unpin_on_remote
from coral_core.runs import POINTERS, experiment_pointer, nearest_kept
from coral_core.similarity import Deduplicator
from coral_core.store.base import WeightStore
from coral_core.store.local import GC_LOCK
from coral_core.store.packs import PackedStore
from coral_core.tensor import WeightMetadata, WeightTensor
from coral_core.training_state import TrainingState

CORAL_DIR = ".coral"
DEFAULT_BRANCH = "main"
#: Commit metadata key of a merge: strategy, options, base, what was resolved.
MERGE_KEY = "coral.merge"
#: What a commit or ``stage_weights`` takes per name: values, or an entry stored before.
Weight = WeightTensor | np.ndarray | TreeEntry
_ANCESTRY = re.compile(r"^(.*?)((?:[~^]\d*)*)$")


def find_repository(start: str | os.PathLike[str] = ".") -> Path:
    """The folder holding ``.coral``: ``start`` or the nearest folder above it
    (as git finds ``.git``).

    Raises:
        RepositoryNotFoundError: when there is none up to the file system's root.
    """
    begin = Path(start).absolute()
    for folder in (begin, *begin.parents):
        if (folder / CORAL_DIR / "config").is_file():
            return folder
    raise RepositoryNotFoundError(
        f"no Coral repository in {begin} or above it; create one with `coral-ml init`"
    )


def default_author() -> str:
    """``CORAL_AUTHOR``, else the login name."""
    try:
        return os.environ.get("CORAL_AUTHOR") or getpass.getuser()
    except (KeyError, OSError):
        return "unknown"


class Repository:
    """A Coral repository: a ``.coral`` folder beside the user's files.

    Args:
        path: the folder holding ``.coral`` (or the ``.coral`` folder itself).
        init: create the repository if it does not exist yet.
        chunk_size: bytes per chunk for new repositories (default 4 MiB).
        store: keep objects in this store instead of ``.coral/objects``.
        delta_config: how chunks are delta-encoded against the parent commit's
            (lossless strategies only). Saved in the config of a new repository;
            for an existing one it applies to this instance.

    Raises:
        RepositoryNotFoundError: when there is no repository and ``init`` is False.
        UnsupportedFormatError: when a newer Coral wrote the repository.
    """

    def __init__(
        self,
        path: str | os.PathLike[str] = ".",
        init: bool = False,
        *,
        chunk_size: int | None = None,
        store: WeightStore | None = None,
        delta_config: DeltaConfig | None = None,
    ) -> None:
        root = Path(path).absolute()
        if root.name == CORAL_DIR and (root / "config").is_file():
            root = root.parent
        self.path = root
        self.coral_dir = root / CORAL_DIR
        config_path = self.coral_dir / "config"
        if not config_path.is_file():
            if not init:
                raise RepositoryNotFoundError(
                    f"no Coral repository at {root}; create one with "
                    f"Repository({str(root)!r}, init=True) or `coral-ml init`"
                )
            self._create(chunk_size, delta_config)
        self.config = RepoConfig.load(config_path)
        problems = self.config.problems()
        if problems:
            raise ConfigError(f"{config_path} cannot be used: " + "; ".join(problems))
        fsync = bool(self.config.get("core.fsync"))
        self.objects = ObjectDatabase(
            store or PackedStore(self.coral_dir / "objects", fsync=fsync),
            chunk_size=self.config.get("core.chunk_size"),
            compression_level=self.config.get("core.compression_level"),
            delta_config=delta_config or self.config.delta_config(),
        )
        self.refs = RefDatabase(self.coral_dir, fsync=fsync)
        self.index = StagingIndex(self.coral_dir / "index", fsync=fsync)
        self.fingerprints = FingerprintLog(self.coral_dir / "fingerprints")
        self.shallow = ShallowList(self.coral_dir, fsync=fsync)
        self._similar: Deduplicator | None = None
        self._similar_lock = threading.Lock()
        migrations.upgrade(self)

    def _create(self, chunk_size: int | None, delta_config: DeltaConfig | None) -> None:
        self.coral_dir.mkdir(parents=True, exist_ok=True)
        for folder in ("objects", "refs/heads", "refs/tags", "logs", "locks"):
            (self.coral_dir / folder).mkdir(parents=True, exist_ok=True)
        RefDatabase(self.coral_dir).set_head(branch=DEFAULT_BRANCH)
        config = RepoConfig.create(self.coral_dir / "config", chunk_size=chunk_size)
        if delta_config is not None:
            config.set_delta_config(delta_config)  # the config's presence marks the repo done

    def __repr__(self) -> str:
        return f"Repository({str(self.path)!r})"

    # -- locks ---------------------------------------------------------------------

    @contextmanager
    def writing_objects(self) -> Iterator[None]:
        """Hold off ``gc`` while new objects are not yet referenced by a ref or the index."""
        with fair_lock(self.coral_dir / GC_LOCK, shared=True):
            self.objects.store.refresh()  # what a gc rewrote meanwhile: seen now
            yield

    def _author(self, author: str | None) -> str:
        return author or self.config.get("user.name") or default_author()

    # -- reading -------------------------------------------------------------------

    @property
    def head(self) -> Head:
        """Where HEAD points."""
        return self.refs.head()

    @property
    def current_branch(self) -> str | None:
        """The checked-out branch, or None when HEAD is detached."""
        return self.refs.head().branch

    def resolve(self, ref: str | None = None) -> str:
        """Turn a ref into a commit id.

        Accepts ``HEAD``, branch and tag names, ``refs/...`` names, full commit
        ids or unique prefixes (4+ hex digits), each optionally followed by
        ``~N`` or ``^`` (first parent).

        Raises:
            RefNotFoundError: when nothing has that name.
            AmbiguousRefError: when a prefix matches several commits.
        """
        ref = ref or "HEAD"
        match = _ANCESTRY.match(ref)
        base, suffix = (match.group(1), match.group(2)) if match else (ref, "")
        commit = self._resolve_name(base or ref)
        for step in re.findall(r"[~^]\d*", suffix):
            count = int(step[1:]) if len(step) > 1 else 1
            for _ in range(count):
                parents = self.read_commit(commit).parent_hashes
                if not parents:
                    raise RefNotFoundError(f"{ref!r}: commit {commit[:12]} has no parent")
                commit = parents[0]
        return commit

    def _resolve_name(self, name: str) -> str:
        if name == "HEAD":
            head = self.refs.head()
            if head.commit is None:
                raise RefNotFoundError(
                    f"branch {head.branch!r} has no commits yet; stage weights and commit first"
                )
            return head.commit
        for full in (name, HEADS + name, TAGS + name, REMOTES + name, RUNS + name):
            if full.startswith("refs/") and ".." not in full:
                target = self.refs.read(full)
                if target is not None:
                    return self.peel(target)
        experiment, _, pointer = name.rpartition("/")
        if experiment and pointer in POINTERS and ".." not in experiment:
            found = experiment_pointer(self.refs, self.read_commit, experiment, pointer)
            if found is not None:
                return found
        if is_id_prefix(name.lower()):
            return self._commit_by_prefix(name.lower())
        raise RefNotFoundError(
            f"no branch, tag, run pointer or commit named {name!r}; see `coral-ml branch "
            "--list`, `coral-ml tag --list`, `coral-ml experiment list` or `coral-ml log`"
        )

    def peel(self, object_id: str) -> str:
        """Follow an annotated tag (or a tag of tags) to its commit."""
        return self.objects.peel(object_id)

    def _commit_by_prefix(self, prefix: str) -> str:
        if is_object_id(prefix):
            candidates = [prefix] if self.objects.has(prefix) else []
        else:
            candidates = list(self.objects.iter_ids(prefix))
        commits = [c for c in candidates if self.objects.kind_of(c) == ObjectKind.COMMIT]
        if not commits:
            raise RefNotFoundError(f"no commit, branch or tag matches {prefix!r}")
        if len(commits) > 1:
            shown = ", ".join(c[:12] for c in commits)
            raise AmbiguousRefError(
                f"{prefix!r} matches {len(commits)} commits ({shown}); give more digits"
            )
        return commits[0]

    def read_commit(self, commit_hash: str) -> Commit:
        """The commit with this exact id."""
        return Commit.from_document(
            commit_hash, self.objects.read_document(ObjectKind.COMMIT, commit_hash)
        )

    def read_tree(self, tree_hash: str) -> dict[str, TreeEntry]:
        """The entries of a tree object, by tensor name.

        Raises:
            CorruptObjectError: for a tree that is not a mapping of entries.
        """
        document = self.objects.read_document(ObjectKind.TREE, tree_hash)
        entries = document.get("entries")
        if not isinstance(entries, dict):
            raise CorruptObjectError(f"tree {tree_hash} holds no entries")
        return {str(name): TreeEntry.from_dict(e) for name, e in entries.items()}

    def show(self, ref: str | None = None) -> Commit:
        """The commit a ref names (HEAD by default); pruned and shallow commits too."""
        return self.read_commit(self.resolve(ref))

    def branch_tip(self, branch: str) -> str | None:
        """The commit ``branch`` points at; None when there is no such branch (or
        it has no commits yet)."""
        return self.refs.read(HEADS + validate_ref_name(branch))

    # -- whose weights are here ----------------------------------------------------

    def weights_view(self) -> WeightsView:
        """A snapshot of which commits' weights this repository holds."""
        head = self.refs.head().commit
        return WeightsView(
            marked=frozenset(self.refs.names(PRUNED)),
            protected=protected_commits(self.refs, self.peel, [head] if head else []),
            shallow=self.shallow.read(),
            has=self.objects.has,
        )

    def weights_status(self, ref: str | None = None) -> str:
        """``"kept"``, ``"pruned"`` (retention let the weights go) or ``"shallow"``
        (a ``--depth`` clone or fetch did not bring them) for a commit."""
        commit = self.show(ref)
        if commit.commit_hash not in self.shallow.read() and not self._marked(commit):
            return KEPT
        return self.weights_view().status(commit.commit_hash, list(commit.trees.values()))

    def _marked(self, commit: Commit) -> bool:
        return self.refs.read(PRUNED + commit.commit_hash) is not None

    def require_weights(self, commit: Commit) -> None:
        """Return when ``commit``'s weights are here.

        Raises:
            PrunedCommitError: naming the nearest kept checkpoint of its run.
            ShallowCommitError: when a shallow clone did not fetch them.
        """
        status = self.weights_status(commit.commit_hash)
        if status == KEPT:
            return
        if status == SHALLOW:
            raise ShallowCommitError(
                f"commit {commit.short_hash} ({commit.message!r}) has no weights here: this "
                "clone is shallow; bring them with `coral-ml fetch <remote> --deepen N` or "
                "`--unshallow`",
                commit=commit.commit_hash,
            )
        nearest = nearest_kept(self, commit)
        hint = (
            f"; the nearest kept checkpoint of its run is {nearest[:12]}"
            if nearest
            else "; no checkpoint of its run is kept"
        )
        raise PrunedCommitError(
            f"the weights of commit {commit.short_hash} ({commit.message!r}) were pruned by "
            f"retention; its message, metrics and lineage stay{hint}",
            commit=commit.commit_hash,
            nearest=nearest,
        )

    def tree_at(self, ref: str | None = None) -> dict[str, TreeEntry]:
        """Every tensor of a commit (HEAD by default), by name, without loading data.

        Raises:
            PrunedCommitError, ShallowCommitError: when its weights are not here.
        """
        return self._weights_tree(self.show(ref))

    def _weights_tree(self, commit: Commit) -> dict[str, TreeEntry]:
        self.require_weights(commit)
        return self.read_tree(commit.tree_hash)

    def ls_tree(self, ref: str | None = None) -> dict[str, TreeEntry]:
        """Every tensor of a commit, by name, without loading data (see :meth:`tree_at`)."""
        return self.tree_at(ref)

    def get_weight(self, name: str, ref: str | None = None) -> WeightTensor:
        """Load one tensor of a commit (HEAD by default), verified bitwise.

        Raises:
            TensorNotFoundError: when the commit has no tensor of that name.
            PrunedCommitError: when retention pruned the commit's weights.
            CorruptObjectError: when its stored data is damaged.
        """
        commit = self.resolve(ref)
        tree = self._weights_tree(self.read_commit(commit))
        if name not in tree:
            raise TensorNotFoundError(
                f"commit {commit[:12]} has no tensor {name!r} ({len(tree)} tensors; "
                "see `coral-ml ls-tree`)"
            )
        return self._load({name: tree[name]}, commit)[0]

    def _load(self, tree: Mapping[str, TreeEntry], commit: str) -> list[WeightTensor]:
        """Load the tensors of ``tree`` together (chunks decoded in parallel)."""
        try:
            arrays = self.objects.read_tensors([entry.tensor for entry in tree.values()])
        except CoralError as exc:
            if len(tree) > 1:  # find the damaged one, so the error can name it
                for name, entry in tree.items():
                    self._load({name: entry}, commit)
            name = next(iter(tree))
            raise type(exc)(f"tensor {name!r} of commit {commit[:12]}: {exc}") from exc
        weights = []
        for (name, entry), data in zip(tree.items(), arrays, strict=True):
            metadata = WeightMetadata(
                name=name,
                shape=entry.shape,
                dtype=data.dtype,
                layer_type=entry.layer_type,
                model_name=entry.model_name,
                compression_info=entry.compression_info,
            )
            weights.append(WeightTensor(data, metadata))
        return weights

    def iter_weights(self, ref: str | None = None) -> Iterator[WeightTensor]:
        """Yield a commit's tensors one at a time (memory of one tensor)."""
        commit = self.resolve(ref)
        for name, entry in self._weights_tree(self.read_commit(commit)).items():
            yield from self._load({name: entry}, commit)

    def get_all_weights(self, ref: str | None = None) -> dict[str, WeightTensor]:
        """Every tensor of a commit (HEAD by default), by name, decoded in parallel.

        Raises:
            PrunedCommitError: when retention pruned the commit's weights.
        """
        commit = self.resolve(ref)
        tree = self._weights_tree(self.read_commit(commit))
        return {weight.name: weight for weight in self._load(tree, commit)} if tree else {}

    # -- staging and committing ----------------------------------------------------

    def _write_weights(
        self, weights: Mapping[str, Weight], previous: Mapping[str, TreeEntry]
    ) -> dict[str, TreeEntry]:
        """Store tensors, each delta-encoded against its namesake in ``previous``
        or, lacking one, against a similar tensor stored anywhere (fingerprints).
        :class:`TreeEntry` values name tensors stored before and pass through."""
        tensors: dict[str, WeightTensor] = {}
        references: list[str | None] = []
        stored: dict[str, TreeEntry] = {}
        for name, weight in weights.items():
            if not isinstance(name, str) or not name:
                raise TensorMismatchError(f"tensor names must be non-empty strings, got {name!r}")
            if isinstance(weight, TreeEntry):
                if not self.objects.has(weight.tensor):
                    raise MissingObjectError(
                        f"tensor {name!r}: object {weight.tensor[:12]} is not stored (was it "
                        "collected by gc before this commit?); store it again"
                    )
                stored[name] = weight
                continue
            if not isinstance(weight, WeightTensor):
                weight = WeightTensor(np.asarray(weight), name=name)
            tensors[name] = weight
            before, reference = previous.get(name), None
            if (
                before
                and before.shape == weight.shape
                and before.dtype == weight.metadata.dtype_name
            ):
                reference = before.tensor
            elif worth_fingerprint(
                weight.metadata.dtype_name, weight.size
            ) and not self.objects.has(weight.compute_hash()):
                reference = self._similar_stored_tensor(weight)
            references.append(reference)
        results = self.objects.write_tensors(list(zip(tensors.values(), references, strict=True)))
        self.fingerprints.append(
            [
                Fingerprint(result.tensor_id, weight.metadata.dtype_name, weight.shape, hash_)
                for weight, result in zip(tensors.values(), results, strict=True)
                if (hash_ := result.simhash) is not None
            ]
        )
        entries = {}
        for (name, weight), result in zip(tensors.items(), results, strict=True):
            meta = weight.metadata
            info = meta.compression_info
            if result.lossy is not None:
                info = {**(info or {}), LOSSY_KEY: result.lossy}
            entries[name] = TreeEntry(
                tensor=result.tensor_id,
                dtype=meta.dtype_name,
                shape=weight.shape,
                nbytes=weight.nbytes,
                layer_type=meta.layer_type,
                model_name=meta.model_name,
                compression_info=info,
            )
        return {**entries, **stored}

    def store_weights(
        self, weights: Mapping[str, Weight], like: str | None = None
    ) -> dict[str, TreeEntry]:
        """Store tensors without staging or committing them; return their entries.

        For writers that build one commit together (each process of a sharded
        job stores its tensors, one of them commits every entry with
        ``commit(weights=entries)``). Tensors are delta-encoded against their
        namesakes in ``like`` (a ref; default HEAD when it has commits).
        Objects nothing references yet are fair game for ``gc``: commit soon.
        """
        previous: dict[str, TreeEntry] = {}
        if like is not None or self.refs.head().commit is not None:
            previous = self.ls_tree(like)
        with self.writing_objects():
            return self._write_weights(weights, previous)

    def _similar_stored_tensor(self, weight: WeightTensor) -> str | None:
        """A stored tensor of the same dtype and shape, in any branch, similar
        enough (cosine >= ``similarity_threshold``) to be ``weight``'s delta
        reference: the :class:`Deduplicator`'s LSH index over the fingerprint log."""
        with self._similar_lock:
            if self._similar is None:
                config = self.objects.delta_config
                self._similar = Deduplicator(
                    config.similarity_threshold,
                    delta_config=config,
                    loader=lambda tensor_id: WeightTensor(self.objects.read_tensor(tensor_id)),
                )
            for known in self.fingerprints.read_new():
                self._similar.add_fingerprint(
                    known.tensor_id, known.dtype, known.shape, known.simhash
                )
            match = self._similar.find_similar(weight)
        return match[0] if match else None

    def forget_similarity_index(self) -> None:
        """Drop this process's index of similar tensors (``gc`` deleted some);
        the next lookup rebuilds it from the fingerprint log."""
        with self._similar_lock:
            self._similar = None
            self.fingerprints.restart()

    def stage_weights(self, weights: Mapping[str, Weight], replace: bool = False) -> dict[str, str]:
        """Store tensors and stage them for the next commit; return name -> content id.

        Args:
            weights: tensors by name (arrays are wrapped in ``WeightTensor``).
            replace: the next commit holds exactly the staged tensors, instead of
                the parent's tensors updated by them.
        """
        with self.writing_objects():
            entries = self._write_weights(weights, self._tree_of(None, with_staged=True))
            with self.refs.lock():
                staged = self.index.read()
                staged.entries.update(entries)
                staged.removed -= set(entries)
                staged.replace = staged.replace or replace
                self.index.write(staged)
        return {name: entry.tensor for name, entry in entries.items()}

    def remove_weights(self, names: Sequence[str]) -> None:
        """Stage the removal of tensors from the next commit.

        Raises:
            TensorNotFoundError: for a name neither staged nor in HEAD.
        """
        with self.refs.lock():
            staged = self.index.read()
            head = self.refs.head().commit
            current = staged.apply(self.read_tree(self.read_commit(head).tree_hash) if head else {})
            for name in names:
                if name not in current:
                    raise TensorNotFoundError(f"no tensor {name!r} is staged or in HEAD")
                staged.entries.pop(name, None)
                staged.removed.add(name)
            self.index.write(staged)

    def staged(self) -> Staged:
        """What the next commit will change."""
        return self.index.read()

    def reset(self) -> None:
        """Drop everything staged (the stored objects stay until ``gc``)."""
        with self.refs.lock():
            self.index.clear()

    def commit(
        self,
        message: str,
        author: str | None = None,
        metrics: Mapping[str, Any] | None = None,
        metadata: Mapping[str, Any] | None = None,
        *,
        tags: Sequence[str] = (),
        weights: Mapping[str, Weight] | None = None,
        branch: str | None = None,
        allow_empty: bool = False,
        training_state: TrainingState | None = None,
        merge_parents: Sequence[str] = (),
        expected_parent: str | None = None,
        pointers: Mapping[str, str | None] | None = None,
    ) -> Commit:
        """Record a commit and move the branch to it.

        Without ``weights``, commits what is staged. With ``weights``, commits
        exactly those tensors (a full snapshot) without touching the index — the
        way training callbacks and concurrent processes commit.

        Args:
            message: what this version is.
            author: defaults to ``user.name`` from the config, then the login.
            metrics: numbers (or strings) this version scored.
            metadata: any JSON-serializable details.
            tags: labels for :meth:`find_commits` (``["production-ready"]``).
            weights: a full snapshot to commit instead of the index (arrays,
                :class:`WeightTensor` or entries from :meth:`store_weights`).
            branch: commit onto this branch instead of HEAD's (created from
                HEAD if new); HEAD itself does not move.
            allow_empty: commit even when nothing is staged.
            training_state: what the run needs to resume from this commit
                (optimizer, scheduler, RNG state, ...), stored as JSON and
                tensors delta-encoded against the parent's; read it back with
                :meth:`training_state`.
            merge_parents: further parents after the branch's tip (a merge commit).
            expected_parent: refuse to commit unless the branch's tip is this
                commit (compare-and-swap, for writers that computed against it).
            pointers: more refs (full names, such as a run's
                ``refs/runs/<experiment>/<run>/last``) that move to the new
                commit in the same step, each by compare-and-swap from the
                value given (None: the ref is new).

        Raises:
            NothingToCommitError: when nothing is staged and ``allow_empty`` is False.
            RefMovedError: when ``expected_parent`` is no longer the tip, or a
                pointer no longer holds the value given; nothing was committed.
        """
        clean = clean_metrics(metrics)
        if branch is not None:
            validate_ref_name(branch)
        with self.writing_objects():
            snapshot = stored_state = None
            if weights is not None:
                snapshot = self._write_weights(weights, self._tree_of(branch))
            if training_state is not None:
                stored_state = self._write_training_state(training_state, branch)
            with self.refs.lock():
                head = self.refs.head()
                target = branch if branch is not None else head.branch
                if target is None:
                    parent = head.commit
                else:
                    parent = self.refs.read(HEADS + target)
                    if parent is None and branch is not None:
                        parent = head.commit
                if expected_parent is not None and parent != expected_parent:
                    raise RefMovedError(
                        f"{target or 'HEAD'} moved to {str(parent)[:12]} while this commit was "
                        f"prepared against {expected_parent[:12]}; nothing was committed, run again"
                    )
                for ref, expected in (pointers or {}).items():
                    if self.refs.read(ref) != expected:
                        raise RefMovedError(
                            f"{ref} moved while this commit was prepared; nothing was committed"
                        )
                staged = self.index.read() if snapshot is None else Staged(snapshot, replace=True)
                if snapshot is None and staged.empty and not allow_empty:
                    raise NothingToCommitError(
                        "nothing staged to commit; stage weights first (or allow_empty=True)"
                    )
                parent_tree = {}
                if parent is not None and not staged.replace:
                    parent_tree = self._weights_tree(self.read_commit(parent))
                tree = staged.apply(parent_tree)
                details = dict(metadata or {})
                lossy = _lossy_summary(staged.entries)
                if lossy:
                    details[LOSSY_KEY] = lossy
                tree_hash = self.objects.write_document(
                    ObjectKind.TREE, {"entries": {n: e.to_dict() for n, e in tree.items()}}
                )
                training = None
                if stored_state is not None:
                    document, entries = stored_state
                    training = {"state": document, "tree": self._write_tree(entries)}
                commit = Commit(
                    commit_hash="",
                    tree_hash=tree_hash,
                    parent_hashes=(*((parent,) if parent else ()), *merge_parents),
                    training=training,
                    metadata=CommitMetadata(
                        message=message,
                        author=self._author(author),
                        timestamp=time.time(),
                        metrics=clean,
                        tags=tuple(tags),
                        metadata=details,
                        environment=_environment(),
                    ),
                )
                commit_hash = self.objects.write_document(ObjectKind.COMMIT, commit.to_document())
                reflog_message = f"commit: {message.splitlines()[0] if message else ''}"
                self._move_with(
                    pointers or {},
                    commit_hash,
                    commit.author,
                    reflog_message,
                    lambda: self._move(
                        target, parent, commit_hash, commit.author, reflog_message, head
                    ),
                )
                if snapshot is None:
                    self.index.clear()  # an unlink: a full disk cannot fail it
        return self.read_commit(commit_hash)

    def _tip(self, branch: str | None) -> str | None:
        """The commit at the tip of ``branch`` (HEAD when None or new)."""
        tip = self.refs.read(HEADS + branch) if branch else None
        return tip or self.refs.head().commit

    def _tree_of(self, branch: str | None, with_staged: bool = False) -> dict[str, TreeEntry]:
        """Tensors at the tip of ``branch`` (HEAD when None), plus what is staged;
        used to pick delta references, so a stale answer only costs compression."""
        tip = self._tip(branch)
        tree = {}
        if tip and self.weights_status(tip) == KEPT:  # a shallow tip has no references to give
            tree = self.read_tree(self.read_commit(tip).tree_hash)
        if with_staged:
            tree.update(self.index.read().entries)
        return tree

    def _write_training_state(
        self, state: TrainingState, branch: str | None
    ) -> tuple[dict[str, Any], dict[str, TreeEntry]]:
        """Store a state's tensors, delta-encoded against the tip's; its JSON and entries."""
        document, tensors = state.to_storage()
        entries = {}
        if tensors:
            tip = self._tip(branch)
            kept = tip is not None and self.weights_status(tip) == KEPT
            previous = self._training_tree(self.read_commit(tip)) if kept else {}  # type: ignore[arg-type]
            entries = self._write_weights(tensors, previous)
        return document, entries

    def _write_tree(self, entries: Mapping[str, TreeEntry]) -> str | None:
        """A tree object of ``entries`` (sorted by name); None for no entries."""
        if not entries:
            return None
        document = {"entries": {n: e.to_dict() for n, e in sorted(entries.items())}}
        return self.objects.write_document(ObjectKind.TREE, document)

    def _training_tree(self, commit: Commit) -> dict[str, TreeEntry]:
        tree = (commit.training or {}).get("tree")
        return self.read_tree(tree) if tree else {}

    def training_state(self, ref: str | None = None) -> TrainingState | None:
        """The :class:`TrainingState` a commit (HEAD by default) carries, tensors
        restored bit for bit; None when it carries none.

        Raises:
            PrunedCommitError: when retention pruned the commit's weights and state.
        """
        commit = self.show(ref)
        if commit.training is None:
            return None
        self.require_weights(commit)
        tree = self._training_tree(commit)
        tensors = {w.name: w.data for w in self._load(tree, commit.commit_hash)} if tree else {}
        return TrainingState.from_storage(commit.training.get("state") or {}, tensors)

    def _move(
        self, branch: str | None, old: str | None, new: str, author: str, message: str, head: Head
    ) -> None:
        """Move a branch (or a detached HEAD) and log it; HEAD's log too when it
        follows. The one write that can fail comes first: once it is done the
        move has happened, and nothing after it raises."""
        if branch is None:
            self.refs.set_head(commit=new)
        else:
            self.refs.write(HEADS + branch, new)
            self.refs.log_move(HEADS + branch, old, new, author, message)
        if branch is None or head.branch == branch:
            self.refs.log_move("HEAD", old, new, author, message)

    def _move_with(
        self,
        pointers: Mapping[str, str | None],
        new: str,
        author: str,
        message: str,
        move_branch: Callable[[], None],
    ) -> None:
        """Move the pointers that go with a commit, then its branch; if a write
        fails (a full disk), the pointers already moved go back and the error is
        raised: the commit did not happen."""
        moved: list[tuple[str, str | None]] = []
        try:
            for ref, expected in pointers.items():
                self.refs.write(ref, new)
                moved.append((ref, expected))
            move_branch()
        except BaseException:
            for ref, expected in moved:
                with contextlib.suppress(OSError):
                    self.refs.write(ref, expected) if expected else self.refs.delete(ref)
            raise
        for ref, expected in moved:
            self.refs.log_move(ref, expected, new, author, message)

    # -- branches ------------------------------------------------------------------

    def create_branch(self, name: str, start: str | None = None) -> Branch:
        """Create a branch at ``start`` (HEAD by default); HEAD does not move.

        Raises:
            RefExistsError: when the branch exists.
            InvalidRefNameError: for a name such as ``../x``.
        """
        validate_ref_name(name)
        commit = self.resolve(start)
        with self.refs.lock():
            if self.refs.read(HEADS + name) is not None:
                raise RefExistsError(f"branch {name!r} already exists")
            self.refs.write(HEADS + name, commit)
            self.refs.log_move(
                HEADS + name,
                None,
                commit,
                self._author(None),
                f"branch: created from {start or 'HEAD'}",
            )
        return Branch(name, commit, current=False)

    def delete_branch(self, name: str) -> None:
        """Delete a branch; its commits stay until ``gc`` finds nothing else uses them.

        Raises:
            RefNotFoundError: when there is no such branch.
            BranchInUseError: when HEAD is on it.
        """
        with self.refs.lock():
            commit = self.refs.read(HEADS + validate_ref_name(name))
            if commit is None:
                raise RefNotFoundError(f"no branch named {name!r}")
            if self.refs.head().branch == name:
                raise BranchInUseError(
                    f"branch {name!r} is checked out; check out another branch first"
                )
            self.refs.delete(HEADS + name)
            self.refs.log_move(HEADS + name, commit, None, self._author(None), "branch: deleted")

    def list_branches(self) -> list[Branch]:
        """Every branch, sorted by name; the current one has ``current=True``."""
        head = self.refs.head()
        branches = [
            Branch(name, commit, name == head.branch)
            for name, commit in self.refs.list_refs(HEADS).items()
        ]
        if head.branch and head.commit is None:  # unborn current branch
            branches.append(Branch(head.branch, None, True))
        return sorted(branches, key=lambda b: b.name)

    # -- keeping and letting go of weights -------------------------------------------

    def pin(self, ref: str) -> str:
        """Keep a commit's weights whatever retention decides (``coral-ml pin``).

        Pins push and fetch with the commits they hold. Returns the commit's id.

        Raises:
            PrunedCommitError: when its weights are gone already.
        """
        commit = self.show(ref)
        with self.refs.lock():
            self.require_weights(commit)
            self.refs.write(PINS + commit.commit_hash, commit.commit_hash)
        return commit.commit_hash

    def unpin(self, ref: str, remote: str | None = None) -> str:
        """Let retention decide about a pinned commit again; returns its id.

        Args:
            remote: unpin it on that remote too (a push never removes a pin
                there, and a fetch brings the remote's pins here).

        Raises:
            RefNotFoundError: when the commit is pinned neither here nor there.
        """
        commit = self.resolve(ref)
        unpinned = remote is not None and unpin_on_remote(self, remote, commit)
        with self.refs.lock():
            if self.refs.read(PINS + commit) is not None:
                self.refs.delete(PINS + commit)
            elif not unpinned:
                raise RefNotFoundError(f"commit {commit[:12]} ({ref}) is not pinned")
        return commit

    def pins(self) -> list[str]:
        """The pinned commits."""
        return sorted(self.refs.list_refs(PINS).values())

    def prune(self, refs: Sequence[str], free: bool = True) -> GCResult:
        """Let go of the weights of these commits; the commits stay in history.

        Each gets a prune mark (``refs/pruned/<id>``, which push and fetch
        carry): its message, metrics, parents and run stay in ``log``; reading
        its weights raises :class:`PrunedCommitError`. With ``free``, the space
        only they used is freed at once. A commit a branch, tag, pin or run
        pointer holds keeps its weights until that ref lets go of it.
        """
        commits = list(dict.fromkeys(self.resolve(ref) for ref in refs))
        with self.refs.lock():
            for commit in commits:
                if self.refs.read(PRUNED + commit) is None:
                    self.refs.write(PRUNED + commit, commit)
        if not free:
            return GCResult(0, 0, 0, 0, dry_run=False)
        return free_pruned(self, commits)

    def drop_commits(
        self, branch: str, commits: Collection[str], *, force: bool = False
    ) -> dict[str, str | None]:
        """Rewrite ``branch``'s first-parent history without ``commits``: an
        explicit rewrite of history nobody else has (retention never does
        this; it prunes weights, see :meth:`prune`).

        Each later commit is written again with the same tree, metadata and
        training state, its parent replaced; tags, pins, prune marks and run
        pointers on rewritten commits move with them, and tags and pins on
        dropped ones are deleted. Objects nothing else
        references are left for ``gc`` to free. Other branches are not moved,
        so history they share stays alive through them (as in git).

        Args:
            force: rewrite even commits a remote-tracking branch has (they
                were pushed or fetched: others may have them too).

        Returns:
            ``{old id: new id}`` for every commit rewritten, ``None`` for dropped ones.

        Raises:
            RefNotFoundError: when the branch does not exist.
            CoralError: when a commit is not in its first-parent history, or
                every commit of the branch would go, or (without ``force``)
                a commit to rewrite is on a remote.
        """
        drop = set(commits)
        with self.writing_objects(), self.refs.lock():
            tip = self.refs.read(HEADS + validate_ref_name(branch))
            if tip is None:
                raise RefNotFoundError(f"no branch named {branch!r}")
            chain: list[Commit] = []
            current: str | None = tip
            while drop - {c.commit_hash for c in chain}:
                if current is None:
                    missing = sorted(drop - {c.commit_hash for c in chain})
                    raise CoralError(
                        f"{', '.join(c[:12] for c in missing)} not in the first-parent "
                        f"history of branch {branch!r}; nothing was changed"
                    )
                chain.append(self.read_commit(current))
                current = chain[-1].parent_hashes[0] if chain[-1].parent_hashes else None
            if not force:
                self._refuse_rewriting_shared(branch, [c.commit_hash for c in chain])
            mapping: dict[str, str | None] = {}
            for commit in reversed(chain):
                parents = [mapping.get(p, p) for p in commit.parent_hashes]
                if commit.commit_hash in drop:
                    mapping[commit.commit_hash] = parents[0] if parents else None
                    continue
                kept = tuple(p for p in parents if p is not None)
                rewritten = commit
                if kept != commit.parent_hashes:
                    document = replace(commit, parent_hashes=kept).to_document()
                    rewritten_id = self.objects.write_document(ObjectKind.COMMIT, document)
                    rewritten = replace(commit, commit_hash=rewritten_id)
                mapping[commit.commit_hash] = rewritten.commit_hash
            new_tip = mapping[tip]
            if new_tip is None:
                raise CoralError(f"dropping those commits would leave branch {branch!r} empty")
            author = self._author(None)
            message = f"rewrite: dropped {len(drop)} commit(s)"
            self._move(branch, tip, new_tip, author, message, self.refs.head())
            self._retarget_tags(mapping, drop)
            self._retarget_marks(mapping, drop)
        return mapping

    def _refuse_rewriting_shared(self, branch: str, commits: Sequence[str]) -> None:
        tracked = self.refs.list_refs(REMOTES)
        shared = {c.commit_hash for c in self.iter_commits(list(dict.fromkeys(tracked.values())))}
        pushed = [c for c in commits if c in shared]
        if pushed:
            raise CoralError(
                f"rewriting branch {branch!r} would change {len(pushed)} commit(s) a remote has "
                f"(e.g. {pushed[0][:12]}); shared history is not rewritten: prune weights "
                "instead (Repository.prune), or force=True if nobody else has them"
            )

    def _retarget_tags(self, mapping: Mapping[str, str | None], dropped: set[str]) -> None:
        """Move tags on rewritten commits to their new ids; delete tags on dropped ones."""
        for name, object_id in self.refs.list_refs(TAGS).items():
            commit = self.peel(object_id)
            if commit not in mapping or mapping[commit] == commit:
                continue
            if commit in dropped:
                self.refs.delete(TAGS + name)
                continue
            target = str(mapping[commit])
            if object_id != commit:  # annotated: a new tag object naming the new commit
                document = self.objects.read_document(ObjectKind.TAG, object_id)
                target = self.objects.write_document(ObjectKind.TAG, {**document, "object": target})
            self.refs.write(TAGS + name, target)

    def _retarget_marks(self, mapping: Mapping[str, str | None], dropped: set[str]) -> None:
        """Pins, prune marks and run pointers follow rewritten commits to their
        new ids; on dropped commits, pins and pointers go (a pointer to the
        commit that took the dropped one's place)."""
        for prefix in (PINS, PRUNED):
            for commit in self.refs.names(prefix):
                new = mapping.get(commit, commit)
                if new == commit:
                    continue
                self.refs.delete(prefix + commit)
                if commit not in dropped and new is not None:
                    self.refs.write(prefix + new, new)
        author = self._author(None)
        for name, commit in self.refs.list_refs(RUNS).items():
            new = mapping.get(commit, commit)
            if new == commit:
                continue
            if new is None:
                self.refs.delete(RUNS + name)
            else:
                self.refs.write(RUNS + name, new)
            self.refs.log_move(RUNS + name, commit, new, author, "rewrite: dropped commits")

    def checkout(self, ref: str, force: bool = False) -> Commit:
        """Point HEAD at a branch, or detach it at a tag or commit.

        Raises:
            DirtyIndexError: when changes are staged (``force=True`` drops them).
            RefNotFoundError: when ``ref`` names nothing.
            PrunedCommitError: when the commit's weights were pruned (or not fetched).
        """
        commit = self.resolve(ref)
        self.require_weights(self.read_commit(commit))
        is_branch = self.refs.read(HEADS + ref) is not None if ref != "HEAD" else False
        with self.refs.lock():
            if not self.index.read().empty:
                if not force:
                    raise DirtyIndexError(
                        f"changes are staged; commit them, reset, or checkout {ref!r} with force"
                    )
                self.index.clear()
            head = self.refs.head()
            if is_branch:
                self.refs.set_head(branch=ref)
            else:
                self.refs.set_head(commit=commit)
            source = head.branch or (head.commit or "")[:12]
            self.refs.log_move(
                "HEAD",
                head.commit,
                commit,
                self._author(None),
                f"checkout: moving from {source} to {ref}",
            )
        return self.read_commit(commit)

    # -- merging -------------------------------------------------------------------

    def merge_base(self, ref_a: str, ref_b: str) -> str | None:
        """The best common ancestor of two commits (None when they share no history)."""
        return merge_base(self._parents, self.resolve(ref_a), self.resolve(ref_b))

    def _parents(self, commit: str) -> tuple[str, ...]:
        return self.read_commit(commit).parent_hashes

    def merge(
        self,
        refs: str | Sequence[str],
        strategy: MergeStrategy | str = MergeStrategy.FAIL,
        message: str | None = None,
        *,
        author: str | None = None,
        no_ff: bool = False,
        **options: Any,
    ) -> Commit:
        """Merge one branch (or several: a "model soup") into the current branch.

        A three-way merge per tensor against the merge base: changes of one
        side are taken; tensors changed on several sides are resolved by
        ``strategy`` (see :mod:`coral_core.merge`). When the current branch
        is an ancestor of the other, the branch fast-forwards (unless ``no_ff``).
        The merge commit has every merged commit as a parent and records the
        strategy, its options and what it resolved under ``coral.merge``.

        Args:
            refs: the branch, tag or commit to merge, or several.
            strategy: a :class:`MergeStrategy` or the name of a plugin.
            message: the commit message (default names what was merged).
            no_ff: make a merge commit even when a fast-forward would do.
            **options: :class:`MergeOptions` fields: ``alpha``, ``weights``
                (one per version, the current branch first), ``scaling``,
                ``density``, ``drop_rate``, ``seed``, ``t``.

        Returns:
            the merge commit (or, for a fast-forward or nothing to merge, the
            commit the branch now points at).

        Raises:
            MergeConflictError: listing every conflict the strategy cannot
                resolve (all of them with ``FAIL``); the repository is unchanged.
            DirtyIndexError: when changes are staged.
            CoralError: when HEAD is detached.
        """
        names = [refs] if isinstance(refs, str) else list(refs)
        if "weights" in options and options["weights"] is not None:
            options["weights"] = tuple(float(w) for w in options["weights"])
        settings = MergeOptions(**options)
        chosen = strategy_name(strategy)
        branch = self.current_branch
        if branch is None:
            raise CoralError("HEAD is detached; check out the branch to merge into first")
        if not self.index.read().empty:
            raise DirtyIndexError("changes are staged; commit them or reset before merging")
        ours = self.resolve("HEAD")
        theirs = [self.resolve(name) for name in names]
        base: str | None = ours
        for other in theirs:
            base = merge_base(self._parents, base, other) if base is not None else None
        others = [t for t in dict.fromkeys(theirs) if t != ours and t != base]
        if not others:  # everything is already in the current branch
            return self.read_commit(ours)
        if len(others) == 1 and base == ours and not no_ff:
            return self._fast_forward(branch, ours, others[0], names[0])
        trees = [self._weights_tree(self.read_commit(c)) for c in (ours, *others)]
        base_tree = self._weights_tree(self.read_commit(base)) if base else {}
        outcome = merge_trees(trees, base_tree, chosen, settings, self.objects.read_tensor)
        record = {
            "strategy": chosen,
            "options": settings.to_dict(),
            "base": base,
            "merged": others,
            "resolved": outcome.resolved,
            "kept_ours": outcome.kept_ours,
        }
        return self.commit(
            message or f"Merge {', '.join(names)} into {branch} ({chosen})",
            author=author,
            metadata={MERGE_KEY: record},
            weights=outcome.entries,
            branch=branch,
            merge_parents=others,
            expected_parent=ours,
        )

    def _fast_forward(self, branch: str, old: str, new: str, name: str) -> Commit:
        with self.refs.lock():
            if self.refs.read(HEADS + branch) != old:
                raise RefMovedError(f"branch {branch!r} moved while merging; nothing was changed")
            message = f"merge {name}: fast-forward"
            self._move(branch, old, new, self._author(None), message, self.refs.head())
        return self.read_commit(new)

    def soup(
        self,
        refs: Sequence[str],
        evaluate: Callable[[dict[str, np.ndarray]], float],
        message: str | None = None,
    ) -> tuple[Commit, SoupResult]:
        """Greedy model soup of ``refs`` committed onto the current branch.

        Each model is scored by ``evaluate`` (higher is better); models join the
        uniform average, best first, while it does not score worse. The commit
        has the current tip and the ingredients as parents and records the scores.
        Every model is held in memory at once.
        """
        branch = self.current_branch
        if branch is None:
            raise CoralError("HEAD is detached; check out the branch to commit the soup onto")
        commits = list(dict.fromkeys(self.resolve(r) for r in refs))
        models = {c: {w.name: w.data for w in self._load(self.ls_tree(c), c)} for c in commits}
        result = greedy_soup(models, evaluate)
        tip = self.refs.read(HEADS + branch)
        record = {
            "strategy": "greedy_soup",
            "ingredients": result.ingredients,
            "score": result.score,
            "scores": result.scores,
        }
        made = self.commit(
            message or f"Greedy soup of {len(result.ingredients)} of {len(commits)} models",
            metrics={"soup_score": result.score},
            metadata={MERGE_KEY: record},
            weights=result.weights,
            branch=branch,
            merge_parents=[c for c in result.ingredients if c != tip],
            expected_parent=tip,
        )
        return made, result

    # -- remotes -------------------------------------------------------------------

    def add_remote(self, name: str, url: str) -> None:
        """Remember a remote: ``s3://bucket/prefix``, ``file://path`` or a folder."""
        remote.add_remote(self, name, url)

    def remove_remote(self, name: str) -> None:
        """Forget a remote and its remote-tracking branches."""
        remote.remove_remote(self, name)

    def list_remotes(self) -> dict[str, str]:
        """Remote name -> URL."""
        return remote.list_remotes(self)

    def push(
        self,
        remote_name: str = "origin",
        branches: Sequence[str] | None = None,
        *,
        tags: bool = False,
        force: bool = False,
        force_with_lease: bool = False,
        delete: Sequence[str] = (),
        refs: Sequence[str] = (),
        progress: remote.Progress | None = None,
    ) -> remote.TransferResult:
        """Send branches (HEAD's by default), their runs' pointers, pins and prune
        marks, and tags; see :func:`coral_core.remote.push`."""
        return remote.push(
            self,
            remote_name,
            branches,
            tags=tags,
            force=force,
            force_with_lease=force_with_lease,
            delete=delete,
            refs=refs,
            progress=progress,
        )

    def fetch(
        self,
        remote_name: str = "origin",
        ref: str | None = None,
        *,
        depth: int | None = None,
        deepen: int | None = None,
        unshallow: bool = False,
        progress: remote.Progress | None = None,
    ) -> remote.TransferResult:
        """Bring a remote's branches (as ``<remote>/<branch>``), tags, run pointers,
        pins and prune marks here, verified; ``depth``/``deepen``/``unshallow``
        as in :func:`coral_core.remote.fetch`."""
        return remote.fetch(
            self,
            remote_name,
            ref,
            depth=depth,
            deepen=deepen,
            unshallow=unshallow,
            progress=progress,
        )

    def pull(
        self,
        remote_name: str = "origin",
        branch: str | None = None,
        strategy: MergeStrategy | str = MergeStrategy.FAIL,
        progress: remote.Progress | None = None,
    ) -> remote.TransferResult:
        """Fetch, then merge the remote's branch into the current one."""
        name = strategy.value if isinstance(strategy, MergeStrategy) else strategy
        return remote.pull(self, remote_name, branch, name, progress)

    def sync(
        self, remote_name: str = "origin", progress: remote.Progress | None = None
    ) -> remote.TransferResult:
        """Fetch, then push every branch the remote is behind on, and the tags."""
        return remote.sync(self, remote_name, progress)

    def sync_status(self, remote_name: str = "origin") -> list[remote.BranchSync]:
        """Per branch: commits only here (ahead) and only on the remote (behind)."""
        return remote.sync_status(self, remote_name)

    # -- tags ----------------------------------------------------------------------

    def tag_version(
        self,
        name: str,
        description: str | None = None,
        metrics: Mapping[str, Any] | None = None,
        ref: str | None = None,
        force: bool = False,
    ) -> Tag:
        """Tag a commit (HEAD by default) with a description and metrics.

        Raises:
            RefExistsError: when the tag exists and ``force`` is False.
        """
        validate_ref_name(name, "tag")
        commit = self.resolve(ref)
        tag = Tag(
            name, commit, description, clean_metrics(metrics), self._author(None), time.time()
        )
        document = {
            "object": commit,
            "name": name,
            "description": description,
            "metrics": tag.metrics,
            "tagger": tag.tagger,
            "timestamp": tag.timestamp,
        }
        with self.writing_objects():
            tag_id = self.objects.write_document(ObjectKind.TAG, document)
            with self.refs.lock():
                if self.refs.read(TAGS + name) is not None and not force:
                    raise RefExistsError(f"tag {name!r} already exists (use force to move it)")
                self.refs.write(TAGS + name, tag_id)
        return tag

    def delete_tag(self, name: str) -> None:
        """Delete a tag.

        Raises:
            RefNotFoundError: when there is no such tag.
        """
        with self.refs.lock():
            if self.refs.read(TAGS + validate_ref_name(name, "tag")) is None:
                raise RefNotFoundError(f"no tag named {name!r}")
            self.refs.delete(TAGS + name)

    def list_tags(self, pattern: str | None = None) -> list[Tag]:
        """Tags sorted by name, optionally filtered by a glob (``"production_*"``)."""
        tags = []
        for name, object_id in self.refs.list_refs(TAGS).items():
            if pattern and not fnmatch.fnmatchcase(name, pattern):
                continue
            if self.objects.kind_of(object_id) != ObjectKind.TAG:
                tags.append(Tag(name, object_id))
                continue
            doc = self.objects.read_document(ObjectKind.TAG, object_id)
            tags.append(
                Tag(
                    name,
                    self.peel(object_id),
                    doc.get("description"),
                    dict(doc.get("metrics") or {}),
                    doc.get("tagger"),
                    doc.get("timestamp"),
                )
            )
        return tags

    # -- history -------------------------------------------------------------------

    def iter_commits(self, starts: Sequence[str]) -> Iterator[Commit]:
        """Commits reachable from ``starts`` (commit ids), newest first, each once."""
        seen: set[str] = set()
        queue: list[tuple[float, str, Commit]] = []
        for start in starts:
            if start not in seen:
                seen.add(start)
                commit = self.read_commit(start)
                heapq.heappush(queue, (-commit.timestamp, start, commit))
        while queue:
            _, _, commit = heapq.heappop(queue)
            yield commit
            for parent in commit.parent_hashes:
                if parent not in seen:
                    seen.add(parent)
                    parent_commit = self.read_commit(parent)
                    heapq.heappush(queue, (-parent_commit.timestamp, parent, parent_commit))

    def log(
        self, ref: str | None = None, max_count: int | None = None, all_refs: bool = False
    ) -> list[Commit]:
        """History from ``ref`` (HEAD by default; every branch and tag with
        ``all_refs``), newest first. An empty branch has an empty log."""
        if all_refs:
            starts = self.ref_commits()
        else:
            if ref is None and self.refs.head().commit is None:
                return []
            starts = [self.resolve(ref)]
        commits: list[Commit] = []
        for commit in self.iter_commits(starts):
            if max_count is not None and len(commits) >= max_count:
                break
            commits.append(commit)
        return commits

    def ref_commits(self) -> list[str]:
        """Commits every branch (local and remote-tracking), run pointer, pin, tag
        and HEAD point at."""
        prefixes = (HEADS, REMOTES, RUNS, PINS)
        starts = [c for prefix in prefixes for c in self.refs.list_refs(prefix).values()]
        starts += [self.peel(t) for t in self.refs.list_refs(TAGS).values()]
        if self.refs.head().commit:
            starts.append(self.refs.head().commit)  # type: ignore[arg-type]
        return list(dict.fromkeys(starts))

    def get_all_referenced_weights(self) -> set[str]:
        """The id of every tensor that a commit whose weights are here names
        (its model and its training state); the book's name. Ids are the
        tensors' content hashes, the keys ``HDF5Store.store`` gives them too."""
        view = self.weights_view()
        found: set[str] = set()
        for commit in self.iter_commits(self.ref_commits()):
            trees = list(commit.trees.values())
            if view.status(commit.commit_hash, trees) == KEPT:
                for tree in trees:
                    found.update(entry.tensor for entry in self.read_tree(tree).values())
        return found

    def get_all_referenced_deltas(self) -> set[str]:
        """Of :meth:`get_all_referenced_weights`, the tensors stored here with a
        chunk as a delta against another (the book's name; a delta stored with
        ``HDF5Store.store_delta(delta, tensor_id)`` goes by the same id)."""
        return {
            tensor
            for tensor in self.get_all_referenced_weights()
            if any(
                self.objects.chunk_params(chunk)[0] == Codec.DELTA
                for chunk in self.objects.tensor_descriptor(tensor).chunks
            )
        }

    def find_commits(
        self,
        metric_filter: Mapping[str, tuple[str, Any]] | None = None,
        tag_filter: Sequence[str] | None = None,
        ref: str | None = None,
    ) -> list[Commit]:
        """Commits whose metrics pass every filter and that carry every tag.

        Args:
            metric_filter: ``{"val_accuracy": (">", 0.92)}``; ops > >= < <= == !=.
            tag_filter: labels given at commit time or names of tags on the commit.
            ref: search history from this ref only (default: every branch and tag).
        """
        tags_by_commit: dict[str, set[str]] = {}
        for tag in self.list_tags():
            tags_by_commit.setdefault(tag.commit, set()).add(tag.name)
        starts = [self.resolve(ref)] if ref else self.ref_commits()
        found = []
        for commit in self.iter_commits(starts):
            labels = set(commit.metadata.tags) | tags_by_commit.get(commit.commit_hash, set())
            if tag_filter and not set(tag_filter) <= labels:
                continue
            if all(
                key in commit.metrics and compare_metric(commit.metrics[key], op, target)
                for key, (op, target) in (metric_filter or {}).items()
            ):
                found.append(commit)
        return found

    def reflog(self, ref: str = "HEAD") -> list[ReflogEntry]:
        """Every move of ``ref`` (``HEAD`` or a branch name), newest first."""
        full = ref if ref == "HEAD" or ref.startswith("refs/") else HEADS + validate_ref_name(ref)
        return self.refs.reflog(full)

    def diff(self, ref_a: str, ref_b: str | None = None, stats: bool = True) -> CommitDiff:
        """Per-tensor status (added, removed, modified, unchanged) from ``ref_a`` to
        ``ref_b`` (HEAD by default), with change statistics for modified tensors,
        and both commits' metrics. A commit whose weights are gone (pruned or
        shallow) is named in ``weights_gone``, and only metrics are compared."""
        a, b = self.show(ref_a), self.show(ref_b)
        metrics = {
            m: (a.metrics.get(m), b.metrics.get(m)) for m in sorted({*a.metrics, *b.metrics})
        }
        gone = tuple(
            dict.fromkeys(
                c.commit_hash for c in (a, b) if self.weights_status(c.commit_hash) != KEPT
            )
        )
        tensors = {}
        if not gone:
            tensors = diff_trees(
                self.read_tree(a.tree_hash),
                self.read_tree(b.tree_hash),
                self.objects.read_tensor,
                with_stats=stats,
            )
        return CommitDiff(a.commit_hash, b.commit_hash, tensors, metrics, gone)

    # -- maintenance ---------------------------------------------------------------

    def gc(
        self,
        dry_run: bool = False,
        progress: Progress | None = None,
        *,
        remote: str | None = None,
    ) -> GCResult:
        """Delete objects no branch, tag, run pointer, pin, HEAD or staged entry
        references, and the weights of pruned commits; frees disk.

        The reflog does not keep commits alive: after a branch is deleted and
        ``gc`` runs, its unique commits are gone. With ``remote``, collect on
        that remote instead (safe while others push: see
        :func:`coral_core.remote.collect_remote_garbage`).
        """
        if remote is not None:
            return collect_remote_garbage(self, remote, dry_run=dry_run, progress=progress)
        return collect_garbage(self, dry_run=dry_run, progress=progress)

    def repack(
        self, max_chain_length: int | None = None, progress: Progress | None = None
    ) -> RepackResult:
        """Re-choose every chunk's delta base along history (see ``maintenance.repack``).

        Args:
            max_chain_length: a new bound on delta chains, saved in the config.

        Raises:
            ConfigError: for a bound outside 1 to 64 (the longest chain a read decodes).
        """
        if max_chain_length is not None:
            try:
                config = replace(self.objects.delta_config, max_chain_length=max_chain_length)
            except (ValueError, TypeError) as exc:
                raise ConfigError(str(exc)) from None
            self.config.set_delta_config(config)
            self.objects.delta_config = config
        return repack(self, progress)

    def verify(self, progress: Progress | None = None) -> VerifyReport:
        """Check every object against its id (fsck); the report names what is affected."""
        return verify_repository(self, progress)


def _lossy_summary(entries: Mapping[str, TreeEntry]) -> dict[str, Any] | None:
    """What a commit records when a lossy codec stored some of its new tensors:
    the codec, the largest error of any element, and which tensors."""
    lossy = {
        name: entry.compression_info[LOSSY_KEY]
        for name, entry in entries.items()
        if entry.compression_info and LOSSY_KEY in entry.compression_info
    }
    if not lossy:
        return None
    return {
        "type": sorted({info["type"] for info in lossy.values()}),
        "max_abs_error": max(float(info["max_abs_error"]) for info in lossy.values()),
        "tensors": sorted(lossy),
    }


def _environment() -> dict[str, str]:
    return {
        "coral_core": __version__,
        "python": platform.python_version(),
        "numpy": np.__version__,
        "platform": platform.platform(terse=True),
    }
