"""Dtypes by name, WeightMetadata/WeightTensor validation, and content ids."""

from __future__ import annotations

import math
from typing import Any

import ml_dtypes
import numpy as np
import pytest
import xxhash
from hypothesis import given, settings

from coral_core import (
    SUPPORTED_DTYPES,
    TensorMismatchError,
    UnsupportedDtypeError,
    WeightMetadata,
    WeightTensor,
    bit_view,
    dtype_name,
    numpy_dtype,
)
from coral_core.dtypes import bits_dtype
from coral_core.testing.strategies import (
    SPECIAL_BITS,
    SPECIAL_PATTERNS,
    arrays,
    special_float_bits,
    special_values,
)


def reference_id(array: np.ndarray, dtype: str) -> str:
    """The content id computed independently: xxh3-128 of a header and the C-order bytes."""
    shape = ",".join(str(d) for d in array.shape)
    hasher = xxhash.xxh3_128(f"coral-tensor\0{dtype}\0{shape}\0".encode())
    hasher.update(np.ascontiguousarray(array).tobytes())
    return hasher.hexdigest()


# -- dtype names -----------------------------------------------------------------------


@pytest.mark.parametrize("name", SUPPORTED_DTYPES)
def test_every_supported_dtype_has_one_canonical_name(name: str) -> None:
    np_dtype = numpy_dtype(name)
    assert dtype_name(name) == name
    assert dtype_name(np_dtype) == name
    assert dtype_name(np_dtype.type) == name
    assert dtype_name(name.upper()) == name
    assert dtype_name(f"torch.{name}") == name
    assert numpy_dtype(np_dtype) == np_dtype


@pytest.mark.parametrize(
    ("alias", "name"),
    [
        ("bf16", "bfloat16"),
        ("torch.bfloat16", "bfloat16"),
        ("fp16", "float16"),
        ("half", "float16"),
        ("fp32", "float32"),
        ("float", "float32"),  # torch.float is float32
        ("torch.float", "float32"),
        ("fp64", "float64"),
        ("double", "float64"),
        ("bool_", "bool"),
        ("f8_e4m3fn", "float8_e4m3fn"),
        ("f8_e5m2", "float8_e5m2"),
        ("tf.float32", "float32"),
    ],
)
def test_dtype_aliases(alias: str, name: str) -> None:
    assert dtype_name(alias) == name
    assert numpy_dtype(alias) == numpy_dtype(name)


@pytest.mark.parametrize(
    ("dtype", "name"),
    [
        (np.float32, "float32"),
        (float, "float64"),  # numpy's meaning of the Python type
        (int, "int64"),
        (bool, "bool"),
        (np.bool_, "bool"),
        (ml_dtypes.bfloat16, "bfloat16"),
        (ml_dtypes.float8_e4m3fn, "float8_e4m3fn"),
        (ml_dtypes.float8_e5m2, "float8_e5m2"),
        (np.dtype("<f4"), "float32"),
        (np.complex64, "complex64"),
    ],
)
def test_dtype_objects(dtype: Any, name: str) -> None:
    assert dtype_name(dtype) == name


@pytest.mark.parametrize(
    "dtype",
    [
        object,
        np.dtype(object),
        "object",
        str,
        np.dtype("U4"),
        "str",
        bytes,
        np.dtype("S3"),
        np.dtype("datetime64[s]"),
        np.dtype([("a", np.float32)]),
        np.longdouble,
        "float128",
        "int4",
        "",
        3.5,
    ],
    ids=repr,
)
def test_unsupported_dtypes_are_refused(dtype: Any) -> None:
    with pytest.raises(UnsupportedDtypeError) as caught:
        dtype_name(dtype)
    assert isinstance(caught.value, TypeError)
    assert "float32" in str(caught.value)  # the message lists what is supported
    with pytest.raises(UnsupportedDtypeError):
        numpy_dtype(dtype)


@pytest.mark.parametrize(
    "array",
    [np.array(["a", "bc"]), np.array([object(), 1], dtype=object), np.array([b"x"])],
    ids=["str", "object", "bytes"],
)
def test_tensors_of_unsupported_dtypes_are_refused(array: np.ndarray) -> None:
    with pytest.raises(UnsupportedDtypeError):
        WeightTensor(array)
    with pytest.raises(UnsupportedDtypeError):
        WeightMetadata("w", array.shape, array.dtype)


# -- bit views -------------------------------------------------------------------------


@pytest.mark.parametrize("name", SUPPORTED_DTYPES)
def test_bit_view_is_an_unsigned_view(name: str) -> None:
    np_dtype = numpy_dtype(name)
    array = np.arange(12, dtype=np.uint8).repeat(np_dtype.itemsize).view(np_dtype)
    bits = bit_view(array)
    assert bits.dtype == bits_dtype(name)
    assert bits.dtype.kind == "u"
    assert bits.nbytes == array.nbytes
    assert bits.tobytes() == array.tobytes()
    assert np.shares_memory(bits, array)  # contiguous input: no copy


@pytest.mark.parametrize("name", sorted(SPECIAL_BITS))
def test_bit_view_tells_apart_what_float_equality_confuses(name: str) -> None:
    values = special_values(name)
    bits = bit_view(values)
    assert bits.tolist() == SPECIAL_BITS[name]
    assert len(set(bits.tolist())) == len(values)  # NaN payloads and -0.0 stay distinct


def test_bit_view_of_zero_and_negative_zero() -> None:
    zeros = np.array([0.0, -0.0], dtype=np.float32)
    assert zeros[0] == zeros[1]
    assert bit_view(zeros).tolist() == [0, 0x80000000]


def test_bit_view_of_non_contiguous_and_0d_arrays() -> None:
    base = np.arange(24, dtype=np.float32).reshape(4, 6)
    strided = base[::2, 1::2]
    fortran = np.asfortranarray(base)
    assert bit_view(strided).tolist() == np.ascontiguousarray(strided).view(np.uint32).tolist()
    assert bit_view(fortran).tobytes() == base.tobytes()
    scalar = np.array(-0.0, dtype=np.float64)
    assert bit_view(scalar).shape == ()
    assert int(bit_view(scalar)) == 0x8000000000000000


def test_bit_view_of_complex128_compares_both_halves() -> None:
    a = np.array([1 + 2j, complex(3.0, -0.0)], dtype=np.complex128)
    b = np.array([1 + 2j, 3 + 0j], dtype=np.complex128)
    assert np.array_equal(a, b)
    assert not np.array_equal(bit_view(a), bit_view(b))


# -- metadata and tensors --------------------------------------------------------------


def test_metadata_normalises_shape_and_dtype() -> None:
    metadata = WeightMetadata("w", [2, np.int64(3)], "bf16")  # type: ignore[arg-type]
    assert metadata.shape == (2, 3)
    assert all(type(d) is int for d in metadata.shape)
    assert metadata.dtype == np.dtype(ml_dtypes.bfloat16)
    assert metadata.dtype_name == "bfloat16"


def test_metadata_refuses_negative_dimensions() -> None:
    with pytest.raises(TensorMismatchError):
        WeightMetadata("w", (2, -1), "float32")


def test_tensor_infers_metadata() -> None:
    array = np.zeros((3, 4), dtype=np.float16)
    tensor = WeightTensor(array, name="layer.weight")
    assert tensor.name == "layer.weight"
    assert tensor.shape == (3, 4)
    assert tensor.dtype == np.float16
    assert tensor.metadata.dtype_name == "float16"
    assert tensor.size == 12
    assert tensor.nbytes == 24
    assert "float16" in repr(tensor)


def test_tensor_accepts_matching_metadata() -> None:
    array = np.zeros((2, 3), dtype=ml_dtypes.bfloat16)
    tensor = WeightTensor(array, WeightMetadata("w", (2, 3), "bfloat16", layer_type="Linear"))
    assert tensor.metadata.layer_type == "Linear"
    assert tensor.data is array  # contiguous input is not copied


@pytest.mark.parametrize(
    ("shape", "dtype"),
    [((3, 2), "float32"), ((6,), "float32"), ((2, 3, 1), "float32"), ((2, 3), "float64")],
)
def test_tensor_refuses_shape_or_dtype_mismatches(shape: tuple[int, ...], dtype: str) -> None:
    array = np.zeros((2, 3), dtype=np.float32)
    with pytest.raises(TensorMismatchError) as caught:
        WeightTensor(array, WeightMetadata("w", shape, dtype))
    assert isinstance(caught.value, ValueError)
    assert "'w'" in str(caught.value)


def test_tensor_refuses_same_width_dtype_mismatches() -> None:
    """bfloat16 and float16 have the same width; the metadata must still match."""
    array = np.zeros(4, dtype=np.float16)
    with pytest.raises(TensorMismatchError):
        WeightTensor(array, WeightMetadata("w", (4,), "bfloat16"))
    with pytest.raises(TensorMismatchError):
        WeightTensor(array.view(np.int16), WeightMetadata("w", (4,), "float16"))


def test_non_contiguous_input_is_made_contiguous() -> None:
    base = np.arange(60, dtype=np.int32).reshape(6, 10)
    for array in (base[::2, 3:7], base.T, np.asfortranarray(base)):
        tensor = WeightTensor(array)
        assert tensor.data.flags.c_contiguous
        assert np.array_equal(tensor.data, array)
        assert bytes(tensor.raw_bytes()) == np.ascontiguousarray(array).tobytes()
        assert tensor.compute_hash() == WeightTensor(np.ascontiguousarray(array)).compute_hash()


@pytest.mark.parametrize("shape", [(), (0,), (0, 3), (3, 0), (1,), (1, 1, 1)])
def test_scalar_and_empty_tensors(shape: tuple[int, ...]) -> None:
    array = np.full(shape, 7, dtype=np.int16)
    tensor = WeightTensor(array)
    assert tensor.shape == shape
    assert tensor.size == array.size
    assert bytes(tensor.raw_bytes()) == array.tobytes()
    assert tensor.compute_hash() == reference_id(array, "int16")


# -- content ids -----------------------------------------------------------------------


@settings(max_examples=80, deadline=None)
@given(array=arrays(max_side=8))
def test_content_id_is_xxh3_128_over_dtype_shape_and_bytes(array: np.ndarray) -> None:
    tensor = WeightTensor(array)
    tensor_id = tensor.compute_hash()
    assert len(tensor_id) == 32
    assert set(tensor_id) <= set("0123456789abcdef")
    assert tensor_id == reference_id(array, dtype_name(array.dtype))
    assert WeightTensor(array.copy()).compute_hash() == tensor_id  # same data, same id


def test_same_bytes_with_another_shape_get_another_id() -> None:
    array = np.arange(12, dtype=np.float32)
    ids = {WeightTensor(array.reshape(shape)).compute_hash() for shape in [(12,), (3, 4), (4, 3)]}
    ids.add(WeightTensor(array.reshape(1, 12)).compute_hash())
    assert len(ids) == 4


def test_same_bytes_with_another_dtype_get_another_id() -> None:
    array = np.arange(8, dtype=np.float32)
    dtypes = [np.float32, np.int32, np.uint32, np.uint8, np.float16, ml_dtypes.bfloat16, np.int16]
    views: list[np.ndarray] = [array.view(dtype) for dtype in dtypes]
    ids = {WeightTensor(view).compute_hash() for view in views}
    assert len(ids) == len(views)


def test_empty_tensors_differ_by_shape_and_dtype() -> None:
    ids = {
        WeightTensor(np.zeros(shape, dtype=dtype)).compute_hash()
        for shape in [(0,), (0, 0), (0, 3), (3, 0)]
        for dtype in (np.float32, np.int32)
    }
    ids.add(WeightTensor(np.zeros((), dtype=np.float32)).compute_hash())
    assert len(ids) == 9


def test_every_bit_counts_in_the_id() -> None:
    array = np.zeros(4, dtype=np.float32)
    flipped = array.copy()
    flipped[0] = -0.0
    assert WeightTensor(array).compute_hash() != WeightTensor(flipped).compute_hash()
    nan_a = np.array([0x7FC00000], dtype=np.uint32).view(np.float32)
    nan_b = np.array([0x7FC00001], dtype=np.uint32).view(np.float32)
    assert WeightTensor(nan_a).compute_hash() != WeightTensor(nan_b).compute_hash()


def test_id_ignores_names_and_other_metadata() -> None:
    array = np.ones(3, dtype=np.float32)
    named = WeightTensor(array, WeightMetadata("a", (3,), "float32", layer_type="Linear"))
    assert named.compute_hash() == WeightTensor(array, name="b").compute_hash()


def test_id_follows_in_place_changes() -> None:
    tensor = WeightTensor(np.zeros(4, dtype=np.float32))
    before = tensor.compute_hash()
    tensor.data[2] = 1.0
    assert tensor.compute_hash() != before
    assert tensor.compute_hash() == reference_id(tensor.data, "float32")


# -- the shipped strategies reach the nasty values -------------------------------------


@pytest.mark.parametrize("name", sorted(SPECIAL_PATTERNS))
def test_special_patterns_are_what_they_claim(name: str) -> None:
    np_dtype = numpy_dtype(name)
    info: Any = ml_dtypes.finfo(np_dtype)  # type: ignore[no-untyped-call]
    word = np.dtype(f"u{np_dtype.itemsize}")

    def value(pattern: str) -> float:
        bits = np.array([SPECIAL_PATTERNS[name][pattern]], dtype=word)
        with np.errstate(invalid="ignore"):  # casting a signalling NaN raises 'invalid'
            return float(bits.view(np_dtype).astype(np.float64)[0])

    patterns = SPECIAL_PATTERNS[name]
    assert value("max_finite") == float(info.max)
    assert value("negative_max_finite") == -float(info.max)
    assert value("smallest_subnormal") == float(info.smallest_subnormal)
    assert value("smallest_normal") == float(info.smallest_normal)
    assert value("negative_zero") == 0.0
    assert math.copysign(1.0, value("negative_zero")) == -1.0
    nans = [p for p in patterns if "nan" in p]
    assert nans
    assert all(math.isnan(value(p)) for p in nans)
    if "inf" in patterns:
        assert value("inf") == math.inf
        assert value("negative_inf") == -math.inf
        mantissa_bits = info.nmant
        quiet = 1 << (mantissa_bits - 1)
        assert patterns["quiet_nan_with_payload"] & quiet
        assert not patterns["signalling_nan"] & quiet
        assert not patterns["negative_signalling_nan_with_payload"] & quiet
    assert len(set(patterns.values())) == len(patterns)


@settings(max_examples=60, deadline=None)
@given(array=special_float_bits())
def test_special_float_bits_hold_only_special_patterns(array: np.ndarray) -> None:
    name = dtype_name(array.dtype)
    assert name in SPECIAL_BITS
    assert set(bit_view(array).tolist()) <= set(SPECIAL_BITS[name])


@settings(max_examples=60, deadline=None)
@given(array=arrays(max_bytes=256))
def test_arrays_strategy_stays_within_its_bounds(array: np.ndarray) -> None:
    assert dtype_name(array.dtype) in SUPPORTED_DTYPES
    assert array.flags.c_contiguous
    assert array.ndim <= 3
    assert array.nbytes <= 256
    if array.dtype == np.bool_:
        assert set(array.view(np.uint8).reshape(-1).tolist()) <= {0, 1}
