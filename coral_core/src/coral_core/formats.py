"""Model files in and out of Coral: ``.safetensors`` here, other formats by plugin.

A :class:`ModelFormat` reads a file into arrays by name and writes arrays to
a file. ``.safetensors`` is built in (read through ``mmap``, nothing loaded
until used; no dependency), and so are numpy's ``.npz`` and ``.npy`` (never
with pickles). Framework packages add theirs under the entry point group
``coral.formats``, one entry point per suffix and named after it (``pt``,
``pth`` and ``bin`` come from coral-torch), so ``coral-ml add model.pt``
works once that package is installed, imports no other framework, and names
the package to install when it is not.
"""

from __future__ import annotations

import functools
import itertools
import json
import math
import os
import stat
import tempfile
import zipfile
import zlib
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from importlib.metadata import EntryPoint, entry_points
from pathlib import Path
from typing import IO

import numpy as np

from coral_core.dtypes import dtype_name, numpy_dtype
from coral_core.errors import CoralError, ModelFileError

#: Entry point group of format plugins; each entry point is a :class:`ModelFormat`.
FORMAT_GROUP = "coral.formats"
#: Suffixes of formats that plugins provide, and the package that has each.
PLUGIN_PACKAGES = {
    ".pt": "coral-torch",
    ".pth": "coral-torch",
    ".bin": "coral-torch",
    ".keras": "coral-tf",
    ".h5": "coral-tf",
}


class UnknownModelFormatError(CoralError, ValueError):
    """No installed format reads or writes files with this suffix."""


@dataclass(frozen=True)
class ModelFormat:
    """A model file format: its name, suffixes, reader and writer."""

    name: str
    suffixes: tuple[str, ...]
    read: Callable[[str | os.PathLike[str]], dict[str, np.ndarray]]
    write: Callable[[str | os.PathLike[str], Mapping[str, np.ndarray]], None]


_BUILT_IN: dict[str, ModelFormat] = {}  # filled at the end of this module


def _load(entry: EntryPoint) -> ModelFormat:
    plugin = entry.load()
    if not isinstance(plugin, ModelFormat):
        raise CoralError(f"entry point {entry.name!r} in {FORMAT_GROUP} is not a ModelFormat")
    return plugin


def available_formats() -> dict[str, ModelFormat]:
    """Every format installed, by suffix (plugins may not replace a built-in).

    Loads every plugin (and so imports its framework): for listing. To read
    one file, :func:`format_for` loads only the plugin of its suffix.
    """
    formats = dict(_BUILT_IN)
    for entry in entry_points(group=FORMAT_GROUP):
        for suffix in _load(entry).suffixes:
            formats.setdefault(suffix.lower(), _load(entry))
    return formats


def format_for(path: str | os.PathLike[str]) -> ModelFormat:
    """The format of a file, by its suffix.

    Plugins are entry points named after the suffix they read (``pt`` for
    ``.pt``), so finding one imports no other framework.

    Raises:
        UnknownModelFormatError: naming the package to install when a plugin
            has that suffix, else the suffixes that are known.
    """
    suffix = Path(path).suffix.lower()
    if suffix in _BUILT_IN:
        return _BUILT_IN[suffix]
    for entry in entry_points(group=FORMAT_GROUP, name=suffix.lstrip(".")):
        plugin = _load(entry)
        if suffix in plugin.suffixes:
            return plugin
    if suffix in PLUGIN_PACKAGES:
        raise UnknownModelFormatError(
            f"{path}: {suffix} files are read by {PLUGIN_PACKAGES[suffix]}; "
            f"pip install {PLUGIN_PACKAGES[suffix]}"
        )
    raise UnknownModelFormatError(
        f"{path}: no installed format reads {suffix or 'files without a suffix'}; "
        f"known: {', '.join(sorted(available_formats()))}"
    )


# -- safetensors ---------------------------------------------------------------------

_SAFETENSORS_DTYPES = {
    "F64": "float64",
    "F32": "float32",
    "F16": "float16",
    "BF16": "bfloat16",
    "F8_E4M3": "float8_e4m3fn",
    "F8_E5M2": "float8_e5m2",
    "I64": "int64",
    "I32": "int32",
    "I16": "int16",
    "I8": "int8",
    "U64": "uint64",
    "U32": "uint32",
    "U16": "uint16",
    "U8": "uint8",
    "BOOL": "bool",
}
_SAFETENSORS_NAMES = {name: code for code, name in _SAFETENSORS_DTYPES.items()}
_MAX_HEADER = 100 * 1024 * 1024  # as the safetensors library


def read_safetensors(path: str | os.PathLike[str]) -> dict[str, np.ndarray]:
    """The tensors of a ``.safetensors`` file as read-only memory-mapped arrays.

    Raises:
        ModelFileError: when the file is truncated, its header is damaged, or
            a tensor's bytes do not fit its dtype and shape.
    """
    path = Path(path)
    size = regular_file(path).st_size

    def damaged(why: str) -> ModelFileError:
        return ModelFileError(f"{path} is not a readable .safetensors file: {why}")

    with path.open("rb") as file:
        prefix = file.read(8)
        if len(prefix) < 8:
            raise damaged("shorter than its 8-byte header length")
        header_size = int.from_bytes(prefix, "little")
        if header_size > min(_MAX_HEADER, size - 8):
            raise damaged(f"header of {header_size} bytes does not fit a {size}-byte file")
        try:
            header = json.loads(file.read(header_size), object_pairs_hook=_no_duplicates)
        except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
            raise damaged(f"header is not JSON ({exc})") from None
        except ValueError as exc:
            raise damaged(str(exc)) from None
    if not isinstance(header, dict):
        raise damaged("header is not a JSON object")
    data_start = 8 + header_size
    # One memory map of the whole file: a model of thousands of tensors holds
    # one file descriptor, not one per tensor (a process may have only 1024).
    whole = np.memmap(path, np.uint8, mode="r") if size > data_start else None
    arrays, spans = {}, []
    for name, info in header.items():
        if name == "__metadata__":
            continue
        try:
            dtype = numpy_dtype(_SAFETENSORS_DTYPES[info["dtype"]])
            shape = tuple(_whole_number(d) for d in info["shape"])
            begin, end = (_whole_number(o) for o in info["data_offsets"])
        except (KeyError, TypeError, ValueError):
            raise damaged(f"tensor {name!r} has a malformed entry {info!r:.200}") from None
        if not begin <= end:
            raise damaged(f"tensor {name!r} ends before it begins")
        if end - begin != math.prod(shape) * dtype.itemsize or data_start + end > size:
            raise damaged(f"tensor {name!r} needs bytes {begin}..{end} the file does not hold")
        spans.append((begin, end, name))
        if end == begin:
            arrays[name] = np.zeros(shape, dtype)
            continue
        assert whole is not None  # a non-empty span lies in the file (checked above)
        raw = whole[data_start + begin : data_start + end]
        arrays[name] = raw.view(np.ndarray).view(dtype).reshape(shape)
    spans.sort()
    for (_, end, first), (begin, _, second) in itertools.pairwise(spans):
        if begin < end:
            raise damaged(f"tensors {first!r} and {second!r} share bytes")
    return arrays


def regular_file(path: Path) -> os.stat_result:
    """``path``'s status, refused unless it is a regular file: a FIFO would
    block a read forever, and a device is no model.

    Raises:
        ModelFileError: for anything but a regular file.
    """
    info = path.stat()
    if not stat.S_ISREG(info.st_mode):
        raise ModelFileError(f"{path} is not a regular file (a FIFO, device or socket?)")
    return info


def _whole_number(value: object) -> int:
    """A dimension or offset: a non-negative integer (not 2.5, not true), below 2**62."""
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < 1 << 62:
        raise ValueError(f"{value!r} is not a size")
    return value


def _no_duplicates(pairs: list[tuple[str, object]]) -> dict[str, object]:
    found: dict[str, object] = {}
    for key, value in pairs:
        if key in found:
            raise ValueError(f"the header names {key!r} twice")
        found[key] = value
    return found


def write_safetensors(path: str | os.PathLike[str], arrays: Mapping[str, np.ndarray]) -> None:
    """Write arrays as a ``.safetensors`` file, atomically (a temporary file
    beside it, flushed to disk, then renamed)."""
    header: dict[str, object] = {}
    parts: list[np.ndarray] = []
    offset = 0
    for name in sorted(arrays):
        array = np.asarray(arrays[name])
        array = array if array.flags.c_contiguous else array.copy(order="C")  # keeps 0-d
        code = _SAFETENSORS_NAMES.get(dtype_name(array.dtype))
        if code is None:
            raise ModelFileError(f"tensor {name!r}: .safetensors has no dtype {array.dtype}")
        header[name] = {
            "dtype": code,
            "shape": list(array.shape),
            "data_offsets": [offset, offset + array.nbytes],
        }
        parts.append(array.reshape(-1).view(np.uint8))
        offset += array.nbytes
    encoded = json.dumps(header, separators=(",", ":")).encode()
    encoded += b" " * (-len(encoded) % 8)
    with replacing_file(Path(path)) as handle:
        handle.write(len(encoded).to_bytes(8, "little") + encoded)
        for part in parts:  # tensor by tensor: no second copy of the model in memory
            handle.write(part.data)


@contextmanager
def replacing_file(target: Path) -> Iterator[IO[bytes]]:
    """A temporary file beside ``target``, flushed to disk and renamed onto it
    when the block succeeds (removed when it fails): a reader sees the old
    file or the whole new one, never half of it. The file gets the mode any
    new file gets (0666 less the umask), not the temporary file's 0600."""
    with tempfile.NamedTemporaryFile(
        dir=target.parent, prefix=f".{target.name}.", suffix=".tmp", delete=False
    ) as handle:
        try:
            yield handle
            handle.flush()
            os.fchmod(handle.fileno(), 0o666 & ~_umask())
            os.fsync(handle.fileno())
        except BaseException:
            os.unlink(handle.name)
            raise
    os.replace(handle.name, target)


@functools.cache
def _umask() -> int:
    """The process's umask (read by setting it, so set back at once; once)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


SAFETENSORS = ModelFormat("safetensors", (".safetensors",), read_safetensors, write_safetensors)


# -- numpy ---------------------------------------------------------------------------


def read_npz(path: str | os.PathLike[str]) -> dict[str, np.ndarray]:
    """The arrays of an ``.npz`` file (object arrays, which need pickles, refused)."""
    regular_file(Path(path))
    try:
        # numpy leaves the file open when it is not a zip: open and close it here
        with open(path, "rb") as handle:
            archive = np.load(handle, allow_pickle=False)
            if not isinstance(archive, np.lib.npyio.NpzFile):  # an .npy file
                raise ValueError("it holds one array, not a zip of arrays (an .npy file?)")
            with archive:
                return {name: archive[name] for name in archive.files}
    # RuntimeError: an encrypted member or an unknown compression method; zlib.error:
    # a damaged deflated member
    except (ValueError, OSError, EOFError, RuntimeError, zipfile.BadZipFile, zlib.error) as exc:
        if isinstance(exc, FileNotFoundError):
            raise
        raise ModelFileError(f"{path} is not a readable .npz file: {exc}") from None


def _numpy_can_hold(path: str | os.PathLike[str], arrays: Mapping[str, np.ndarray]) -> None:
    """Refuse dtypes numpy's files cannot name (bfloat16, float8: they would come
    back as raw bytes, neither numpy nor Coral reading them as they were)."""
    for name, array in arrays.items():
        dtype = np.asarray(array).dtype
        if dtype.kind == "V" or dtype.type.__module__ != "numpy":
            raise ModelFileError(
                f"{path}: tensor {name!r} is {dtype_name(dtype)}, which .npy/.npz files cannot "
                "record; export it as .safetensors, which can"
            )


def write_npz(path: str | os.PathLike[str], arrays: Mapping[str, np.ndarray]) -> None:
    """Write arrays as an uncompressed ``.npz`` file (atomically).

    Raises:
        ModelFileError: for a dtype the format cannot record (bfloat16, float8).
    """
    _numpy_can_hold(path, arrays)
    with replacing_file(Path(path)) as handle:
        np.savez(handle, **dict(arrays))  # type: ignore[arg-type]


def read_npy(path: str | os.PathLike[str]) -> dict[str, np.ndarray]:
    """An ``.npy`` file's array, memory-mapped, named after the file's stem."""
    regular_file(Path(path))
    try:
        array = np.load(path, mmap_mode="r", allow_pickle=False)
    except (ValueError, OSError, EOFError) as exc:
        if isinstance(exc, FileNotFoundError):
            raise
        raise ModelFileError(f"{path} is not a readable .npy file: {exc}") from None
    return {Path(path).stem: array}


def write_npy(path: str | os.PathLike[str], arrays: Mapping[str, np.ndarray]) -> None:
    """Write the one array of ``arrays`` as an ``.npy`` file.

    Raises:
        ModelFileError: for several arrays, or a dtype the format cannot record.
    """
    if len(arrays) != 1:
        raise ModelFileError(f"{path}: an .npy file holds one array, not {len(arrays)}")
    _numpy_can_hold(path, arrays)
    with replacing_file(Path(path)) as handle:
        np.save(handle, next(iter(arrays.values())), allow_pickle=False)


NPZ = ModelFormat("npz", (".npz",), read_npz, write_npz)
NPY = ModelFormat("npy", (".npy",), read_npy, write_npy)
_BUILT_IN.update({suffix: f for f in (SAFETENSORS, NPZ, NPY) for suffix in f.suffixes})
