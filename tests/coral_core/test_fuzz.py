"""Bad input never crashes Coral with anything but a ``CoralError``, nor writes
outside ``.coral``.

Hypothesis feeds random and mutated bytes to everything that parses what it did
not write itself: object headers and whole objects (with checksums recomputed,
so the decoders behind them see the garbage), ``.safetensors`` and ``.npz``
files, ``.coral/config``, ref names (path traversal included) and the CLI's
metric options.
"""

from __future__ import annotations

import contextlib
import json
import os
import struct
import tempfile
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import click
import numpy as np
import pytest
import xxhash
from hypothesis import HealthCheck, assume, example, given, settings
from hypothesis import strategies as st

from coral_cli.parsing import metric_filters, metric_pairs
from coral_core import (
    CoralError,
    InvalidRefNameError,
    MemoryStore,
    Repository,
    WeightTensor,
    bit_view,
)
from coral_core.config import RepoConfig
from coral_core.formats import read_npz, read_safetensors, write_npz, write_safetensors
from coral_core.object_format import HEADER_SIZE, ObjectKind, object_key, parse_header
from coral_core.objects import ObjectDatabase
from coral_core.refnames import validate_ref_name
from coral_core.refs import HEADS, RefDatabase

#: CORAL_FUZZ_EXAMPLES=20000 for a long hunt; the default keeps the file at a few seconds.
FUZZ = settings(
    max_examples=int(os.environ.get("CORAL_FUZZ_EXAMPLES", "150")),
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
HEADER = struct.Struct("<4sBBHQQQ")  # as coral_core.objects
#: Deeply nested JSON: ``json.loads`` raises RecursionError on it, not ValueError.
DEEP_JSON = b"[" * 100_000


def files_under(root: Path) -> set[Path]:
    return {p for p in root.rglob("*") if p.is_file()}


def mutate(data: bytes, draw: Callable[[st.SearchStrategy[Any]], Any]) -> bytes:
    """A few random edits of ``data``: bit flips, overwrites, cuts, insertions."""
    out = bytearray(data)
    for _ in range(draw(st.integers(1, 4))):
        edit = draw(st.sampled_from(["flip", "set", "cut", "insert"]))
        at = draw(st.integers(0, max(len(out) - 1, 0)))
        if edit == "flip" and out:
            out[at] ^= 1 << draw(st.integers(0, 7))
        elif edit == "set" and out:
            out[at] = draw(st.sampled_from([0, 0xFF, 0x7F, 0x80, ord("["), ord('"')]))
        elif edit == "cut":
            del out[at : at + draw(st.integers(1, 64))]
        else:
            out[at:at] = draw(st.binary(min_size=1, max_size=16))
    return bytes(out)


# -- objects -------------------------------------------------------------------------


def sample_objects() -> tuple[ObjectDatabase, dict[str, bytes]]:
    """A database holding one object of every kind and codec, and their bytes."""
    db = ObjectDatabase(MemoryStore(), chunk_size=1024)
    rng = np.random.default_rng(0)
    smooth = (np.round(rng.standard_normal(700) * 16) / 16).astype(np.float32)
    base = db.write_tensor(WeightTensor(smooth)).tensor_id
    tweaked = smooth.copy()
    tweaked[::30] += np.float32(1e-3)
    db.write_tensor(WeightTensor(tweaked), reference=base)  # delta chunks
    db.write_tensor(WeightTensor(rng.integers(0, 256, 900, dtype=np.uint8)))  # raw chunks
    tree = db.write_document(ObjectKind.TREE, {"entries": {"w": {"tensor": base}}})
    db.write_document(ObjectKind.COMMIT, {"tree": tree, "parents": [], "message": "x" * 200})
    blobs = {object_id: db.store.get(object_key(object_id)) for object_id in db.iter_ids()}
    return db, blobs


SAMPLE_DB, SAMPLE_BLOBS = sample_objects()


def data_reads(db: ObjectDatabase) -> dict[str, Callable[[str], object]]:
    """The reads that return an object's content: each must fail or return it exactly."""
    return {
        "check_object": db.check_object,
        "read_chunk": db.read_chunk,
        "read_tensor": lambda i: bit_view(db.read_tensor(i)).tobytes(),
        **{f"read_document {k.name}": partial(db.read_document, k) for k in ObjectKind},
    }


def metadata_reads(db: ObjectDatabase) -> list[Callable[[str], object]]:
    """Reads of headers and descriptors (a read of the content checks them again)."""
    return [
        db.kind_of,
        db.tensor_descriptor,
        *(partial(db.references, kind=k) for k in ObjectKind),
    ]


def outcome(read: Callable[[str], object], object_id: str) -> tuple[bool, object]:
    """(True, result) or (False, None) when ``read`` raised a CoralError."""
    try:
        return True, read(object_id)
    except CoralError:
        return False, None


EXPECTED = {
    object_id: {name: outcome(read, object_id) for name, read in data_reads(SAMPLE_DB).items()}
    for object_id in SAMPLE_BLOBS
}


def assert_no_wrong_data(db: ObjectDatabase, object_id: str) -> None:
    """Every read raises a CoralError or returns what the intact object holds;
    ``check_tensor`` finds a tensor sound only when it reads back intact."""
    expected = EXPECTED.get(object_id, {})
    for name, read in data_reads(db).items():
        done, result = outcome(read, object_id)
        if done:
            assert expected.get(name) == (True, result), f"{name} returned wrong data"
    for read in metadata_reads(db):
        outcome(read, object_id)
    if outcome(db.check_tensor, object_id) == (True, {}):
        assert expected.get("read_tensor", (False, None))[0]
        assert outcome(data_reads(db)["read_tensor"], object_id) == expected["read_tensor"]


@st.composite
def damaged_objects(draw: Callable[[st.SearchStrategy[Any]], Any]) -> tuple[str, bytes]:
    """A stored object with random edits of its header fields, parameters or
    payload; its checksum recomputed half of the time, so that decoding goes on."""
    object_id = draw(st.sampled_from(sorted(SAMPLE_BLOBS)))
    blob = SAMPLE_BLOBS[object_id]
    magic, kind, codec, params_size, raw, _, checksum = HEADER.unpack_from(blob)
    body = blob[HEADER_SIZE:]
    if draw(st.booleans()):
        body = mutate(body, draw)
    kind = draw(st.sampled_from([kind, draw(st.integers(0, 255))]))
    codec = draw(st.sampled_from([codec, draw(st.integers(0, 255))]))
    raw = draw(st.sampled_from([raw, raw + 1, max(raw - 1, 0), draw(st.integers(0, 2**64 - 1))]))
    params_size = min(draw(st.sampled_from([params_size, draw(st.integers(0, 0xFFFF))])), len(body))
    if draw(st.booleans()):
        checksum = xxhash.xxh3_64_intdigest(body)
    header = HEADER.pack(magic, kind, codec, params_size, raw, len(body) - params_size, checksum)
    return object_id, header + body


@FUZZ
@given(blob=st.binary(max_size=200))
@example(blob=b"CRL1" + bytes(28))
@example(blob=b"CRL1\x01\x01" + b"\xff" * 26)
def test_random_bytes_are_no_header_and_no_object(blob: bytes) -> None:
    with contextlib.suppress(CoralError):
        parse_header("ab" * 16, blob)
    db = ObjectDatabase(MemoryStore(), chunk_size=1024)
    db.store.put(object_key("ab" * 16), blob)
    assert_no_wrong_data(db, "ab" * 16)


@FUZZ
@given(damaged=damaged_objects())
def test_damaged_objects_raise_only_coral_errors(damaged: tuple[str, bytes]) -> None:
    object_id, blob = damaged
    assume(blob != SAMPLE_BLOBS[object_id])
    db = ObjectDatabase(MemoryStore(), chunk_size=1024)
    for other, original in SAMPLE_BLOBS.items():  # delta bases and the rest, intact
        db.store.put(object_key(other), original)
    db.store.put(object_key(object_id), blob)
    assert_no_wrong_data(db, object_id)


def test_a_delta_chunk_without_a_base_is_corrupt_not_a_key_error() -> None:
    """Found by the fuzzer: a chunk whose (checksummed) parameters name no base
    made ``references`` (used by gc, verify and fetch) raise KeyError."""
    delta = next(
        i for i, b in SAMPLE_BLOBS.items() if b"base" in b[HEADER_SIZE : HEADER_SIZE + 400]
    )
    magic, kind, codec, params_size, raw, payload_size, _ = HEADER.unpack_from(SAMPLE_BLOBS[delta])
    body = SAMPLE_BLOBS[delta][HEADER_SIZE:].replace(b'"base"', b'"case"', 1)
    db = ObjectDatabase(MemoryStore(), chunk_size=1024)
    checksum = xxhash.xxh3_64_intdigest(body)
    header = HEADER.pack(magic, kind, codec, params_size, raw, payload_size, checksum)
    db.store.put(object_key(delta), header + body)
    with pytest.raises(CoralError, match="malformed"):
        db.references(delta, ObjectKind.CHUNK)


# -- model files ---------------------------------------------------------------------

SAMPLE_ARRAYS: dict[str, np.ndarray] = {
    "w": np.arange(24, dtype=np.float32).reshape(4, 6),
    "b": np.array([1, -2, 3], dtype=np.int16),
    "empty": np.zeros((0, 3), dtype=np.float64),
    "flag": np.array(True),
}


def assert_reads_or_refuses(read: Callable[[Path], dict[str, np.ndarray]], path: Path) -> None:
    """``read`` returns arrays (each fully readable) or raises a CoralError."""
    try:
        arrays = read(path)
    except CoralError:
        return
    for array in arrays.values():
        np.asarray(array).tobytes()


@st.composite
def safetensors_headers(draw: Callable[[st.SearchStrategy[Any]], Any]) -> bytes:
    """A header of plausible shape with odd values: bad dtypes, huge or negative
    dimensions, offsets that overlap or run past the end."""
    number = (
        st.integers(-3, 2**70) | st.sampled_from([0, 1, 24, 96]) | st.floats() | st.text(max_size=3)
    )
    entry = st.fixed_dictionaries(
        {
            "dtype": st.sampled_from(["F32", "I16", "BOOL", "F8_E4M3", "X9"]) | st.integers(),
            "shape": st.lists(number, max_size=4) | number,
            "data_offsets": st.lists(number, max_size=3),
        }
    )
    header = draw(st.dictionaries(st.text(max_size=4), entry | number, max_size=4))
    return json.dumps(header).encode()


def sample_files() -> dict[str, bytes]:
    """The sample arrays as a .safetensors, an .npz and a compressed .npz file."""
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        write_safetensors(folder / "m.safetensors", SAMPLE_ARRAYS)
        write_npz(folder / "m.npz", SAMPLE_ARRAYS)
        np.savez_compressed(folder / "c.npz", **SAMPLE_ARRAYS)  # type: ignore[arg-type]
        return {p.name: p.read_bytes() for p in folder.iterdir()}


MODEL_FILES = sample_files()


@FUZZ
@given(data=st.data())
@example(data=None)  # the deeply nested header, replaced below
def test_damaged_safetensors_files_are_refused_cleanly(
    tmp_path: Path, data: st.DataObject | None
) -> None:
    original = MODEL_FILES["m.safetensors"]
    if data is None:
        blob = len(DEEP_JSON).to_bytes(8, "little") + DEEP_JSON
    elif data.draw(st.booleans(), label="new header"):
        header = data.draw(safetensors_headers(), label="header")
        blob = len(header).to_bytes(8, "little") + header + original[-200:]
    else:
        blob = mutate(original, data.draw)
    path = tmp_path / "fuzz.safetensors"
    path.write_bytes(blob)
    assert_reads_or_refuses(read_safetensors, path)


@FUZZ
@given(name=st.sampled_from(["m.npz", "c.npz"]), data=st.data())
@example(name="npy", data=None)  # an .npy file named .npz
def test_damaged_npz_files_are_refused_cleanly(
    tmp_path: Path, name: str, data: st.DataObject | None
) -> None:
    path = tmp_path / "fuzz.npz"
    if data is None:
        np.save(path.with_suffix(".npy"), SAMPLE_ARRAYS["w"])
        path.with_suffix(".npy").rename(path)
    else:
        path.write_bytes(mutate(MODEL_FILES[name], data.draw))
    assert_reads_or_refuses(read_npz, path)


# -- config --------------------------------------------------------------------------

JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8),
    lambda children: (
        st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=8), children, max_size=3)
    ),
    max_leaves=12,
)
CONFIG_KEYS = ["core", "user", "delta", "format_version", "chunk_size", "name", "type", "fsync"]


@st.composite
def config_files(draw: Callable[[st.SearchStrategy[Any]], Any]) -> bytes:
    """Random JSON shaped like a config (known sections and keys, odd values) or not."""
    key = st.sampled_from(CONFIG_KEYS) | st.text(max_size=6)
    section = st.dictionaries(key, JSON | st.integers(-2, 3), max_size=4)
    document = draw(st.dictionaries(key, section | JSON, max_size=4) | JSON)
    text = json.dumps(document).encode()
    return mutate(text, draw) if draw(st.booleans()) else text


@FUZZ
@given(blob=config_files() | st.binary(max_size=64))
@example(blob=DEEP_JSON)
@example(blob=b'{"core": {"format_version": 1, "chunk_size": -5}}')
def test_random_config_files_load_or_are_refused(tmp_path: Path, blob: bytes) -> None:
    path = tmp_path / "config"
    path.write_bytes(blob)
    try:
        config = RepoConfig.load(path)
    except CoralError:
        return
    config.items()
    with contextlib.suppress(CoralError):
        config.delta_config()


# -- ref names -----------------------------------------------------------------------

NAME_PARTS = st.sampled_from(
    ["..", ".", "", "refs", "heads", "x", "main", ".lock", "a.lock", "@{", "~", "\\", "/", "\0"]
)
REF_NAMES = (
    st.lists(NAME_PARTS | st.text(max_size=6), min_size=1, max_size=6).map("/".join)
    | st.text(max_size=20)
    | st.sampled_from(["../../x", "refs/../../x", "/etc/passwd", "a/../../b", "x" * 300])
)


@FUZZ
@given(name=REF_NAMES)
def test_ref_names_never_leave_coral(name: str) -> None:
    """Every ref operation on any name either works inside ``.coral`` or raises a
    CoralError; nothing appears outside ``.coral``."""
    with tempfile.TemporaryDirectory() as tmp:
        top = Path(tmp)
        Repository(top / "repo", init=True).config.set("core.fsync", False)  # speed only
        repo = Repository(top / "repo")
        commit = repo.commit("one", weights={"w": np.arange(3.0)}).commit_hash
        before = files_under(top)
        for operation in (
            lambda: repo.create_branch(name),
            lambda: repo.tag_version(name),
            lambda: repo.resolve(name),
            lambda: repo.reflog(name),
            lambda: repo.checkout(name),
            lambda: repo.delete_branch(name),
            lambda: repo.delete_tag(name),
        ):
            with contextlib.suppress(CoralError):
                operation()
        # The ref database trusts its callers to validate names (a name that
        # clashes with a folder is an OSError there) but never leaves .coral.
        refs = RefDatabase(repo.coral_dir)
        for low_level in (
            lambda: refs.write(HEADS + name, commit),
            lambda: refs.read(HEADS + name),
            lambda: refs.log_move(HEADS + name, None, commit, "fuzz", "fuzz"),
            lambda: refs.delete(HEADS + name),
            lambda: refs.write(name, commit),
            lambda: refs.delete(name),
        ):
            with contextlib.suppress(CoralError, OSError):
                low_level()
        coral = repo.coral_dir.resolve()
        outside = [p for p in files_under(top) - before if coral not in p.resolve().parents]
        assert outside == []
        try:
            validate_ref_name(name)
        except InvalidRefNameError:
            return
        assert (coral / HEADS / name).resolve().is_relative_to(coral / HEADS)


# -- CLI values ----------------------------------------------------------------------

OPS = st.sampled_from([">", ">=", "<", "<=", "==", "!=", "=", "~", ""])
METRIC_TEXT = st.builds(
    "".join,
    st.lists(
        st.text(max_size=6) | OPS | st.sampled_from(["1e400", "nan", "-0", "1" * 5000]), max_size=4
    ),
)


@FUZZ
@given(values=st.lists(METRIC_TEXT, max_size=4))
def test_metric_options_parse_or_are_refused(values: list[str]) -> None:
    for parse in (metric_filters, metric_pairs):
        try:
            parsed = parse(values)
        except click.BadParameter:
            continue
        assert isinstance(parsed, dict)
        assert len(parsed) <= len(values)
