"""``.keras`` / ``.h5`` files through the ``coral.formats`` plugin: bits, Keras, damage."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

import h5py
import numpy as np
import pytest

from coral_core import ModelFileError, Repository, TensorMismatchError, format_for
from coral_tf import load_weights
from coral_tf.formats import KERAS_FORMAT, WEIGHTS_MEMBER, read_keras_file, write_keras_file

from .models import (
    KERAS_SAVE_WARNING,
    data,
    keras,
    mlp,
    odd_bits,
    optimizer_values,
    same_bits,
    to_array,
    values,
)

pytestmark = pytest.mark.filterwarnings(KERAS_SAVE_WARNING)


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[keras.Model, Path]:
    """A trained model (float16 and bfloat16 layers) and the folder of its files."""
    folder = tmp_path_factory.mktemp("files")
    model = mlp(half="bfloat16")
    model.fit(*data(), epochs=1, batch_size=16, verbose=0)
    odd_bits(model)
    model.save(folder / "m.keras")
    model.save_weights(folder / "m.weights.h5")
    mlp().save(folder / "legacy.h5")  # float16: the legacy format leaves bfloat16 unmarked
    return model, folder


def test_the_plugin_is_found_by_suffix_without_importing_keras() -> None:
    code = (
        "import sys\n"
        "from coral_core import format_for\n"
        "names = {format_for(p).name for p in ('a.keras', 'a.weights.h5', 'a.h5', 'a.hdf5')}\n"
        "assert names == {'keras'}, names\n"
        "assert 'keras' not in sys.modules and 'tensorflow' not in sys.modules\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
    assert format_for("model.keras") is KERAS_FORMAT


@pytest.mark.parametrize("name", ["m.keras", "m.weights.h5"])
def test_keras_files_round_trip_bit_for_bit_and_keras_loads_what_is_written(
    trained: tuple[keras.Model, Path], tmp_path: Path, name: str
) -> None:
    model, folder = trained
    arrays = read_keras_file(folder / name)
    assert "layers/dense/vars/0" in arrays  # Keras' own layout: d1's kernel
    assert "optimizer/vars/0" in arrays  # the optimizer's step counter
    assert arrays["optimizer/vars/0"].dtype == np.int64
    assert str(arrays["layers/dense_1/vars/0"].dtype) == "bfloat16"
    assert same_bits(
        {"kernel": arrays["layers/dense/vars/0"]},
        {"kernel": to_array(model.get_layer("d1").kernel)},
    )
    repo = Repository(tmp_path / "repo", init=True)
    commit = repo.commit("added", weights=format_for(folder / name).read(folder / name))
    exported = tmp_path / name
    format_for(exported).write(
        exported, {w.name: w.data for w in repo.iter_weights(commit.commit_hash)}
    )
    assert same_bits(read_keras_file(exported), arrays)
    fresh = mlp(half="bfloat16")
    fresh.optimizer.build(fresh.trainable_variables)
    fresh.load_weights(exported)
    assert same_bits(values(fresh.weights), values(model.weights))
    assert same_bits(optimizer_values(fresh), optimizer_values(model))


def test_legacy_h5_is_read_by_its_paths(trained: tuple[keras.Model, Path], tmp_path: Path) -> None:
    _, folder = trained
    arrays = read_keras_file(folder / "legacy.h5")
    with h5py.File(folder / "legacy.h5") as file:
        kernel = file["model_weights/d1/mlp/d1/kernel"][()]
        assert list(file["model_weights/d2"].attrs["weight_names"]) == [
            "mlp/d2/kernel",
            "mlp/d2/bias",
        ]
    assert same_bits({"k": arrays["model_weights/d1/mlp/d1/kernel"]}, {"k": kernel})
    assert arrays["model_weights/d2/mlp/d2/kernel"].dtype == np.float16
    with pytest.raises(
        ModelFileError, match=r"out\.h5: .*export to out\.weights\.h5 or out\.keras"
    ):
        write_keras_file(tmp_path / "out.h5", arrays)
    assert not (tmp_path / "out.h5").exists()


def test_reading_never_deserializes_the_model(
    trained: tuple[keras.Model, Path], tmp_path: Path
) -> None:
    _, folder = trained
    hostile = tmp_path / "hostile.keras"
    with (
        zipfile.ZipFile(folder / "m.keras") as source,
        zipfile.ZipFile(hostile, "w", zipfile.ZIP_DEFLATED) as target,  # not as Keras stores
    ):
        target.writestr("config.json", '{"class_name": "Lambda", "config": {"function": "!!"}}')
        target.writestr(WEIGHTS_MEMBER, source.read(WEIGHTS_MEMBER))
    assert same_bits(read_keras_file(hostile), read_keras_file(folder / "m.keras"))


def test_damaged_files_raise_model_file_errors_naming_them(
    trained: tuple[keras.Model, Path], tmp_path: Path
) -> None:
    model, folder = trained
    for name in ("m.keras", "m.weights.h5", "legacy.h5"):
        whole = (folder / name).read_bytes()
        for size in (0, 10, len(whole) // 2, len(whole) - 1):
            cut = tmp_path / f"cut-{size}-{name}"
            cut.write_bytes(whole[:size])
            with pytest.raises(ModelFileError, match=str(cut)):
                read_keras_file(cut)
    kernel = to_array(model.get_layer("d1").kernel).tobytes()
    whole = (folder / "m.keras").read_bytes()
    at = whole.index(kernel) + 5
    flipped = tmp_path / "flipped.keras"
    flipped.write_bytes(whole[:at] + bytes([whole[at] ^ 1]) + whole[at + 1 :])
    with pytest.raises(ModelFileError, match=r"flipped\.keras.*CRC"):
        read_keras_file(flipped)
    no_weights = tmp_path / "empty.keras"
    with zipfile.ZipFile(no_weights, "w") as archive:
        archive.writestr("config.json", "{}")
    with pytest.raises(ModelFileError, match=r"has no model\.weights\.h5"):
        read_keras_file(no_weights)
    linked = tmp_path / "linked.weights.h5"
    with h5py.File(linked, "w") as file:
        file["vars/0"] = np.zeros(2, np.float32)
        file["vars/1"] = h5py.ExternalLink(str(folder / "m.weights.h5"), "/layers/dense/vars/0")
    with pytest.raises(ModelFileError, match="ExternalLink"):
        read_keras_file(linked)
    with pytest.raises(FileNotFoundError):
        read_keras_file(tmp_path / "missing.keras")


def test_a_commit_of_a_keras_file_loads_into_a_model(
    trained: tuple[keras.Model, Path], tmp_path: Path
) -> None:
    model, folder = trained
    repo = Repository(tmp_path / "repo", init=True)
    repo.commit("m.keras", weights=read_keras_file(folder / "m.keras"))
    fresh = mlp(half="bfloat16")
    load_weights(fresh, repo)
    assert same_bits(values(fresh.weights), values(model.weights))
    assert not fresh.optimizer.built  # not asked for
    load_weights(fresh, repo, include_optimizer=True)
    assert same_bits(optimizer_values(fresh), optimizer_values(model))
    other = keras.Sequential([keras.Input((6,)), keras.layers.Dense(3, name="d1")], name="mlp")
    with pytest.raises(TensorMismatchError, match=r"a Keras file's weights\) does not fit"):
        load_weights(other, repo)
