"""``.keras`` / ``.h5`` files: weights read and written with h5py, no model code run.

A ``.keras`` file is a zip archive whose ``model.weights.h5`` holds the
variables (``layers/dense/vars/0``, ``optimizer/vars/0``, ...); a
``.weights.h5`` file is that HDF5 file on its own; a legacy ``.h5`` (Keras 2,
or ``model.save("m.h5")``) keeps them under ``model_weights/...``. Every
dataset is read by its path in the file, without deserializing the model's
config (so no ``keras.models.load_model`` and no Lambda layer runs) and
without importing Keras. Links to other files or paths are refused. A
``.keras`` member's CRC is checked, so a damaged byte in it is found; HDF5
keeps no checksum of its data, so in a bare ``.h5`` only damage to its
structure is.

Files are written in the layout Keras 3 reads with ``model.load_weights``: a
``.weights.h5`` file, or a ``.keras`` archive holding only its weights. A
plain ``.h5`` is Keras' legacy whole-model format, whose layer order Coral
does not keep, so writing one is refused with the name to use instead.
"""

from __future__ import annotations

import io
import os
import re
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import IO, Any

import h5py  # type: ignore[import-untyped]
import numpy as np

from coral_core import CoralError, ModelFileError, ModelFormat
from coral_core.dtypes import dtype_name, numpy_dtype
from coral_core.formats import replacing_file

SUFFIXES = (".keras", ".h5", ".hdf5")
#: The archive member of a ``.keras`` file that holds the weights.
WEIGHTS_MEMBER = "model.weights.h5"
#: Names in Keras' file layout: ``layers/dense/vars/0``, ``optimizer/vars/3``.
FILE_LAYOUT = re.compile(r"(?:.+/)?vars/\d+")
#: Dataset attribute naming a dtype HDF5 has no type for (as Keras marks bfloat16).
_DTYPE_ATTR = "dtype"


def read_keras_file(path: str | os.PathLike[str]) -> dict[str, np.ndarray]:
    """The weights of a ``.keras``, ``.weights.h5`` or legacy ``.h5`` file, by
    their path in the HDF5 file (``layers/dense/vars/0``).

    Raises:
        ModelFileError: when the file is truncated or damaged, is not such a
            file, holds links, a dataset of a dtype Coral cannot store, or no weights.
    """
    path = Path(path)
    if path.suffix.lower() != ".keras":
        return _read_h5(path, path)
    try:
        with zipfile.ZipFile(path) as archive:
            if WEIGHTS_MEMBER not in archive.namelist():
                raise ModelFileError(
                    f"{path} is not a readable .keras file: it has no {WEIGHTS_MEMBER} "
                    f"(members: {', '.join(archive.namelist()[:10]) or 'none'})"
                )
            with archive.open(WEIGHTS_MEMBER) as member:
                if archive.getinfo(WEIGHTS_MEMBER).compress_type != zipfile.ZIP_STORED:
                    return _read_h5(io.BytesIO(member.read()), path)  # seeks would re-inflate
                while member.read(1 << 24):  # to the end, where zipfile checks the CRC:
                    pass  # HDF5 has no checksum of its data, so damage shows only here
                member.seek(0)
                return _read_h5(member, path)
    except (zipfile.BadZipFile, EOFError) as exc:
        raise ModelFileError(f"{path} is not a readable .keras file: {exc}") from None


def _read_h5(source: Path | IO[bytes], path: Path) -> dict[str, np.ndarray]:
    arrays: dict[str, np.ndarray] = {}
    try:
        with h5py.File(source, "r") as file:
            links: list[tuple[str, Any]] = []
            file.visititems_links(lambda name, link: links.append((name, link)))
            for name, link in links:
                if not isinstance(link, h5py.HardLink):
                    raise ModelFileError(
                        f"{path}: {name!r} is a {type(link).__name__}; Coral reads only "
                        "data stored in the file itself"
                    )
                item = file[name]
                if isinstance(item, h5py.Dataset):
                    arrays[name] = _array(item, name, path)
    except CoralError:
        raise
    except (OSError, KeyError, ValueError, zipfile.BadZipFile) as exc:
        if isinstance(exc, FileNotFoundError):
            raise
        raise ModelFileError(f"{path} is not a readable HDF5 weights file: {exc}") from None
    if not arrays:
        raise ModelFileError(f"{path} holds no weights")
    return arrays


def _array(dataset: h5py.Dataset, name: str, path: Path) -> np.ndarray:
    marked = dataset.attrs.get(_DTYPE_ATTR)
    data = np.asarray(dataset[()])
    try:
        if isinstance(marked, (str, bytes)):
            wanted = numpy_dtype(marked.decode() if isinstance(marked, bytes) else marked)
            if data.dtype.itemsize != wanted.itemsize:
                raise ModelFileError(
                    f"{path}: dataset {name!r} is marked {wanted} but holds "
                    f"{data.dtype.itemsize}-byte values"
                )
            return data.view(wanted)
        dtype_name(data.dtype)
    except CoralError as exc:
        if isinstance(exc, ModelFileError):
            raise
        raise ModelFileError(f"{path}: dataset {name!r} is not a weight: {exc}") from None
    return data


def write_keras_file(path: str | os.PathLike[str], arrays: Mapping[str, np.ndarray]) -> None:
    """Write weights as a ``.weights.h5`` file or a ``.keras`` archive holding
    only ``model.weights.h5``, atomically; ``model.load_weights`` reads either
    when the names are Keras' own layout (as :func:`read_keras_file` returns them).

    Raises:
        ModelFileError: for a plain ``.h5`` / ``.hdf5`` name (Keras would read
            it as its legacy format), names outside Keras' file layout (a
            torch ``0.weight``: Keras would load nothing from them), or names
            that collide (``a`` and ``a/b``).
    """
    target = Path(path)
    lowered = target.name.lower()
    if not lowered.endswith((".keras", ".weights.h5")):
        stem = target.name.rsplit(".", 1)[0]
        raise ModelFileError(
            f"{target}: Keras reads a plain {target.suffix} file as its legacy whole-model "
            "format, which needs the layer order Coral does not keep; export to "
            f"{stem}.weights.h5 or {stem}.keras instead"
        )
    foreign = sorted(name for name in arrays if not FILE_LAYOUT.fullmatch(name))
    if foreign:
        raise ModelFileError(
            f"{target}: {len(foreign)} tensor name(s) like {foreign[0]!r} are not Keras' "
            "file layout (layers/<layer>/vars/<i>), so Keras' load_weights could not read "
            "them; export a commit that Keras made, or to .safetensors"
        )
    if lowered.endswith(".keras"):
        buffer = io.BytesIO()
        _write_h5(buffer, arrays, target)
        with replacing_file(target) as handle, zipfile.ZipFile(handle, "w") as archive:
            archive.writestr(WEIGHTS_MEMBER, buffer.getvalue())
    else:
        with replacing_file(target) as handle:
            _write_h5(handle, arrays, target)


def _write_h5(handle: IO[bytes], arrays: Mapping[str, np.ndarray], target: Path) -> None:
    with h5py.File(handle, "w") as file:
        for name in sorted(arrays):
            array = np.asarray(arrays[name])
            try:
                if array.dtype.isbuiltin == 2:  # ml_dtypes (bfloat16, float8): no HDF5 type
                    dataset = file.create_dataset(name, data=array.view(f"V{array.itemsize}"))
                    dataset.attrs[_DTYPE_ATTR] = dtype_name(array.dtype)
                else:
                    file.create_dataset(name, data=array)
            except ValueError as exc:
                raise ModelFileError(f"{target}: cannot write tensor {name!r}: {exc}") from None


#: The ``coral.formats`` plugin (entry point ``keras``) for ``.keras`` / ``.h5`` / ``.hdf5``.
KERAS_FORMAT = ModelFormat("keras", SUFFIXES, read_keras_file, write_keras_file)
