"""``coral-ml export`` of a transformers commit: a folder ``from_pretrained`` loads,
and single files that hold every tied name."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from click.testing import CliRunner, Result
from safetensors.torch import load_file
from transformers import AutoModelForMaskedLM, AutoTokenizer

from coral_cli.main import cli
from coral_core import Repository
from coral_hf import save_pretrained
from coral_torch import save_model

from .tiny import masked_lm, tokenizer


def export(repo: Path, ref: str, target: Path) -> Result:
    return CliRunner().invoke(cli, ["-C", str(repo), "--json", "export", ref, str(target)])


def test_a_commit_with_its_files_exports_as_a_folder_from_pretrained_loads(
    tmp_path: Path,
) -> None:
    repo = Repository(tmp_path / "repo", init=True)
    model, words = masked_lm(), tokenizer(tmp_path / "vocab")
    save_pretrained(model, repo, "tiny mlm", words)
    done = export(repo.path, "HEAD", tmp_path / "exported")
    assert done.exit_code == 0, done.output
    files = {Path(file).name for file in json.loads(done.stdout)["files"]}
    assert {"model.safetensors", "config.json", "tokenizer_config.json"} <= files

    loaded = AutoModelForMaskedLM.from_pretrained(tmp_path / "exported")
    loaded.eval(), model.eval()
    batch = words(["w1 w2 w3 [MASK]"], return_tensors="pt")
    with torch.no_grad():
        assert torch.equal(loaded(**batch).logits, model(**batch).logits)
    assert loaded.cls.predictions.decoder.weight is loaded.bert.embeddings.word_embeddings.weight
    again = AutoTokenizer.from_pretrained(tmp_path / "exported")
    assert again("w1 w2")["input_ids"] == words("w1 w2")["input_ids"]

    refused = export(repo.path, "HEAD", tmp_path / "exported")  # not over another model's files
    assert refused.exit_code == 1
    assert "is not empty" in refused.stderr


def test_a_single_file_holds_each_tied_name_for_a_strict_load(tmp_path: Path) -> None:
    repo = Repository(tmp_path / "repo", init=True)
    model = masked_lm()
    save_model(repo, model, "tied weights, stored once")
    for name in ("model.safetensors", "model.pt"):
        done = export(repo.path, "HEAD", tmp_path / name)
        assert done.exit_code == 0, done.output
    state = load_file(tmp_path / "model.safetensors")
    assert "cls.predictions.decoder.weight" in state
    fresh = masked_lm(seed=1)
    fresh.load_state_dict(state, strict=True)
    for name, tensor in model.state_dict().items():
        assert torch.equal(fresh.state_dict()[name], tensor), name
    from_pt = torch.load(tmp_path / "model.pt", weights_only=True)
    masked_lm(seed=2).load_state_dict(from_pt, strict=True)
