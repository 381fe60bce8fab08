"""Delta encoding: lossless strategies are bitwise exact, lossy ones keep their bound."""

from __future__ import annotations

import ml_dtypes
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from coral_core import TensorMismatchError, WeightTensor, bit_view
from coral_core.delta import (
    DeltaConfig,
    DeltaEncoder,
    DeltaType,
    apply_delta,
)

LOSSLESS = [t for t in DeltaType if t.is_lossless]
LOSSY = [t for t in DeltaType if not t.is_lossless]
FLOATS = ["float64", "float32", "float16", "bfloat16", "float8_e4m3fn", "float8_e5m2"]


def bits_array(dtype: str, words: list[int], shape: tuple[int, ...] | None = None) -> np.ndarray:
    np_dtype = np.dtype(ml_dtypes.bfloat16) if dtype == "bfloat16" else None
    np_dtype = np_dtype or np.dtype(getattr(ml_dtypes, dtype, None) or dtype)
    width = np_dtype.itemsize
    raw = np.array([w % (1 << (8 * width)) for w in words], dtype=f"u{width}")
    array = raw.view(np_dtype)
    return array.reshape(shape) if shape else array


def exact(a: np.ndarray, b: np.ndarray) -> bool:
    return a.dtype == b.dtype and a.shape == b.shape and np.array_equal(bit_view(a), bit_view(b))


def encoder_for(kind: DeltaType) -> DeltaEncoder:
    return DeltaEncoder(DeltaConfig(delta_type=kind))


@settings(max_examples=60, deadline=None)
@given(
    kind=st.sampled_from(LOSSLESS),
    dtype=st.sampled_from(FLOATS),
    pairs=st.lists(st.tuples(st.integers(0, 2**64 - 1), st.integers(0, 2**64 - 1)), max_size=300),
)
def test_lossless_round_trip_any_bits(
    kind: DeltaType, dtype: str, pairs: list[tuple[int, int]]
) -> None:
    """Decoding gives the same bits and leaves the reference alone; so does
    applying the delta in place, as the repository does into a slice of the
    tensor's buffer that holds the base."""
    current = WeightTensor(bits_array(dtype, [a for a, _ in pairs]), name="w")
    reference = WeightTensor(bits_array(dtype, [b for _, b in pairs]), name="w")
    encoder = encoder_for(kind)
    if not encoder.supports(dtype):
        with pytest.raises(TensorMismatchError):
            encoder.encode_delta(current, reference)
        return
    kept = reference.data.copy()
    delta = encoder.encode_delta(current, reference)
    assert delta.is_lossless
    assert exact(encoder.decode_delta(delta, reference).data, current.data)
    assert exact(reference.data, kept)
    buffer = np.zeros(kept.nbytes + 16, dtype=np.uint8)
    target = buffer[8 : 8 + kept.nbytes].view(kept.dtype)
    target[...] = kept
    apply_delta(kind, delta.data, delta.metadata, target)
    assert exact(target, current.data)
    assert not buffer[:8].any()
    assert not buffer[8 + kept.nbytes :].any()


SPECIAL_F32 = [0x7FC00001, 0xFFBFFFFF, 0x80000000, 0x7F800000, 0xFF800000, 0x00000001, 0x007FFFFF]


SUPPORTED_PAIRS = [
    (kind, dtype)
    for kind in LOSSLESS
    for dtype in ("float32", "bfloat16", "float16", "float64")
    if encoder_for(kind).supports(dtype)
]


@pytest.mark.parametrize(("kind", "dtype"), SUPPORTED_PAIRS)
def test_lossless_on_nasty_patterns_and_shapes(kind: DeltaType, dtype: str) -> None:
    encoder = encoder_for(kind)
    width = np.dtype(ml_dtypes.bfloat16 if dtype == "bfloat16" else dtype).itemsize * 8
    patterns = [w >> (32 - width) if width < 32 else w for w in SPECIAL_F32]
    rng = np.random.default_rng(0)
    for shape in [(7,), (), (0, 3), (4, 5)]:
        size = int(np.prod(shape, dtype=np.int64))
        words = [patterns[i % len(patterns)] for i in range(size)]
        noise = rng.integers(0, 2**16, size).tolist()
        current = WeightTensor(bits_array(dtype, words, shape), name="w")
        reference = WeightTensor(bits_array(dtype, noise, shape), name="w")
        delta = encoder.encode(reference, current)
        assert exact(encoder.decode(delta, reference).data, current.data)


@pytest.mark.parametrize(
    "kind", [DeltaType.FLOAT32_RAW, DeltaType.COMPRESSED, DeltaType.XOR_FLOAT32]
)
@pytest.mark.parametrize("dtype", [np.int8, np.int64, np.uint8, np.bool_])
def test_integer_tensors(kind: DeltaType, dtype: type) -> None:
    rng = np.random.default_rng(1)
    current = WeightTensor(rng.integers(0, 2, 100).astype(dtype), name="i")
    reference = WeightTensor(rng.integers(0, 2, 100).astype(dtype), name="i")
    encoder = encoder_for(kind)
    assert exact(
        encoder.decode_delta(encoder.encode_delta(current, reference), reference).data, current.data
    )


def fine_tune_pair(dtype: str = "float32", size: int = 20_000) -> tuple[WeightTensor, WeightTensor]:
    rng = np.random.default_rng(2)
    base = rng.standard_normal(size) * 0.05
    tuned = base + rng.standard_normal(size) * 1e-4
    np_dtype = ml_dtypes.bfloat16 if dtype == "bfloat16" else dtype
    return (
        WeightTensor(tuned.astype(np_dtype), name="w"),
        WeightTensor(base.astype(np_dtype), name="w"),
    )


@pytest.mark.parametrize(
    "kind", [DeltaType.XOR_FLOAT32, DeltaType.EXPONENT_MANTISSA, DeltaType.COMPRESSED]
)
def test_similar_tensors_compress(kind: DeltaType) -> None:
    current, reference = fine_tune_pair()
    delta = encoder_for(kind).encode_delta(current, reference)
    assert delta.compression_ratio > 0.2  # a fine-tuning step keeps most high bits
    assert delta.reference_hash == reference.compute_hash()
    assert delta.original_shape == current.shape
    assert delta.original_dtype == "float32"


def test_xor_bfloat16_works_on_bf16_only() -> None:
    current, reference = fine_tune_pair("bfloat16")
    encoder = encoder_for(DeltaType.XOR_BFLOAT16)
    delta = encoder.encode_delta(current, reference)
    assert len(delta.data) < current.nbytes
    assert exact(encoder.decode_delta(delta, reference).data, current.data)
    f32_current, f32_reference = fine_tune_pair()
    assert not encoder.can_encode_as_delta(f32_current, f32_reference)


@pytest.mark.parametrize("kind", LOSSY)
@pytest.mark.parametrize("dtype", ["float32", "float16", "bfloat16"])
def test_lossy_stays_within_its_bound(kind: DeltaType, dtype: str) -> None:
    current, reference = fine_tune_pair(dtype, 4096)
    current = WeightTensor(current.data.reshape(64, 64), name="w")
    reference = WeightTensor(reference.data.reshape(64, 64), name="w")
    encoder = DeltaEncoder(DeltaConfig(delta_type=kind, sparse_threshold=5e-5))
    delta = encoder.encode_delta(current, reference)
    assert not delta.is_lossless
    rebuilt = encoder.decode_delta(delta, reference).data
    error = np.abs(rebuilt.astype(np.float64) - current.data.astype(np.float64)).max()
    assert error <= delta.metadata["max_abs_error"] + 1e-12
    assert delta.metadata["max_abs_error"] < 1e-3


def test_quantized_bound_is_half_a_step_plus_rounding() -> None:
    current, reference = fine_tune_pair("float64", 1000)
    delta = encoder_for(DeltaType.INT8_QUANTIZED).encode_delta(current, reference)
    assert delta.metadata["max_abs_error"] <= delta.metadata["scale"] / 2 + 1e-15


def test_sparse_keeps_non_finite_values_exactly() -> None:
    reference = WeightTensor(np.zeros(10, dtype=np.float32), name="w")
    values = np.zeros(10, dtype=np.float32)
    values[[1, 5, 9]] = [np.nan, np.inf, 2.0]
    current = WeightTensor(values, name="w")
    encoder = encoder_for(DeltaType.SPARSE)
    delta = encoder.encode_delta(current, reference)
    assert delta.metadata["count"] == 3
    assert exact(encoder.decode_delta(delta, reference).data, current.data)
    with pytest.raises(TensorMismatchError, match="finite"):
        encoder_for(DeltaType.INT8_QUANTIZED).encode_delta(current, reference)


def test_mismatches_and_wrong_reference() -> None:
    encoder = DeltaEncoder()
    a = WeightTensor(np.ones(4, dtype=np.float32), name="a")
    with pytest.raises(TensorMismatchError):
        encoder.encode_delta(a, WeightTensor(np.ones(5, dtype=np.float32), name="b"))
    with pytest.raises(TensorMismatchError):
        encoder.encode_delta(a, WeightTensor(np.ones(4, dtype=np.float64), name="b"))
    delta = encoder.encode_delta(a, a)
    with pytest.raises(TensorMismatchError, match="made against"):
        encoder.decode_delta(delta, WeightTensor(np.zeros(4, dtype=np.float32), name="z"))


def test_similarity_gate() -> None:
    current, reference = fine_tune_pair()
    encoder = DeltaEncoder(DeltaConfig(similarity_threshold=0.99))
    assert encoder.can_encode_as_delta(current, reference)
    unrelated = WeightTensor(
        np.random.default_rng(9).standard_normal(20_000).astype(np.float32), name="u"
    )
    assert not encoder.can_encode_as_delta(current, unrelated)


def test_config_is_validated() -> None:
    for bad in (
        {"similarity_threshold": 1.5},
        {"compression_level": 99},
        {"max_chain_length": 0},
        {"sparse_threshold": -1.0},
        {"delta_type": "nope"},
    ):
        with pytest.raises(ValueError):  # noqa: PT011
            DeltaConfig(**bad)  # type: ignore[arg-type]
    assert DeltaConfig(delta_type="sparse").delta_type is DeltaType.SPARSE  # type: ignore[arg-type]
