"""``torch.distributed.checkpoint`` (DCP) into and out of a Coral repository.

``dcp.save(state_dict, storage_writer=CoralWriter(repo, message="step 100"))``
makes one Coral commit of every rank's tensors: each rank stores its own
tensors and shards (content-addressed, delta-encoded against their namesakes in
the branch's last commit, so an unchanged shard costs nothing), and the
coordinator commits all of them together. A whole tensor is named by its fully
qualified name, a shard by that name and its offsets (``layer.weight@512.0``),
so the same shard of the next checkpoint finds its namesake. Values that are
not tensors (DCP serializes them with ``torch.save``) are stored as uint8
tensors. DCP's global metadata rides along in the commit's metadata as JSON
(under :data:`METADATA_KEY`), never as a pickle.

``dcp.load(state_dict, storage_reader=CoralReader(repo, ref))`` reads that
commit back, into any sharding: each rank loads the stored tensors its plan
needs and copies out the regions it asks for.
"""

from __future__ import annotations

import dataclasses
import io
import os
import uuid
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch.distributed.checkpoint.metadata import (
    BytesStorageMetadata,
    ChunkStorageMetadata,
    Metadata,
    MetadataIndex,
    StorageMeta,
    TensorProperties,
    TensorStorageMetadata,
)
from torch.distributed.checkpoint.planner import (
    LoadItemType,
    LoadPlan,
    LoadPlanner,
    ReadItem,
    SavePlan,
    SavePlanner,
    WriteItem,
    WriteItemType,
)
from torch.distributed.checkpoint.storage import StorageReader, StorageWriter, WriteResult
from torch.futures import Future

from coral_core import (
    Commit,
    CoralError,
    Repository,
    TensorMismatchError,
    TensorNotFoundError,
    TreeEntry,
    UnsupportedFormatError,
    WeightTensor,
)
from coral_core.model import clean_metrics
from coral_core.pusher import pusher_for
from coral_core.refnames import validate_ref_name
from coral_torch.tensors import TORCH_DTYPES, coral_dtype, to_array, to_tensor

#: Commit metadata key holding DCP's global metadata as JSON.
METADATA_KEY = "coral_torch.dcp"
_FORMAT = 1  # version of the JSON layout under METADATA_KEY


class DCPCheckpointError(CoralError, ValueError):
    """A commit that holds no DCP checkpoint, or a DCP save Coral cannot record."""


def _is_repository(path: str | os.PathLike[str]) -> bool:
    root = Path(path)
    return (root / ".coral" / "config").is_file() or (
        root.name == ".coral" and (root / "config").is_file()
    )


def _repository(repo: Repository | str | os.PathLike[str]) -> Repository:
    return repo if isinstance(repo, Repository) else Repository(repo)


# -- DCP metadata <-> JSON -----------------------------------------------------------


def _torch_constant(name: str, kind: type) -> Any:
    """``torch.strided`` from ``"torch.strided"``, refusing anything but a ``kind``."""
    value = getattr(torch, name.removeprefix("torch."), None)
    if not isinstance(value, kind):
        raise DCPCheckpointError(f"DCP metadata names {name!r}, which is no torch {kind.__name__}")
    return value


def _properties_to_json(properties: TensorProperties) -> dict[str, Any]:
    return {
        "dtype": coral_dtype(properties.dtype),
        "layout": str(properties.layout),
        "requires_grad": properties.requires_grad,
        "memory_format": str(properties.memory_format),
        "pin_memory": properties.pin_memory,
    }


def _properties_from_json(data: Mapping[str, Any]) -> TensorProperties:
    return TensorProperties(
        dtype=TORCH_DTYPES[data["dtype"]],
        layout=_torch_constant(data["layout"], torch.layout),
        requires_grad=data["requires_grad"],
        memory_format=_torch_constant(data["memory_format"], torch.memory_format),
        pin_memory=data["pin_memory"],
    )


def _storage_to_json(item: TensorStorageMetadata | BytesStorageMetadata) -> dict[str, Any]:
    if isinstance(item, BytesStorageMetadata):
        return {"type": "bytes"}
    return {
        "type": "tensor",
        "properties": _properties_to_json(item.properties),
        "size": list(item.size),
        "chunks": [{"offsets": list(c.offsets), "sizes": list(c.sizes)} for c in item.chunks],
    }


def _storage_from_json(data: Mapping[str, Any]) -> TensorStorageMetadata | BytesStorageMetadata:
    if data["type"] == "bytes":
        return BytesStorageMetadata()
    return TensorStorageMetadata(
        properties=_properties_from_json(data["properties"]),
        size=torch.Size(data["size"]),
        chunks=[
            ChunkStorageMetadata(offsets=torch.Size(c["offsets"]), sizes=torch.Size(c["sizes"]))
            for c in data["chunks"]
        ],
    )


def _planner_data_to_json(planner_data: Any) -> dict[str, list[str | int]] | None:
    """The default planners' flattening map ``{fqn: (key, index, ...)}``, as lists."""
    if planner_data is None:
        return None
    if isinstance(planner_data, Mapping) and all(
        isinstance(fqn, str)
        and isinstance(path, tuple | list)
        and all(isinstance(key, str | int) and not isinstance(key, bool) for key in path)
        for fqn, path in planner_data.items()
    ):
        return {fqn: list(path) for fqn, path in planner_data.items()}
    raise DCPCheckpointError(
        f"the save planner's planner_data ({type(planner_data).__name__}) is not the "
        "{fqn: (key, ...)} map of DCP's default planners; Coral records DCP metadata as "
        "JSON and cannot record it"
    )


def metadata_to_json(metadata: Metadata) -> dict[str, Any]:
    """DCP's global metadata as a JSON-ready dict (storage_data: MetadataIndex -> tree name)."""
    meta = metadata.storage_meta
    return {
        "format": _FORMAT,
        "version": metadata.version,
        "state_dict": {
            fqn: _storage_to_json(item) for fqn, item in metadata.state_dict_metadata.items()
        },
        "storage": [
            {
                "fqn": index.fqn,
                "offset": None if index.offset is None else list(index.offset),
                "name": name,
            }
            for index, name in (metadata.storage_data or {}).items()
        ],
        "planner_data": _planner_data_to_json(metadata.planner_data),
        "storage_meta": None
        if meta is None
        else {
            "checkpoint_id": None if meta.checkpoint_id is None else str(meta.checkpoint_id),
            "save_id": meta.save_id,
            "load_id": meta.load_id,
            "modules": list(meta.modules),
        },
    }


def metadata_from_json(data: Mapping[str, Any]) -> Metadata:
    """Rebuild DCP's :class:`Metadata` from :func:`metadata_to_json`'s dict.

    Raises:
        UnsupportedFormatError: for a layout a newer coral-torch wrote.
    """
    if data.get("format", 0) > _FORMAT:
        raise UnsupportedFormatError(
            f"DCP metadata format {data['format']} is newer than this coral-torch "
            f"understands ({_FORMAT}); upgrade coral-torch"
        )
    meta = data["storage_meta"]
    planner_data = data["planner_data"]
    return Metadata(
        state_dict_metadata={
            fqn: _storage_from_json(item) for fqn, item in data["state_dict"].items()
        },
        planner_data=None
        if planner_data is None
        else {fqn: tuple(path) for fqn, path in planner_data.items()},
        storage_data={
            MetadataIndex(item["fqn"], item["offset"]): item["name"] for item in data["storage"]
        },
        storage_meta=None if meta is None else StorageMeta(**meta),
        version=data["version"],
    )


# -- writing --------------------------------------------------------------------------


def _stored_name(item: WriteItem) -> str:
    """The tree name of a write: the FQN, plus the offsets for a shard (``w@512.0``)."""
    index = item.index
    if item.type != WriteItemType.SHARD or index.offset is None:
        return index.fqn
    return f"{index.fqn}@{'.'.join(str(offset) for offset in index.offset)}"


class CoralWriter(StorageWriter):
    """A DCP storage writer that makes each ``dcp.save`` one Coral commit.

    Every rank opens the repository itself (give a path, or a
    :class:`~coral_core.Repository` in a single process) and stores its own
    tensors; the coordinator commits them all. After a save, :attr:`commit`
    is the commit made (on the coordinator; None elsewhere).

    Args:
        repo: the repository, or the folder holding it.
        message, metrics, metadata, author, tags: as in
            :meth:`coral_core.Repository.commit`.
        branch: commit onto this branch (created from HEAD if new) instead of
            HEAD's; HEAD itself does not move.
        push_to: push the branch to this remote after each save, in the
            background (one thread per repository and remote in the process;
            :meth:`wait_for_push` waits, and so does the end of the process).

    A ``checkpoint_id`` given to ``dcp.save`` names another repository folder,
    or else the branch to commit onto.
    """

    def __init__(
        self,
        repo: Repository | str | os.PathLike[str],
        *,
        message: str,
        branch: str | None = None,
        metrics: Mapping[str, Any] | None = None,
        metadata: Mapping[str, Any] | None = None,
        author: str | None = None,
        tags: Sequence[str] = (),
        push_to: str | None = None,
    ) -> None:
        super().__init__()
        self.repo = _repository(repo)
        self.push_to = push_to
        if push_to is not None:
            pusher_for(self.repo, push_to)  # an unknown remote is refused now, not after the save
        self.message = message
        self.branch = None if branch is None else validate_ref_name(branch)
        self.metrics = clean_metrics(metrics)  # refused now, not after every rank wrote
        self.metadata = dict(metadata or {})
        self.author = author
        self.tags = tuple(tags)
        self.commit: Commit | None = None
        self._save_id = str(uuid.uuid4())

    def reset(self, checkpoint_id: str | os.PathLike[str] | None = None) -> None:
        """Start a new save; ``checkpoint_id`` is a repository folder or a branch name."""
        if checkpoint_id:
            if _is_repository(checkpoint_id):
                self.repo = Repository(checkpoint_id)
            else:
                self.branch = validate_ref_name(str(checkpoint_id))
        self._save_id = str(uuid.uuid4())

    @classmethod
    def validate_checkpoint_id(cls, checkpoint_id: str | os.PathLike[str]) -> bool:
        """True when ``checkpoint_id`` is a folder holding a Coral repository."""
        return _is_repository(checkpoint_id)

    def storage_meta(self) -> StorageMeta:
        """The repository's path and this save's id, recorded in the commit."""
        return StorageMeta(checkpoint_id=str(self.repo.path), save_id=self._save_id)

    def set_up_storage_writer(self, is_coordinator: bool, *args: Any, **kwargs: Any) -> None:
        """Refuse ``use_collectives=False`` across ranks: it would make one commit per rank."""
        if (
            not kwargs.get("use_collectives", True)
            and dist.is_initialized()
            and dist.get_world_size() > 1
        ):
            raise DCPCheckpointError(
                "CoralWriter makes one commit of every rank's tensors, which needs "
                "dcp.save(..., use_collectives=True)"
            )

    def prepare_local_plan(self, plan: SavePlan) -> SavePlan:
        return plan

    def prepare_global_plan(self, plans: list[SavePlan]) -> list[SavePlan]:
        return plans

    def _like(self) -> str | None:
        """The ref whose tensors are delta references: the target branch, or HEAD."""
        if self.branch is None:
            return None
        return self.branch if self.repo.branch_tip(self.branch) is not None else None

    def write_data(self, plan: SavePlan, planner: SavePlanner) -> Future[list[WriteResult]]:
        """Store this rank's tensors (not commit them); their entries go to :meth:`finish`."""
        weights: dict[str, WeightTensor] = {}
        for item in plan.items:
            data = planner.resolve_data(item)
            if isinstance(data, io.BytesIO):
                array = np.frombuffer(data.getbuffer(), dtype=np.uint8).copy()
            else:
                array = to_array(data)
            name = _stored_name(item)
            weights[name] = WeightTensor(array, name=name)
        entries = self.repo.store_weights(weights, like=self._like())
        results = [
            WriteResult(
                index=item.index,
                size_in_bytes=entries[name].nbytes,
                storage_data={"name": name, "entry": entries[name].to_dict()},
            )
            for item, name in zip(plan.items, weights, strict=True)
        ]
        future: Future[list[WriteResult]] = Future()
        future.set_result(results)
        return future

    def finish(self, metadata: Metadata, results: list[list[WriteResult]]) -> None:
        """Commit every rank's entries, with DCP's metadata as JSON (coordinator only)."""
        entries: dict[str, TreeEntry] = {}
        storage: dict[MetadataIndex, str] = {}
        for rank_results in results:
            for result in rank_results:
                name = result.storage_data["name"]
                entries[name] = TreeEntry.from_dict(result.storage_data["entry"])
                storage[result.index] = name
        metadata.storage_data = storage
        metadata.storage_meta = self.storage_meta()
        self.commit = self.repo.commit(
            self.message,
            author=self.author,
            metrics=self.metrics,
            metadata={**self.metadata, METADATA_KEY: metadata_to_json(metadata)},
            tags=self.tags,
            weights=entries,
            branch=self.branch,
        )
        if self.push_to is not None:
            branch = self.branch or self.repo.current_branch
            if branch is not None:
                pusher_for(self.repo, self.push_to).request(branch, [])

    def wait_for_push(self, timeout: float | None = None) -> bool:
        """Wait for the background pushes of ``push_to``; False if the remote
        was still failing after ``timeout`` seconds."""
        if self.push_to is None:
            return True
        return pusher_for(self.repo, self.push_to).flush(timeout)


# -- reading --------------------------------------------------------------------------


def _narrow(tensor: torch.Tensor, offsets: Sequence[int], lengths: Sequence[int]) -> torch.Tensor:
    for dim, (offset, length) in enumerate(zip(offsets, lengths, strict=True)):
        tensor = tensor.narrow(dim, offset, length)
    return tensor


class CoralReader(StorageReader):
    """A DCP storage reader for a commit :class:`CoralWriter` made, into any sharding.

    The ref (HEAD by default) is resolved when the reader is made and on each
    ``reset``, so an unknown ref or a commit without DCP metadata fails at once.
    With several ranks, give each the same commit (an id or a tag) when others
    may commit meanwhile; ranks that resolved different commits are refused.

    Args:
        repo: the repository, or the folder holding it.
        ref: a branch, tag or commit (HEAD by default).

    A ``checkpoint_id`` given to ``dcp.load`` names another repository folder,
    or else the ref to read.

    Raises:
        RefNotFoundError: when nothing has the name ``ref``.
        DCPCheckpointError: when the commit holds no DCP checkpoint.
    """

    def __init__(self, repo: Repository | str | os.PathLike[str], ref: str | None = None) -> None:
        super().__init__()
        self.repo = _repository(repo)
        self.ref = ref
        self.commit = self._open()
        self._storage: dict[MetadataIndex, str] = {}
        self._load_id = str(uuid.uuid4())

    def _open(self) -> Commit:
        commit = self.repo.show(self.ref)
        if METADATA_KEY not in commit.metadata.metadata:
            raise DCPCheckpointError(
                f"commit {commit.commit_hash[:12]} ({commit.message!r}) holds no DCP "
                f"checkpoint (no {METADATA_KEY!r} metadata); it was not made by dcp.save with "
                "a CoralWriter: load it with coral_torch.load_state_dict"
            )
        return commit

    def reset(self, checkpoint_id: str | os.PathLike[str] | None = None) -> None:
        """Start a new load; ``checkpoint_id`` is a repository folder or a ref."""
        if checkpoint_id:
            if _is_repository(checkpoint_id):
                self.repo = Repository(checkpoint_id)
            else:
                self.ref = str(checkpoint_id)
        self.commit = self._open()
        self._storage = {}
        self._load_id = str(uuid.uuid4())

    @classmethod
    def validate_checkpoint_id(cls, checkpoint_id: str | os.PathLike[str]) -> bool:
        """True when ``checkpoint_id`` is a folder holding a Coral repository."""
        return _is_repository(checkpoint_id)

    def read_metadata(self, *args: Any, **kwargs: Any) -> Metadata:
        """DCP's global metadata, rebuilt from the commit's JSON."""
        metadata = metadata_from_json(self.commit.metadata.metadata[METADATA_KEY])
        if metadata.storage_meta is None:
            metadata.storage_meta = StorageMeta()
        metadata.storage_meta.load_id = self._load_id
        return metadata

    def set_up_storage_reader(
        self, metadata: Metadata, is_coordinator: bool, *args: Any, **kwargs: Any
    ) -> None:
        self._storage = metadata.storage_data

    def prepare_local_plan(self, plan: LoadPlan) -> LoadPlan:
        return dataclasses.replace(plan, storage_data=self.commit.commit_hash)

    def prepare_global_plan(self, plans: list[LoadPlan]) -> list[LoadPlan]:
        """Check that every rank reads the same commit."""
        commits = sorted({str(plan.storage_data)[:12] for plan in plans})
        if len(commits) > 1:
            raise DCPCheckpointError(
                f"ranks would load different commits ({', '.join(commits)}); "
                "give every rank's CoralReader the same commit id or tag"
            )
        return plans

    def read_data(self, plan: LoadPlan, planner: LoadPlanner) -> Future[None]:
        """Load each stored tensor the plan needs once, and copy out the regions asked for."""
        commit = self.commit.commit_hash
        tree = self.repo.read_tree(self.commit.tree_hash)
        wanted: dict[str, list[ReadItem]] = {}
        for item in plan.items:
            wanted.setdefault(self._storage[item.storage_index], []).append(item)
        for name, items in wanted.items():
            if name not in tree:
                raise TensorNotFoundError(
                    f"commit {commit[:12]}'s DCP metadata lists tensor {name!r}, which the "
                    "commit does not hold; the checkpoint is incomplete"
                )
            try:
                array = self.repo.objects.read_tensor(tree[name].tensor)
            except CoralError as exc:
                raise type(exc)(f"tensor {name!r} of commit {commit[:12]}: {exc}") from exc
            stored = to_tensor(array)
            for item in items:
                if item.type == LoadItemType.BYTE_IO:
                    planner.load_bytes(item, io.BytesIO(array.tobytes()))
                    continue
                region = _narrow(stored, item.storage_offsets, item.lengths)
                target = planner.resolve_tensor(item).detach()
                if target.size() != region.size():
                    raise TensorMismatchError(
                        f"tensor {name!r} of commit {commit[:12]}: DCP asks to copy a region "
                        f"of size {tuple(region.size())} into one of {tuple(target.size())}"
                    )
                target.copy_(region)
                planner.commit_tensor(item, target)
        future: Future[None] = Future()
        future.set_result(None)
        return future
