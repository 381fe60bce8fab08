"""The codec registry: every strategy by its book name, and a plugin's codec
added through the ``coral.codecs`` entry point group like any installed package."""

from __future__ import annotations

import textwrap
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from coral_core import ConfigError, CorruptObjectError, DeltaConfig, DeltaType, Repository
from coral_core import codecs as registry
from coral_core.codecs import DeltaCodec, codec_named, codec_names
from coral_core.errors import UnknownCodecError
from coral_core.objects import ObjectDatabase
from coral_core.store.packs import PackedStore

PLUGIN = '''
"""A lossless codec of a plugin: XOR with the reference, every bit inverted."""
import numpy as np
from coral_core.codecs import DeltaCodec
from coral_core.codecs.words import bits
from coral_core.planes import decode_planes_into, encode_planes


def encode(current, reference, config, rows):
    inverted = ~(bits(current) ^ bits(reference))
    return encode_planes(inverted, inverted.dtype.itemsize, config.compression_level), {}


def apply(data, meta, target):
    words = bits(target)
    inverted = np.empty_like(words)
    decode_planes_into(data, inverted.view(np.uint8))
    np.bitwise_xor(words, ~inverted, out=words)


INVERTED_XOR = DeltaCodec("inverted_xor", lossless=True, encode=encode, apply=apply)
'''


def test_every_book_strategy_is_a_registered_codec() -> None:
    for kind in DeltaType:
        found = codec_named(kind.value)
        assert found.name == kind.value
        assert found.lossless == kind.is_lossless
    assert codec_named("xor_bfloat16").supports("bfloat16")
    assert not codec_named("xor_bfloat16").supports("float32")
    assert codec_named("xor_float32").supports("int64")  # every dtype, whatever the name says
    with pytest.raises(UnknownCodecError, match="no delta codec named 'nope'"):
        codec_named("nope")
    with pytest.raises(ValueError, match="exactly one of apply and decode"):
        DeltaCodec("both", lossless=True, encode=codec_named("compressed").encode)


@pytest.fixture
def plugin(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """A package installed on the path with a ``coral.codecs`` entry point."""
    site = tmp_path / "site"
    (site / "coral_inverted_xor-1.0.dist-info").mkdir(parents=True)
    (site / "coral_inverted_xor.py").write_text(textwrap.dedent(PLUGIN))
    info = site / "coral_inverted_xor-1.0.dist-info"
    (info / "METADATA").write_text(
        "Metadata-Version: 2.1\nName: coral-inverted-xor\nVersion: 1.0\n"
    )
    (info / "entry_points.txt").write_text(
        "[coral.codecs]\ninverted_xor = coral_inverted_xor:INVERTED_XOR\n"
    )
    monkeypatch.syspath_prepend(str(site))
    monkeypatch.setattr(registry, "_plugins_loaded", False)  # installed after the first scan
    monkeypatch.delitem(registry._registry, "inverted_xor", raising=False)
    yield "inverted_xor"
    registry._registry.pop("inverted_xor", None)


def test_a_plugin_codec_stores_deltas_and_reads_them_back_bit_for_bit(
    tmp_path: Path, plugin: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert plugin in codec_names()
    repo = Repository(tmp_path / "repo", init=True, delta_config=DeltaConfig(delta_type=plugin))
    assert repo.config.get("delta.type") == plugin
    rng = np.random.default_rng(0)
    base = rng.standard_normal(4096).astype(np.float32)
    base[:4] = [np.nan, -0.0, np.inf, 1e-45]
    step = base + np.float32(1e-4)
    repo.commit("one", weights={"w": base})
    repo.commit("two", weights={"w": step})
    chunk = repo.objects.tensor_descriptor(repo.ls_tree()["w"].tensor).chunks[0]
    assert repo.objects.chunk_params(chunk)[1]["type"] == plugin  # stored with the plugin's codec
    reopened = Repository(tmp_path / "repo")
    assert np.array_equal(reopened.get_weight("w").data.view(np.uint32), step.view(np.uint32))
    monkeypatch.delitem(registry._registry, plugin)  # a machine without the plugin
    monkeypatch.setattr(registry, "_plugins_loaded", True)
    with pytest.raises(ConfigError, match="'inverted_xor'"):
        Repository(tmp_path / "repo")
    objects = ObjectDatabase(PackedStore(tmp_path / "repo" / ".coral" / "objects"))
    with pytest.raises(CorruptObjectError, match="no delta codec named 'inverted_xor'"):
        objects.read_tensors([reopened.ls_tree()["w"].tensor])
