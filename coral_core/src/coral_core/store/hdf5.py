"""``HDF5Store``: a whole store in one portable HDF5 file (h5py, an extra).

Two faces on one file:

* the :class:`~coral_core.store.WeightStore` methods, so a repository can keep
  its objects in the file (``Repository(path, init=True, store=HDF5Store(...))``):
  the key ``ab/cdef`` is the byte dataset ``/objects/ab/cdef``;
* the Coral book's weight interface (``store``/``load``/``store_delta``/...):
  tensors in ``/weights/<hash>`` with their metadata as attributes, compressed,
  and deltas in ``/deltas/<hash>``.

HDF5 never gives back the space of deleted datasets, so :meth:`HDF5Store.compact`
rewrites the file; ``Repository.gc`` runs it (through :meth:`reclaim`). One
process writes a file at a time; h5py is not thread-safe, so one lock guards
every access, and HDF5 is not crash-safe: keep backups of files you cannot lose.
"""

from __future__ import annotations

import builtins
import json
import os
import threading
import uuid
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any, Literal

import numpy as np

from coral_core.delta import Delta, as_kind, kind_name
from coral_core.dtypes import bits_dtype, dtype_name, numpy_dtype
from coral_core.errors import CoralError, InvalidKeyError, MissingObjectError, ReadOnlyStoreError
from coral_core.store.base import KEY_SEGMENT, WeightStore, WriteBatch, validate_key
from coral_core.tensor import WeightMetadata, WeightTensor

OBJECTS, WEIGHTS, DELTAS = "objects", "weights", "deltas"
#: Written as a root attribute, so a later Coral can tell the layout it reads.
FORMAT_ATTRIBUTE, FORMAT_VERSION = "coral_hdf5_format", 1

Compression = Literal["gzip", "lzf", "szip"] | None
#: szip's options when none are given: nearest-neighbour coding, 16 pixels a block.
SZIP_DEFAULTS = ("nn", 16)
Mode = Literal["r", "a", "w"]


def _import_h5py() -> Any:
    try:
        import h5py  # type: ignore[import-untyped]
    except ImportError:
        raise CoralError(
            "HDF5Store needs h5py: pip install 'coral-core[hdf5]' (or pip install h5py)"
        ) from None
    return h5py


def _hash_key(hash_key: str) -> str:
    """A weight or delta hash is one key segment (a dataset of its group)."""
    if not isinstance(hash_key, str) or not KEY_SEGMENT.fullmatch(hash_key):
        raise InvalidKeyError(
            f"invalid hash key {hash_key!r}: use one name of [A-Za-z0-9._-], not starting "
            "with a dot"
        )
    return hash_key


class HDF5Store(WeightStore):
    """A store in one HDF5 file: objects by key, and the book's weights and deltas.

    Args:
        filepath: the file; created (with its folder) unless ``mode="r"``.
        compression: ``"gzip"``, ``"lzf"``, ``"szip"`` (where h5py has it) or None,
            for weights (with the byte-shuffle filter, which helps floats
            compress). Objects are stored as they come: Coral has compressed
            them already.
        compression_opts: the gzip level (1-9); szip's ``(coding, pixels per
            block)``, ``("nn", 16)`` by default.
        mode: ``"a"`` read and write, ``"r"`` read-only, ``"w"`` start empty.
        chunk_cache_mem_size: bytes of HDF5's chunk cache for each dataset
            (h5py's ``rdcc_nbytes``; HDF5's default is 1 MiB).

    Raises:
        CoralError: when h5py is not installed, lacks the compression asked
            for, or the file is not an HDF5 file.
    """

    def __init__(
        self,
        filepath: str | os.PathLike[str],
        compression: Compression = "gzip",
        compression_opts: int | tuple[str, int] | None = 4,
        mode: Mode = "a",
        chunk_cache_mem_size: int | None = None,
    ) -> None:
        if compression not in ("gzip", "lzf", "szip", None):
            raise ValueError(
                f"compression must be 'gzip', 'lzf', 'szip' or None; got {compression!r}"
            )
        if mode not in ("r", "a", "w"):
            raise ValueError(f"mode must be 'r', 'a' or 'w'; got {mode!r}")
        if chunk_cache_mem_size is not None and chunk_cache_mem_size < 0:
            raise ValueError(f"chunk_cache_mem_size must be >= 0; got {chunk_cache_mem_size}")
        self._h5py = _import_h5py()
        if compression == "szip" and "szip" not in self._h5py.filters.encode:
            raise CoralError(
                "this h5py was built without szip encoding; use compression='gzip' or 'lzf' "
                "(or an h5py built with libaec)"
            )
        self.filepath = Path(filepath)
        self.compression = compression
        self.compression_opts: int | tuple[str, int] | None = None
        if compression == "gzip":
            self.compression_opts = compression_opts
        elif compression == "szip":
            self.compression_opts = (
                compression_opts if isinstance(compression_opts, tuple) else SZIP_DEFAULTS
            )
        self.chunk_cache_mem_size = chunk_cache_mem_size
        self.mode = mode
        self.read_only = mode == "r"
        self._lock = threading.RLock()
        self._deleted = False  # space to reclaim since the file was opened or compacted
        if not self.read_only:
            self.filepath.parent.mkdir(parents=True, exist_ok=True)
        self._file: Any = self._open(mode)

    def _open(self, mode: str) -> Any:
        try:
            cache = self.chunk_cache_mem_size
            handle = self._h5py.File(
                self.filepath, mode, **({} if cache is None else {"rdcc_nbytes": cache})
            )
        except (OSError, ValueError) as error:
            raise CoralError(f"cannot open HDF5 store {self.filepath}: {error}") from error
        if not self.read_only and FORMAT_ATTRIBUTE not in handle.attrs:
            handle.attrs[FORMAT_ATTRIBUTE] = FORMAT_VERSION
        return handle

    def _handle(self) -> Any:
        """The open file; the caller holds the lock."""
        if self._file is None:
            raise CoralError(f"HDF5 store {self.filepath} is closed")
        return self._file

    def _group(self, name: str) -> Any:
        """The top-level group ``name`` (None when absent in a read-only file)."""
        group = self._handle().get(name)
        if group is None and not self.read_only:
            group = self._file.create_group(name)
        return group

    def _dataset(self, group: str, name: str) -> Any:
        """The dataset ``group/name``, or None when there is none (or a group is there)."""
        parent = self._group(group)
        found = None if parent is None else parent.get(name)
        return found if isinstance(found, self._h5py.Dataset) else None

    def _flush(self) -> None:
        self._handle().flush()

    def _writable(self, what: str) -> None:
        if self.read_only:
            raise ReadOnlyStoreError(f"{self!r} is read-only; cannot write {what!r}")

    # -- WeightStore: objects by key -------------------------------------------------

    def get(self, key: str, byte_range: tuple[int, int] | None = None) -> bytes:
        validate_key(key)
        if byte_range is not None and (byte_range[0] < 0 or byte_range[1] < byte_range[0]):
            raise ValueError(f"invalid byte range {byte_range!r}")
        with self._lock:
            dataset = self._dataset(OBJECTS, key)
            if dataset is None:
                raise MissingObjectError(f"object {key!r} is not in {self.filepath}")
            if byte_range is None:
                return bytes(dataset[()].tobytes())
            return bytes(dataset[byte_range[0] : byte_range[1]].tobytes())

    def put(self, key: str, data: bytes | memoryview) -> None:
        self._check_writable(key)
        with self._lock:
            self._write_object(key, data, replace=True)
            self._flush()

    def put_if_absent(self, key: str, data: bytes | memoryview) -> bool:
        self._check_writable(key)
        with self._lock:
            written = self._write_object(key, data, replace=False)
            if written:
                self._flush()
            return written

    def compare_and_swap(self, key: str, expected: bytes | None, new: bytes) -> bool:
        """Atomic under the store's lock (one process writes a file)."""
        self._check_writable(key)
        with self._lock:
            dataset = self._dataset(OBJECTS, key)
            current = None if dataset is None else dataset[()].tobytes()
            if current != expected:
                return False
            self._write_object(key, new, replace=True)
            self._flush()
            return True

    def compare_and_delete(self, key: str, expected: bytes) -> bool:
        """Atomic under the store's lock (one process writes a file)."""
        self._check_writable(key)
        with self._lock:
            dataset = self._dataset(OBJECTS, key)
            if dataset is None or dataset[()].tobytes() != expected:
                return False
            self._remove(OBJECTS, key)
            self._flush()
            return True

    def _write_object(self, key: str, data: bytes | memoryview, replace: bool) -> bool:
        """Create the dataset of ``key`` (replacing an old one if ``replace``); the
        caller holds the lock and flushes."""
        objects = self._group(OBJECTS)
        existing = objects.get(key)
        if isinstance(existing, self._h5py.Group) or self._below_a_dataset(objects, key):
            raise InvalidKeyError(
                f"store key {key!r} clashes with other keys in {self.filepath}: HDF5 cannot "
                "hold both a key and keys below it"
            )
        if existing is not None:
            if not replace:
                return False
            del objects[key]
            self._deleted = True
        view = memoryview(data)
        raw = np.frombuffer(view if view.contiguous else view.tobytes(), dtype=np.uint8)
        objects.create_dataset(key, data=raw)
        return True

    def _below_a_dataset(self, group: Any, key: str) -> bool:
        parts = key.split("/")
        for depth in range(1, len(parts)):
            if isinstance(group.get("/".join(parts[:depth])), self._h5py.Dataset):
                return True
        return False

    def has(self, key: str) -> bool:
        validate_key(key)
        with self._lock:
            return self._dataset(OBJECTS, key) is not None

    def delete(self, key: str) -> bool:
        """Remove the object ``key`` and the weight stored under that hash (the book's
        ``delete``), whichever are there; False when neither was.

        The file keeps its size until :meth:`compact`.
        """
        self._check_writable(key)
        with self._lock:
            removed = self._remove(OBJECTS, key)
            if "/" not in key:
                removed = self._remove(WEIGHTS, key) or removed
            if removed:
                self._flush()
            return removed

    def _remove(self, group_name: str, name: str) -> bool:
        """Delete dataset ``group/name`` and the folders it leaves empty; the caller
        holds the lock and flushes."""
        group = self._handle().get(group_name)
        if group is None or not isinstance(group.get(name), self._h5py.Dataset):
            return False
        del group[name]
        self._deleted = True
        parts = name.split("/")[:-1]
        while parts and len(group["/".join(parts)]) == 0:
            del group["/".join(parts)]
            parts.pop()
        return True

    def list(self, prefix: str = "") -> Iterator[str]:
        folder = prefix.rpartition("/")[0]
        with self._lock:
            objects = self._group(OBJECTS)
            start = objects if not folder or objects is None else objects.get(folder)
            keys: builtins.list[str] = []
            if isinstance(start, self._h5py.Group):
                base = folder + "/" if folder else ""
                start.visit(lambda name: self._collect(start, name, base, prefix, keys))
        yield from keys

    def _collect(
        self, group: Any, name: str, base: str, prefix: str, keys: builtins.list[str]
    ) -> None:
        key = base + name
        if key.startswith(prefix) and isinstance(group.get(name), self._h5py.Dataset):
            keys.append(key)

    def size(self, key: str) -> int:
        validate_key(key)
        with self._lock:
            dataset = self._dataset(OBJECTS, key)
            if dataset is None:
                raise MissingObjectError(f"object {key!r} is not in {self.filepath}")
            return int(dataset.nbytes)

    def _new_batch(self) -> WriteBatch:
        return HDF5WriteBatch(self)

    # -- the book's weights --------------------------------------------------------

    def store(self, weight: WeightTensor, hash_key: str | None = None) -> str:
        """Store ``weight`` in ``/weights/<hash>`` (its content id unless
        ``hash_key`` is given) and return the hash; a hash stored before is kept."""
        with self._lock:
            hash_key = self._store_weight(weight, hash_key)
            self._flush()
            return hash_key

    def _store_weight(self, weight: WeightTensor, hash_key: str | None) -> str:
        hash_key = _hash_key(hash_key or weight.compute_hash())
        self._writable(f"{WEIGHTS}/{hash_key}")
        weights = self._group(WEIGHTS)
        if hash_key in weights:
            return hash_key
        data = weight.data
        if data.dtype.isbuiltin != 1:  # bfloat16, float8 (from ml_dtypes): HDF5 has no such
            data = data.view(bits_dtype(data.dtype))  # type, so their bits are stored
        filters: dict[str, Any] = {}
        if self.compression and data.ndim and data.size:  # HDF5 filters need a chunked array
            filters = {
                "compression": self.compression,
                "compression_opts": self.compression_opts,
                "shuffle": data.dtype.itemsize > 1,
            }
        dataset = weights.create_dataset(hash_key, data=data, **filters)
        metadata = weight.metadata
        dataset.attrs.update(
            {
                "name": metadata.name,
                "shape": np.asarray(metadata.shape, dtype=np.int64),
                "dtype": metadata.dtype_name,
                "layer_type": metadata.layer_type or "",
                "model_name": metadata.model_name or "",
                "hash": hash_key,
                "compression_info": json.dumps(metadata.compression_info),
            }
        )
        return hash_key

    def load(self, hash_key: str) -> WeightTensor | None:
        """The weight stored under ``hash_key``, bit for bit; None when there is none."""
        with self._lock:
            dataset = self._dataset(WEIGHTS, _hash_key(hash_key))
            if dataset is None:
                return None
            metadata = self._metadata(dataset)
            data = np.asarray(dataset[()])
        data = data.view(metadata.dtype).reshape(metadata.shape)
        return WeightTensor(data, metadata)

    def _metadata(self, dataset: Any) -> WeightMetadata:
        attrs = dataset.attrs
        return WeightMetadata(
            name=str(attrs["name"]),
            shape=tuple(int(d) for d in attrs["shape"]),
            dtype=numpy_dtype(str(attrs["dtype"])),
            layer_type=str(attrs["layer_type"]) or None,
            model_name=str(attrs["model_name"]) or None,
            compression_info=json.loads(str(attrs["compression_info"])),
        )

    def exists(self, hash_key: str) -> bool:
        """True when a weight is stored under ``hash_key``."""
        with self._lock:
            return self._dataset(WEIGHTS, _hash_key(hash_key)) is not None

    def get_metadata(self, hash_key: str) -> WeightMetadata | None:
        """The metadata of a stored weight without reading its data; None when absent."""
        with self._lock:
            dataset = self._dataset(WEIGHTS, _hash_key(hash_key))
            return None if dataset is None else self._metadata(dataset)

    def list_weights(self) -> builtins.list[str]:
        """The hash of every stored weight."""
        return self._names(WEIGHTS)

    def _names(self, group_name: str) -> builtins.list[str]:
        with self._lock:
            group = self._group(group_name)
            return [] if group is None else builtins.list(group)

    def store_batch(self, weights: dict[str, WeightTensor]) -> dict[str, str]:
        """Store many weights with one flush; returns ``{name: hash}``."""
        with self._lock:
            hashes = {name: self._store_weight(weight, None) for name, weight in weights.items()}
            self._flush()
            return hashes

    def load_batch(self, hash_keys: Iterable[str]) -> dict[str, WeightTensor]:
        """``{hash: weight}`` for every hash of ``hash_keys`` that is stored."""
        loaded = {hash_key: self.load(hash_key) for hash_key in hash_keys}
        return {hash_key: weight for hash_key, weight in loaded.items() if weight is not None}

    # -- the book's deltas ---------------------------------------------------------

    def store_delta(self, delta: Delta, delta_hash: str) -> str:
        """Store ``delta`` in ``/deltas/<delta_hash>``; return the hash."""
        delta_hash = _hash_key(delta_hash)
        self._writable(f"{DELTAS}/{delta_hash}")
        with self._lock:
            deltas = self._group(DELTAS)
            if delta_hash not in deltas:
                dataset = deltas.create_dataset(
                    delta_hash, data=np.frombuffer(delta.data, dtype=np.uint8)
                )
                dataset.attrs.update(
                    {
                        "delta_type": kind_name(delta.delta_type),
                        "reference_hash": delta.reference_hash,
                        "original_shape": np.asarray(delta.original_shape, dtype=np.int64),
                        "original_dtype": dtype_name(delta.original_dtype),
                        "metadata": json.dumps(delta.metadata),
                    }
                )
                self._flush()
            return delta_hash

    def load_delta(self, delta_hash: str) -> Delta | None:
        """The delta stored under ``delta_hash``; None when there is none."""
        with self._lock:
            dataset = self._dataset(DELTAS, _hash_key(delta_hash))
            if dataset is None:
                return None
            attrs = dataset.attrs
            return Delta(
                delta_type=as_kind(str(attrs["delta_type"])),
                data=dataset[()].tobytes(),
                reference_hash=str(attrs["reference_hash"]),
                original_shape=tuple(int(d) for d in attrs["original_shape"]),
                original_dtype=str(attrs["original_dtype"]),
                metadata=json.loads(str(attrs["metadata"])),
            )

    def delta_exists(self, delta_hash: str) -> bool:
        """True when a delta is stored under ``delta_hash``."""
        with self._lock:
            return self._dataset(DELTAS, _hash_key(delta_hash)) is not None

    def list_deltas(self) -> builtins.list[str]:
        """The hash of every stored delta."""
        return self._names(DELTAS)

    def delete_delta(self, delta_hash: str) -> bool:
        """Remove a delta; False when it was not there."""
        delta_hash = _hash_key(delta_hash)
        self._writable(f"{DELTAS}/{delta_hash}")
        with self._lock:
            removed = self._remove(DELTAS, delta_hash)
            if removed:
                self._flush()
            return removed

    # -- statistics and space ------------------------------------------------------

    def get_storage_info(self) -> dict[str, Any]:
        """File size, weight counts and bytes (raw and as stored), objects and deltas.

        ``compression_ratio`` is the fraction of the weights' bytes compression saved.
        """
        with self._lock:
            self._flush()
            weights = [self._file[WEIGHTS][h] for h in self.list_weights()]
            total = sum(int(d.nbytes) for d in weights)
            stored = sum(int(d.id.get_storage_size()) for d in weights)
            objects = builtins.list(self.list())
            info: dict[str, Any] = {
                "filepath": str(self.filepath),
                "file_size": self.filepath.stat().st_size,
                "total_size": self.filepath.stat().st_size,  # the book's name of file_size
                "compression": self.compression,
                "total_weights": len(weights),
                "total_bytes": total,
                "compressed_bytes": stored,
                "compression_ratio": 1.0 - stored / total if total else 0.0,
                "total_objects": len(objects),
                "object_bytes": sum(self.size(key) for key in objects),
            }
        return {**info, **self.get_delta_storage_info()}

    def get_delta_storage_info(self) -> dict[str, int]:
        """``total_deltas`` and ``total_delta_bytes``."""
        with self._lock:
            deltas = [self._file[DELTAS][h] for h in self.list_deltas()]
            return {
                "total_deltas": len(deltas),
                "total_delta_bytes": sum(int(d.nbytes) for d in deltas),
            }

    def compact(self) -> int:
        """Rewrite the file without the space of deleted datasets; return bytes freed.

        Copies everything into a new file beside it, then renames it over the old one.
        """
        self._writable("(compact)")
        with self._lock:
            self._flush()
            before = self.filepath.stat().st_size
            temp = self.filepath.with_name(f".{self.filepath.name}.compact-{uuid.uuid4().hex}")
            try:
                with self._h5py.File(temp, "w") as target:
                    target.attrs.update(dict(self._file.attrs))
                    for name in self._file:
                        self._file.copy(self._file[name], target, name=name)
                self._file.close()
                os.replace(temp, self.filepath)
            finally:
                temp.unlink(missing_ok=True)
                if not self._file:  # closed for the rename (or by a failed one): reopen
                    self._file = self._open("a")
            self._deleted = False
            return before - self.filepath.stat().st_size

    def reclaim(self) -> None:
        """Compact the file when something was deleted since it was opened or compacted."""
        if self._deleted and not self.read_only:
            self.compact()

    # -- lifecycle -----------------------------------------------------------------

    def close(self) -> None:
        """Flush and close the file; later calls raise :class:`CoralError`."""
        with self._lock:
            if self._file is not None:
                self._file.close()
                self._file = None

    def __repr__(self) -> str:
        return f"HDF5Store({str(self.filepath)!r})"


class HDF5WriteBatch(WriteBatch):
    """Objects of one batch are written at once and flushed together at the end."""

    store: HDF5Store
    ordered = False  # one flush at the end: what must be durable first needs its own batch

    def put_if_absent(self, key: str, data: bytes | memoryview) -> bool:
        self.store._check_writable(key)
        with self.store._lock:
            return self.store._write_object(key, data, replace=False)

    def finish(self) -> None:
        with self.store._lock:
            self.store._flush()
