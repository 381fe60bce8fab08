"""Model file formats: the built-in .safetensors reader/writer and plugin lookup."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from coral_core import (
    SAFETENSORS,
    ModelFileError,
    UnknownModelFormatError,
    bit_view,
    format_for,
    formats,
)
from coral_core.formats import read_safetensors, write_safetensors
from coral_core.testing.strategies import arrays

SAFETENSORS_DTYPES = [
    "float64",
    "float32",
    "float16",
    "bfloat16",
    "float8_e4m3fn",
    "float8_e5m2",
    "int64",
    "int32",
    "int16",
    "int8",
    "uint8",
    "bool",
]
needs_library = pytest.mark.skipif(
    importlib.util.find_spec("safetensors") is None, reason="safetensors is not installed"
)


def same(a: np.ndarray, b: np.ndarray) -> bool:
    return a.dtype == b.dtype and a.shape == b.shape and np.array_equal(bit_view(a), bit_view(b))


@settings(max_examples=60, deadline=None)
@given(
    st.dictionaries(
        st.text(min_size=1, max_size=8),
        st.sampled_from(SAFETENSORS_DTYPES).flatmap(lambda d: arrays(dtype=d, max_side=5)),
        max_size=4,
    )
)
def test_round_trip_is_bitwise(tmp_path_factory: pytest.TempPathFactory, tensors: dict) -> None:
    path = tmp_path_factory.mktemp("st") / "model.safetensors"
    write_safetensors(path, tensors)
    back = read_safetensors(path)
    assert back.keys() == tensors.keys()
    assert all(same(back[name], tensors[name]) for name in tensors)


@needs_library
def test_files_agree_with_the_safetensors_library(tmp_path: Path) -> None:
    from safetensors.numpy import load_file, save_file

    rng = np.random.default_rng(0)
    tensors = {
        "w": rng.standard_normal((4, 3)).astype(np.float32),
        "e": np.zeros((0, 2), np.float16),
        "i": np.arange(5, dtype=np.int64),
        "s": np.array(3.5),
    }
    save_file(tensors, str(tmp_path / "theirs.safetensors"), metadata={"format": "np"})
    ours = read_safetensors(tmp_path / "theirs.safetensors")
    assert all(same(ours[n], tensors[n]) for n in tensors)
    write_safetensors(tmp_path / "ours.safetensors", tensors)
    theirs = load_file(str(tmp_path / "ours.safetensors"))
    assert all(same(theirs[n], tensors[n]) for n in tensors)


def test_damaged_files_are_refused_with_their_name(tmp_path: Path) -> None:
    path = tmp_path / "model.safetensors"
    write_safetensors(path, {"w": np.arange(100, dtype=np.float32)})
    data = path.read_bytes()
    cases = {
        "short.safetensors": data[:5],
        "truncated.safetensors": data[:-4],
        "header.safetensors": (10**9).to_bytes(8, "little") + data[8:],
        "json.safetensors": data[:8] + b"\x00" + data[9:],
    }
    for name, content in cases.items():
        (tmp_path / name).write_bytes(content)
        with pytest.raises(ModelFileError, match=name.replace(".", r"\.")):
            read_safetensors(tmp_path / name)


def test_formats_are_found_by_suffix(monkeypatch: pytest.MonkeyPatch) -> None:
    assert format_for("a/model.SAFETENSORS") is SAFETENSORS
    monkeypatch.setitem(formats.PLUGIN_PACKAGES, ".ckptx", "coral-ckptx")  # not installed
    with pytest.raises(UnknownModelFormatError, match="pip install coral-ckptx"):
        format_for("model.ckptx")
    with pytest.raises(UnknownModelFormatError, match=r"known: .*\.safetensors"):
        format_for("model.onnx")
    if importlib.util.find_spec("coral_torch") is not None:  # its entry point plugs in .pt
        assert format_for("model.pt").name == "torch"
