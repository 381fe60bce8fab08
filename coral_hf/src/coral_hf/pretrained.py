"""``save_pretrained`` / ``from_pretrained`` with a Coral commit instead of a folder.

A commit made here holds the model's ``state_dict`` as its tensors (through
:func:`coral_torch.save_model`: every dtype bit for bit, tied weights stored
once) and the small files ``from_pretrained`` needs beside them (``config.json``,
``generation_config.json``, the tokenizer's files) in the commit's metadata
under :data:`FILES_KEY`: ``{file name: {"text": ...}}`` for UTF-8 files,
``{"base64": ...}`` for binary ones (a SentencePiece model), so each comes
back byte for byte. :func:`write_model_folder` lays a commit out as the folder
``save_pretrained`` would have written (``model.safetensors`` plus those
files), which is what :func:`from_pretrained`, the Hub publisher and the
Trainer's resume read.
"""

from __future__ import annotations

import base64
import os
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol

import torch

from coral_core import Commit, CoralError, Repository
from coral_core.exports import FOLDER, CommitExport
from coral_core.files import confined_path
from coral_core.formats import write_safetensors
from coral_torch import save_model

#: Commit metadata key: the non-weight files of the model folder, by file name.
FILES_KEY = "coral_hf.files"
#: The weights file of a model folder, as ``save_pretrained`` names it.
WEIGHTS_NAME = "model.safetensors"

FileEntry = dict[str, str]


class SavesPretrained(Protocol):
    """Anything with ``save_pretrained(folder)``: a tokenizer, a processor, a config."""

    def save_pretrained(self, save_directory: str, /) -> Any: ...


def encode_files(folder: str | os.PathLike[str], skip: Sequence[str] = ()) -> dict[str, FileEntry]:
    """The files directly in ``folder`` (but ``skip``), as :data:`FILES_KEY` entries."""
    files = {}
    for path in sorted(Path(folder).iterdir()):
        if not path.is_file() or path.name in skip:
            continue
        data = path.read_bytes()
        try:
            files[path.name] = {"text": data.decode("utf-8")}
        except UnicodeDecodeError:
            files[path.name] = {"base64": base64.b64encode(data).decode("ascii")}
    return files


def files_of(commit: Commit) -> dict[str, bytes]:
    """The model-folder files a commit carries (empty for a commit made elsewhere)."""
    entries = commit.metadata.metadata.get(FILES_KEY) or {}
    files = {}
    for name, entry in entries.items():
        if "text" in entry:
            files[name] = str(entry["text"]).encode("utf-8")
        else:
            files[name] = base64.b64decode(entry["base64"])
    return files


def config_files(model: Any, tokenizer: SavesPretrained | None = None) -> dict[str, FileEntry]:
    """``config.json`` (and ``generation_config.json``, the tokenizer's files) as
    ``model.save_pretrained`` would write them, as :data:`FILES_KEY` entries."""
    config = getattr(model, "config", None)
    if config is None or not hasattr(config, "save_pretrained"):
        raise CoralError(
            f"{type(model).__name__} has no transformers config (model.config); "
            "use coral_torch.save_model for a plain torch module"
        )
    with tempfile.TemporaryDirectory(prefix="coral-hf-") as folder:
        # What PreTrainedModel.save_pretrained records in the config before writing it.
        config.dtype = str(model.dtype).split(".")[1]
        config.architectures = [type(model).__name__]
        config.save_pretrained(folder)
        generation = getattr(model, "generation_config", None)
        if generation is not None and model.can_generate():
            generation.save_pretrained(folder)
        if tokenizer is not None:
            tokenizer.save_pretrained(folder)
        return encode_files(folder)


def save_pretrained(
    model: torch.nn.Module,
    repo: Repository,
    message: str,
    tokenizer: SavesPretrained | None = None,
    *,
    metrics: Mapping[str, Any] | None = None,
    metadata: Mapping[str, Any] | None = None,
    tags: Sequence[str] = (),
    branch: str | None = None,
    author: str | None = None,
) -> Commit:
    """Commit a transformers model with its config (and tokenizer) files.

    Args:
        model: a ``PreTrainedModel``.
        repo: the repository.
        message: the commit message.
        tokenizer: a tokenizer or processor whose ``save_pretrained`` files go in too.
        metrics, metadata, tags, branch, author: as in :func:`coral_torch.save_model`.

    Raises:
        CoralError: when ``model`` has no transformers config.
    """
    files = config_files(model, tokenizer)
    return save_model(
        repo,
        model,
        message,
        metrics=metrics,
        metadata={**(metadata or {}), FILES_KEY: files},
        tags=tags,
        branch=branch,
        author=author,
    )


def write_model_folder(repo: Repository, ref: str | None, folder: str | os.PathLike[str]) -> Commit:
    """Write commit ``ref`` (HEAD by default) into ``folder`` as ``save_pretrained``
    lays a model out: ``model.safetensors`` with the commit's tensors bit for
    bit (tied aliases left out, as transformers does) and the files the commit
    carries. Returns the commit.

    Raises:
        RefNotFoundError: when ``ref`` names nothing.
        CoralError: when ``folder`` exists and is not empty.
    """
    commit = repo.show(ref)
    target = Path(folder)
    files = files_of(commit)
    for name in files:
        confined_path(target, name)  # names from a commit: refused before anything is written
    if target.is_dir() and any(target.iterdir()):
        raise CoralError(
            f"{target} is not empty; write commit {commit.short_hash} into a new or empty "
            "folder (files left from another model would be read with it)"
        )
    target.mkdir(parents=True, exist_ok=True)
    arrays = {weight.name: weight.data for weight in repo.iter_weights(commit.commit_hash)}
    write_safetensors(target / WEIGHTS_NAME, arrays)
    for name, data in files.items():
        path = confined_path(target, name)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    return commit


def export_model_folder(repo: Repository, commit: Commit, folder: Path) -> list[Path]:
    """``coral-ml export <commit> <folder>``: :func:`write_model_folder`; the files written."""
    write_model_folder(repo, commit.commit_hash, folder)
    return [folder / WEIGHTS_NAME, *(confined_path(folder, name) for name in files_of(commit))]


#: The ``coral.exports`` entry point ``coral_hf.files``: a folder ``from_pretrained`` loads.
HF_EXPORT = CommitExport("Hugging Face", (FOLDER,), export_model_folder)


def from_pretrained(cls: Any, repo: Repository, ref: str | None = None, **kwargs: Any) -> Any:
    """``cls.from_pretrained`` on commit ``ref`` (HEAD by default).

    ``cls`` is a model class (``BertForMaskedLM``, ``AutoModel...``) or a
    tokenizer class (``AutoTokenizer``); ``kwargs`` go to its ``from_pretrained``.
    The result's ``name_or_path`` is ``<repository folder>@<short commit id>``.

    Raises:
        CoralError: when the commit carries no ``config.json`` (it was not made
            by :func:`save_pretrained` or the Trainer callback).
    """
    commit = repo.show(ref)
    if "config.json" not in files_of(commit):
        raise CoralError(
            f"commit {commit.short_hash} ({ref or 'HEAD'}) carries no config.json; "
            "commit it with coral_hf.save_pretrained, or load its tensors into a model "
            "with coral_torch.load_model"
        )
    with tempfile.TemporaryDirectory(prefix="coral-hf-") as folder:
        write_model_folder(repo, commit.commit_hash, folder)
        loaded = cls.from_pretrained(folder, **kwargs)
    if hasattr(loaded, "name_or_path"):  # not the temporary folder, which is gone
        loaded.name_or_path = f"{repo.path}@{commit.short_hash}"
    return loaded
