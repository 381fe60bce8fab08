"""Hub publish and import against a local Hub server (tests/coral_hf/hub_server.py) and folders."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from huggingface_hub import HfApi
from huggingface_hub.errors import RepositoryNotFoundError
from transformers import AutoModelForMaskedLM, AutoTokenizer

from coral_core import CoralError, ModelFileError, Repository
from coral_core.formats import read_safetensors
from coral_hf import from_pretrained, save_pretrained
from coral_hf.hub import SOURCE_KEY, import_folder, import_from_hub, publish_to_hub
from coral_torch import save_model

from .hub_server import LocalHub
from .tiny import masked_lm, tokenizer


def same_weights(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    expected = b.state_dict()
    return all(torch.equal(t, expected[n]) for n, t in a.state_dict().items())


def test_publish_a_tag_then_import_it_back(tmp_path: Path, hub: LocalHub) -> None:
    repo = Repository(tmp_path / "repo", init=True)
    base = save_pretrained(masked_lm(), repo, "base")
    model, words = masked_lm(seed=1), tokenizer(tmp_path / "vocab")
    tuned = save_pretrained(model, repo, "tuned", words, metrics={"eval_loss": 0.25})
    repo.tag_version("v1", ref=tuned.commit_hash)

    published = publish_to_hub(
        repo, "v1", "org/tiny", endpoint=hub.endpoint, token="hf_test", revision="coral"
    )
    assert published.commit == tuned.commit_hash
    files = hub.repos["org/tiny"].resolve("coral").files  # type: ignore[union-attr]
    assert {"model.safetensors", "config.json", "tokenizer.json", "README.md"} <= set(files)
    card = files["README.md"].decode()
    for expected in (tuned.commit_hash, base.commit_hash, "eval_loss | 0.25", "`v1`"):
        assert expected in card
    assert card.startswith('---\nlibrary_name: "transformers"\ntags: ["coral", "v1"]\n---')
    assert "POST /api/models/org/tiny/preupload/coral" in hub.requests
    assert "main" in hub.repos["org/tiny"].branches  # the branch came from main
    again_main = publish_to_hub(repo, base.commit_hash, "org/tiny", endpoint=hub.endpoint)
    assert hub.repos["org/tiny"].branches["main"] == again_main.oid  # the repo existed (409)

    again = Repository(tmp_path / "again", init=True)
    cache = tmp_path / "cache"
    imported = import_from_hub(
        again, "org/tiny", "coral", endpoint=hub.endpoint, token="hf_test", cache_dir=cache
    )
    assert imported.metadata.metadata[SOURCE_KEY] == {
        "hub": "org/tiny",
        "revision": "coral",
        "sha": published.oid,
    }
    assert same_weights(from_pretrained(AutoModelForMaskedLM, again), model)
    words_again = from_pretrained(AutoTokenizer, again)
    assert words_again("w3 w4")["input_ids"] == words("w3 w4")["input_ids"]
    for request in ("POST /api/validate-yaml", "GET /api/models/org/tiny/revision/coral"):
        assert request in hub.requests
    assert any(r.startswith("HEAD /org/tiny/resolve/") for r in hub.requests)


def test_an_import_stores_no_tensor_the_repository_has(tmp_path: Path, hub: LocalHub) -> None:
    repo = Repository(tmp_path / "repo", init=True)
    commit = save_pretrained(masked_lm(), repo, "base")
    publish_to_hub(repo, None, "org/tiny", endpoint=hub.endpoint)
    for other in ("pytorch_model.bin", "flax_model.msgpack"):  # formats an import leaves out
        HfApi(endpoint=hub.endpoint).upload_file(
            path_or_fileobj=b"not read", path_in_repo=other, repo_id="org/tiny"
        )
    imported = import_from_hub(
        repo, "org/tiny", branch="hub", endpoint=hub.endpoint, cache_dir=tmp_path / "cache"
    )
    ours, theirs = repo.ls_tree(commit.commit_hash), repo.ls_tree(imported.commit_hash)
    assert theirs.keys() == ours.keys()
    assert all(theirs[name].tensor == ours[name].tensor for name in ours)  # the same objects
    assert repo.resolve("hub") == imported.commit_hash
    assert not any(r.endswith(("pytorch_model.bin", "flax_model.msgpack")) for r in hub.requests)
    assert "pytorch_model.bin" not in imported.metadata.metadata["coral_hf.files"]
    assert repo.resolve("HEAD") == commit.commit_hash


def test_hub_errors_name_what_was_asked(tmp_path: Path, hub: LocalHub) -> None:
    repo = Repository(tmp_path / "repo", init=True)
    save_model(repo, masked_lm(), "no config")
    with pytest.raises(CoralError, match=r"carries no config\.json"):
        publish_to_hub(repo, "HEAD", "org/tiny", endpoint=hub.endpoint)
    with pytest.raises(RepositoryNotFoundError):
        import_from_hub(repo, "org/missing", endpoint=hub.endpoint, cache_dir=tmp_path / "c")
    hub.unhandled.clear()


@pytest.mark.parametrize("shard", [None, "4KB"], ids=["one-file", "sharded"])
def test_import_a_save_pretrained_folder(tmp_path: Path, shard: str | None) -> None:
    model, words = masked_lm(), tokenizer(tmp_path / "vocab")
    folder = tmp_path / "folder"
    if shard is None:
        model.save_pretrained(folder)
    else:
        model.save_pretrained(folder, max_shard_size=shard)
        assert len(list(folder.glob("*.safetensors"))) > 1
    words.save_pretrained(folder)
    (folder / "pytorch_model.bin").write_bytes(b"a second copy, not read")
    repo = Repository(tmp_path / "repo", init=True)
    commit = import_folder(repo, folder)
    assert commit.message == "import folder"
    files = set(commit.metadata.metadata["coral_hf.files"])
    assert "config.json" in files
    assert not any(name.endswith((".index.json", ".bin")) for name in files)
    stored = repo.ls_tree()
    on_disk = {name for path in folder.glob("*.safetensors") for name in read_safetensors(path)}
    assert set(stored) == on_disk
    assert same_weights(from_pretrained(AutoModelForMaskedLM, repo), model)


def test_a_folder_without_weights_is_refused(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelFileError, match="holds no"):
        import_folder(Repository(tmp_path / "repo", init=True), tmp_path / "empty")
