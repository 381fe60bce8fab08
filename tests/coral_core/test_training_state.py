"""TrainingState: JSON plus tensors in a commit, bit for bit, and kept by gc/verify/repack."""

from __future__ import annotations

import json
import math
import struct

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from coral_core import CorruptObjectError, Repository, TensorMismatchError, TrainingState, bit_view
from coral_core.testing.strategies import arrays

from .conftest import flip_last_bit, make_weights

scalars = (
    st.none()
    | st.booleans()
    | st.integers(-(2**70), 2**70)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=8)
)
keys = st.text(max_size=6) | st.integers(-5, 5) | st.sampled_from(["__tensor__", "__tuple__"])
nested = st.recursive(
    scalars | arrays(max_side=4),
    lambda inner: (
        st.lists(inner, max_size=3)
        | st.lists(inner, max_size=3).map(tuple)
        | st.dictionaries(keys, inner, max_size=3)
    ),
    max_leaves=12,
)


def same(a: object, b: object) -> bool:
    """Equal in type and value; arrays and floats compared bit for bit."""
    if isinstance(a, np.ndarray):
        return (
            isinstance(b, np.ndarray)
            and a.dtype == b.dtype
            and a.shape == b.shape
            and np.array_equal(bit_view(a), bit_view(b))
        )
    if type(a) is not type(b):
        return False
    if isinstance(a, float):
        return struct.pack("<d", a) == struct.pack("<d", b)  # type: ignore[arg-type]
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b, strict=True))  # type: ignore[arg-type]
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)  # type: ignore[attr-defined,index]
    return a == b


@settings(max_examples=150, deadline=None)
@given(optimizer=nested, extra=st.dictionaries(st.text(max_size=5), nested, max_size=3))
def test_storage_round_trip_keeps_types_and_bits(optimizer: object, extra: dict) -> None:
    state = TrainingState(epoch=3, global_step=70, loss=math.nan, optimizer_state=optimizer)
    state.extra = extra
    document, tensors = state.to_storage()
    document = json.loads(json.dumps(document, allow_nan=False))  # plain JSON, no NaN tokens
    back = TrainingState.from_storage(document, tensors)
    assert same(back.optimizer_state, optimizer)
    assert same(back.extra, extra)
    assert math.isnan(back.loss)
    assert back.epoch == 3
    assert back.global_step == 70


def test_objects_that_need_pickles_are_refused() -> None:
    with pytest.raises(TensorMismatchError, match="no pickles"):
        TrainingState(optimizer_state={"fn": lambda: 0}).to_storage()
    with pytest.raises(TensorMismatchError, match="cannot hold an array"):
        TrainingState(metrics={"m": np.zeros(2)}).to_storage()


def adam_like(seed: int) -> dict:
    rng = np.random.default_rng(seed)
    return {
        "state": {
            0: {
                "step": np.array(seed, np.float32),
                "exp_avg": rng.standard_normal((64, 48), np.float32),
            },
            1: {"step": np.array(seed, np.float32), "exp_avg": rng.standard_normal(64, np.float32)},
        },
        "param_groups": [{"lr": 1e-3, "betas": (0.9, 0.999), "params": [0, 1]}],
    }


def test_commit_carries_state_and_gc_verify_repack_keep_it(repo: Repository) -> None:
    rng_state = {"numpy": np.random.default_rng(0).bit_generator.state["state"]["state"]}
    for step in range(3):
        state = TrainingState(epoch=step, global_step=10 * step, optimizer_state=adam_like(step))
        state.random_state = rng_state
        repo.commit(f"step {step}", weights=make_weights(step), training_state=state)
    head = repo.show()
    assert head.training is not None
    assert head.training["tree"]
    assert "optimizer_state/state/0/exp_avg" not in repo.ls_tree()  # the model tree stays pure
    repo.gc()
    repo.repack()
    assert repo.verify().ok
    back = repo.training_state()
    assert back is not None
    assert back.global_step == 20
    assert same(back.optimizer_state, adam_like(2))
    first = repo.training_state("HEAD~2")
    assert first is not None
    assert same(first.optimizer_state, adam_like(0))
    plain = repo.commit("no state", weights=make_weights(9))
    assert repo.training_state(plain.commit_hash) is None


def test_damaged_training_tensor_is_reported(repo: Repository) -> None:
    state = TrainingState(optimizer_state=adam_like(0))
    commit = repo.commit("s", weights=make_weights(0), training_state=state)
    tree = repo.read_tree(commit.training["tree"])  # type: ignore[index]
    chunk = repo.objects.tensor_descriptor(tree["optimizer_state/state/0/exp_avg"].tensor).chunks[0]
    flip_last_bit(repo, chunk)
    report = repo.verify()
    assert not report.ok
    users = [user for problem in report.problems for user in problem.used_by]
    assert f"commit {commit.commit_hash}: training tensor optimizer_state/state/0/exp_avg" in users
    with pytest.raises(CorruptObjectError):
        repo.training_state()
