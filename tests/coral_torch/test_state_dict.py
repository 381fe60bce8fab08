"""state_dict adapters and .pt files: every dtype bit for bit, views, ties, buffers, errors."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from coral_core import (
    ModelFileError,
    Repository,
    UnsafeModelFileError,
    UnsupportedDtypeError,
    bit_view,
)
from coral_torch import (
    StateDictMismatchError,
    find_ties,
    load_model,
    load_state_dict,
    load_torch_file,
    save_model,
    save_torch_file,
    to_array,
    to_tensor,
)

INT_VIEWS = {1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}


def same_bits(a: torch.Tensor, b: torch.Tensor) -> bool:
    if a.dtype != b.dtype or a.shape != b.shape:
        return False
    if a.dtype == torch.bool:
        return bool(torch.equal(a, b))
    width = INT_VIEWS[a.element_size()]
    return bool(torch.equal(a.contiguous().view(width), b.contiguous().view(width)))


def nasty(dtype: torch.dtype, shape: tuple[int, ...] = (5, 7)) -> torch.Tensor:
    """Random bits viewed as ``dtype``: NaN payloads, -0.0, inf and subnormals included."""
    generator = torch.Generator().manual_seed(int(str(dtype).__hash__() % 1000))
    if dtype == torch.bool:
        return torch.randint(0, 2, shape, generator=generator).bool()
    size = torch.empty((), dtype=dtype).element_size()
    words = torch.randint(0, 256, (*shape[:-1], shape[-1] * size), dtype=torch.uint8)
    return words.view(dtype)


ALL_DTYPES = [
    torch.float64,
    torch.float32,
    torch.float16,
    torch.bfloat16,
    torch.float8_e4m3fn,
    torch.float8_e5m2,
    torch.int64,
    torch.int32,
    torch.int16,
    torch.int8,
    torch.uint8,
    torch.bool,
]


@pytest.mark.parametrize("dtype", ALL_DTYPES, ids=str)
def test_every_dtype_round_trips_bitwise(tmp_path: Path, dtype: torch.dtype) -> None:
    tensor = nasty(dtype)
    if dtype.is_floating_point and dtype.itemsize >= 2:
        sign_bit = -(1 << (8 * dtype.itemsize - 1))
        tensor.view(INT_VIEWS[dtype.itemsize])[0, :3] = torch.tensor(
            [0, 1, sign_bit], dtype=INT_VIEWS[dtype.itemsize]
        )  # +0.0, the smallest subnormal, -0.0
    assert same_bits(to_tensor(to_array(tensor)), tensor)
    repo = Repository(tmp_path, init=True)
    save_model(repo, {"t": tensor}, "one dtype")
    assert same_bits(load_state_dict(repo)["t"], tensor)


def test_contiguous_cpu_tensors_are_viewed_not_copied() -> None:
    tensor = torch.arange(12, dtype=torch.float32)
    array = to_array(tensor)
    assert array.ctypes.data == tensor.data_ptr()
    bf16 = torch.ones(4, dtype=torch.bfloat16)
    assert to_array(bf16).ctypes.data == bf16.data_ptr()
    strided = torch.arange(12.0).reshape(3, 4).t()
    assert np.array_equal(to_array(strided), strided.numpy())  # one copy, right values
    back = to_tensor(array)
    assert back.data_ptr() == array.ctypes.data


@pytest.mark.filterwarnings("ignore:torch.quantize_per_tensor:UserWarning")
def test_unsupported_dtypes_are_named() -> None:
    with pytest.raises(UnsupportedDtypeError, match="qint8"):
        to_array(torch.quantize_per_tensor(torch.ones(2), 0.1, 0, torch.qint8))


class TiedLM(torch.nn.Module):
    """A tiny transformer LM whose output head shares the embedding matrix."""

    def __init__(self, vocab: int = 50, dim: int = 16) -> None:
        super().__init__()
        self.embed = torch.nn.Embedding(vocab, dim)
        layer = torch.nn.TransformerEncoderLayer(dim, 2, 32, dropout=0.0, batch_first=True)
        self.encoder = torch.nn.TransformerEncoder(layer, 1, enable_nested_tensor=False)
        self.head = torch.nn.Linear(dim, vocab, bias=False)
        self.head.weight = self.embed.weight

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.head(self.encoder(self.embed(tokens)))


class BatchNormMLP(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.net = torch.nn.Sequential(
            torch.nn.Linear(6, 8), torch.nn.BatchNorm1d(8), torch.nn.ReLU(), torch.nn.Linear(8, 2)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def train_a_little(model: torch.nn.Module, inputs: torch.Tensor, targets: torch.Tensor) -> None:
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    for _ in range(3):
        optimizer.zero_grad()
        out = model(inputs)
        loss = torch.nn.functional.cross_entropy(out.reshape(-1, out.shape[-1]), targets)
        loss.backward()
        optimizer.step()


def test_tied_weights_are_stored_once_and_restored_shared(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = TiedLM()
    tokens = torch.randint(0, 50, (4, 6))
    train_a_little(model, tokens, tokens.reshape(-1))
    assert find_ties(model.state_dict()) == {"head.weight": "embed.weight"}
    repo = Repository(tmp_path, init=True)
    commit = save_model(repo, model, "tied LM")
    assert "head.weight" not in repo.ls_tree()
    assert repo.ls_tree()["embed.weight"].layer_type == "Embedding"
    assert commit.metadata.metadata["coral_torch.ties"] == {"head.weight": "embed.weight"}
    state = load_state_dict(repo)
    assert state["head.weight"] is state["embed.weight"]
    torch.manual_seed(1)
    fresh = TiedLM()
    load_model(repo, fresh)
    assert fresh.head.weight is fresh.embed.weight
    for name, tensor in model.state_dict().items():
        assert same_bits(fresh.state_dict()[name], tensor), name
    fresh.eval()
    model.eval()
    assert torch.equal(fresh(tokens), model(tokens))


def test_buffers_are_included_and_a_model_without_ties_gets_copies(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = BatchNormMLP()
    train_a_little(model, torch.randn(16, 6), torch.randint(0, 2, (16,)))
    repo = Repository(tmp_path, init=True)
    save_model(repo, model, "bn")
    tree = repo.ls_tree()
    assert {"net.1.running_mean", "net.1.running_var", "net.1.num_batches_tracked"} <= set(tree)
    assert tree["net.1.num_batches_tracked"].dtype == "int64"
    fresh = BatchNormMLP()
    load_model(repo, fresh)
    for name, tensor in model.state_dict().items():
        assert same_bits(fresh.state_dict()[name], tensor), name
    untied = TiedLM()
    untied.head.weight = torch.nn.Parameter(untied.embed.weight.detach().clone())
    save_model(repo, TiedLM(), "tied", branch="lm")
    load_model(repo, untied, "lm")
    assert untied.head.weight is not untied.embed.weight
    assert same_bits(untied.head.weight.detach(), untied.embed.weight.detach())


def test_mismatched_models_get_a_clear_error_and_stay_unchanged(tmp_path: Path) -> None:
    repo = Repository(tmp_path, init=True)
    save_model(repo, BatchNormMLP(), "bn")
    other = torch.nn.Sequential(torch.nn.Linear(6, 8))
    before = {k: v.clone() for k, v in other.state_dict().items()}
    with pytest.raises(StateDictMismatchError) as caught:
        load_model(repo, other)
    message = str(caught.value)
    assert "2 missing from the commit: 0.bias, 0.weight" in message
    assert "in the commit but not in the model" in message
    assert "net.1.running_mean" in message
    assert caught.value.unexpected
    assert all(torch.equal(before[k], v) for k, v in other.state_dict().items())
    wrong_shape = BatchNormMLP()
    wrong_shape.net[3] = torch.nn.Linear(8, 3)
    with pytest.raises(
        StateDictMismatchError, match=r"another shape or dtype: net\.3\.bias, net\.3\.w"
    ):
        load_model(repo, wrong_shape, strict=False)
    partial = BatchNormMLP()
    partial.extra = torch.nn.Linear(2, 2)
    with pytest.raises(StateDictMismatchError, match=r"missing from the commit: extra\.bias"):
        load_model(repo, partial)
    load_model(repo, partial, strict=False)  # loads what matches
    stored = repo.get_weight("net.0.weight").data
    assert np.array_equal(partial.net[0].weight.detach().numpy(), stored)


def test_torch_files_are_read_with_weights_only(tmp_path: Path) -> None:
    checkpoint = {
        "state_dict": {"w": torch.randn(3, 2), "b": torch.zeros(2, dtype=torch.bfloat16)},
        "epoch": 3,
        "optimizer": [torch.ones(1)],
    }
    path = tmp_path / "model.pt"
    torch.save(checkpoint, path)
    arrays = load_torch_file(path)
    assert set(arrays) == {"state_dict.w", "state_dict.b", "optimizer.0"}
    assert np.array_equal(
        bit_view(arrays["state_dict.b"]), bit_view(to_array(checkpoint["state_dict"]["b"]))
    )
    save_torch_file(tmp_path / "out.pth", arrays)
    assert set(load_torch_file(tmp_path / "out.pth")) == set(arrays)


class NotATensor:
    pass


def test_pickles_that_need_code_are_refused_and_damage_is_reported(tmp_path: Path) -> None:
    unsafe = tmp_path / "full.pt"
    torch.save({"model": NotATensor(), "w": torch.ones(2)}, unsafe)
    with pytest.raises(UnsafeModelFileError, match="weights_only=True"):
        load_torch_file(unsafe)
    good = tmp_path / "good.bin"
    torch.save({"w": torch.ones(100)}, good)
    truncated = tmp_path / "truncated.bin"
    truncated.write_bytes(good.read_bytes()[:200])
    with pytest.raises(ModelFileError, match=r"truncated\.bin"):
        load_torch_file(truncated)
    text = tmp_path / "notes.pt"
    text.write_text("not a model")
    with pytest.raises(ModelFileError, match=r"notes\.pt"):
        load_torch_file(text)
    empty = tmp_path / "empty.pt"
    torch.save({"epoch": 1}, empty)
    with pytest.raises(ModelFileError, match="no tensors"):
        load_torch_file(empty)
    legacy = tmp_path / "legacy.pt"
    legacy.write_bytes(pickle.dumps({"w": 1}, protocol=2))
    with pytest.raises(ModelFileError):
        load_torch_file(legacy)
    with pytest.raises(FileNotFoundError):
        load_torch_file(tmp_path / "missing.pt")
