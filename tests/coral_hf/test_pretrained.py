"""save_pretrained / from_pretrained through a commit: weights, ties, config and tokenizer files."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from transformers import AutoModelForMaskedLM, AutoTokenizer, BertForMaskedLM

from coral_core import CoralError, Repository, UnsafePathError
from coral_core.formats import read_safetensors
from coral_hf import FILES_KEY, from_pretrained, save_pretrained, write_model_folder
from coral_hf.pretrained import encode_files, files_of
from coral_torch import TIES_KEY, save_model

from .tiny import masked_lm, tokenizer


def test_a_model_and_its_tokenizer_come_back_from_a_commit(tmp_path: Path) -> None:
    repo = Repository(tmp_path / "repo", init=True)
    model, words = masked_lm(), tokenizer(tmp_path / "vocab")
    commit = save_pretrained(model, repo, "tiny mlm", words, metrics={"loss": 1.5})
    files = commit.metadata.metadata[FILES_KEY]
    assert {"config.json", "tokenizer.json", "tokenizer_config.json"} <= set(files)
    ties = commit.metadata.metadata[TIES_KEY]
    assert ties["cls.predictions.decoder.weight"] == "bert.embeddings.word_embeddings.weight"
    assert "cls.predictions.decoder.weight" not in repo.ls_tree()  # stored once

    loaded = from_pretrained(AutoModelForMaskedLM, repo)
    assert type(loaded) is BertForMaskedLM
    expected = model.state_dict()
    for name, tensor in loaded.state_dict().items():
        assert torch.equal(tensor, expected[name]), name
    embedding = loaded.bert.embeddings.word_embeddings.weight
    assert loaded.cls.predictions.decoder.weight is embedding  # tied again
    assert loaded.name_or_path == f"{repo.path}@{commit.short_hash}"
    loaded.config._name_or_path = model.config._name_or_path
    assert loaded.config.to_dict() == model.config.to_dict()

    again = from_pretrained(AutoTokenizer, repo, commit.commit_hash)
    assert again("w1 w2 w3")["input_ids"] == words("w1 w2 w3")["input_ids"]


def test_the_folder_matches_what_transformers_writes(tmp_path: Path) -> None:
    repo = Repository(tmp_path / "repo", init=True)
    model = masked_lm()
    save_pretrained(model, repo, "tiny mlm")
    ours = write_model_folder(repo, None, tmp_path / "ours")
    model.save_pretrained(tmp_path / "theirs")
    assert ours.commit_hash == repo.resolve("HEAD")
    theirs = tmp_path / "theirs"
    names = sorted(p.name for p in theirs.iterdir())
    assert sorted(p.name for p in (tmp_path / "ours").iterdir()) == names
    for name in names:
        if name != "model.safetensors":
            assert (tmp_path / "ours" / name).read_bytes() == (theirs / name).read_bytes()
    ours_weights = read_safetensors(tmp_path / "ours" / "model.safetensors")
    their_weights = read_safetensors(theirs / "model.safetensors")
    assert ours_weights.keys() == their_weights.keys()  # the same tied names left out
    for name, array in their_weights.items():
        assert ours_weights[name].tobytes() == array.tobytes(), name
    with pytest.raises(CoralError, match=r"theirs is not empty; write commit \w{12} into a new"):
        write_model_folder(repo, None, theirs)  # stale shards or files would be read with it


def test_binary_files_travel_as_base64(tmp_path: Path) -> None:
    folder = tmp_path / "files"
    folder.mkdir()
    (folder / "spiece.model").write_bytes(bytes(range(256)))
    (folder / "notes.txt").write_text("héllo\n")
    (folder / "sub").mkdir()
    entries = encode_files(folder)
    assert set(entries) == {"spiece.model", "notes.txt"}
    assert "base64" in entries["spiece.model"]
    assert entries["notes.txt"] == {"text": "héllo\n"}
    repo = Repository(tmp_path / "repo", init=True)
    commit = save_model(repo, masked_lm(), "with files", metadata={FILES_KEY: entries})
    assert files_of(commit) == {"spiece.model": bytes(range(256)), "notes.txt": "héllo\n".encode()}


def test_a_commit_without_config_is_refused(tmp_path: Path) -> None:
    repo = Repository(tmp_path / "repo", init=True)
    save_model(repo, masked_lm(), "plain torch")
    with pytest.raises(CoralError, match=r"carries no config\.json.*coral_torch\.load_model"):
        from_pretrained(AutoModelForMaskedLM, repo, "HEAD")
    with pytest.raises(CoralError, match="Linear has no transformers config"):
        save_pretrained(torch.nn.Linear(2, 2), repo, "not a transformers model")


@pytest.mark.parametrize("name", ["../escaped.json", "/tmp/absolute.json", "a/../../up.json"])
def test_file_names_from_a_commit_stay_in_the_folder(tmp_path: Path, name: str) -> None:
    repo = Repository(tmp_path / "repo", init=True)
    files = {"config.json": {"text": "{}"}, name: {"text": "mallory"}}
    repo.commit("forged", weights={"w": torch.zeros(2).numpy()}, metadata={FILES_KEY: files})
    with pytest.raises(UnsafePathError):
        write_model_folder(repo, "HEAD", tmp_path / "out" / "model")
    assert not (tmp_path / "out" / "model").exists()  # refused before anything was written
    assert not (tmp_path / "out" / "escaped.json").exists()
