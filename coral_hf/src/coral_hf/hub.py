"""Coral commits to and from Hugging Face Hub model repositories.

:func:`publish_to_hub` uploads a commit as one Hub commit on a branch: the
folder :func:`~coral_hf.write_model_folder` writes (``model.safetensors``,
``config.json``, tokenizer files) and a generated model card (``README.md``)
that names the Coral commit, its parents, metrics and tags.
:func:`import_from_hub` downloads a revision (``snapshot_download``) and
commits it with :func:`import_folder`, which also takes any local
``save_pretrained`` folder. Tensors are content-addressed, so what the
repository already holds is not stored again, and changed tensors are stored
as deltas against their namesakes on the branch.

Both go through the real ``huggingface_hub`` client; ``endpoint`` points it
at another Hub (a local server in the tests).
"""

from __future__ import annotations

import datetime
import json
import os
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from huggingface_hub import CommitOperationAdd, HfApi, snapshot_download

from coral_core import Commit, CoralError, ModelFileError, Repository, format_for
from coral_hf.pretrained import FILES_KEY, encode_files, write_model_folder

#: Commit metadata key of an import's origin: ``{"hub", "revision", "sha"}`` or ``{"folder"}``.
SOURCE_KEY = "coral_hf.source"
#: Files of a model folder that are neither weights nor needed to load it.
_NOT_KEPT = ("README.md", ".gitattributes")
_INDEX_SUFFIX = ".index.json"  # model.safetensors.index.json: the shard map
#: Weight formats other than safetensors (PyTorch pickles, TF, Flax, ONNX, GGUF, ...):
#: never kept as files, and not downloaded when the revision has safetensors.
_OTHER_WEIGHTS = (".bin", ".pt", ".pth", ".ckpt", ".h5", ".msgpack", ".onnx", ".gguf", ".ot")


@dataclass(frozen=True)
class HubCommit:
    """A Hub commit made by :func:`publish_to_hub`."""

    repo_id: str
    revision: str
    oid: str
    url: str
    commit: str  # the Coral commit published


def model_card(repo: Repository, commit: Commit) -> str:
    """A Hub model card (``README.md``) with the commit's lineage."""
    tags = sorted(
        {
            *commit.metadata.tags,
            *(t.name for t in repo.list_tags() if t.commit == commit.commit_hash),
        }
    )
    when = datetime.datetime.fromtimestamp(commit.timestamp, datetime.timezone.utc)
    header = {"library_name": "transformers", "tags": ["coral", *tags]}
    lines = [
        "---",
        *(f"{key}: {json.dumps(value)}" for key, value in header.items()),
        "---",
        "",
        f"# {commit.message.splitlines()[0] if commit.message else commit.short_hash}",
        "",
        "Published from a Coral repository; the weights are those of the commit below,",
        "bit for bit.",
        "",
        "| | |",
        "|---|---|",
        f"| Coral commit | `{commit.commit_hash}` |",
        f"| parents | {', '.join(f'`{p}`' for p in commit.parent_hashes) or '(none)'} |",
        f"| author | {commit.author} |",
        f"| date | {when.isoformat(timespec='seconds')} |",
        f"| tags | {', '.join(f'`{t}`' for t in tags) or '(none)'} |",
    ]
    if commit.metrics:
        lines += ["", "## Metrics", "", "| metric | value |", "|---|---|"]
        lines += [f"| {name} | {value} |" for name, value in sorted(commit.metrics.items())]
    return "\n".join(lines) + "\n"


def publish_to_hub(
    repo: Repository,
    ref: str | None,
    repo_id: str,
    *,
    revision: str = "main",
    token: str | None = None,
    endpoint: str | None = None,
    private: bool | None = None,
    commit_message: str | None = None,
) -> HubCommit:
    """Upload commit ``ref`` (HEAD by default) to the Hub model repo ``repo_id``.

    The repo is created if missing, and the branch ``revision`` (from ``main``)
    too. The upload holds ``model.safetensors``, the files the commit carries
    (``config.json``, tokenizer files) and a generated ``README.md``.

    Raises:
        RefNotFoundError: when ``ref`` names nothing.
        CoralError: when the commit carries no ``config.json``.
        huggingface_hub.errors.HfHubHTTPError: when the Hub refuses.
    """
    commit = repo.show(ref)
    api = HfApi(endpoint=endpoint, token=token)
    with tempfile.TemporaryDirectory(prefix="coral-hub-") as tmp:
        folder = Path(tmp)
        write_model_folder(repo, commit.commit_hash, folder)
        if not (folder / "config.json").exists():
            raise CoralError(
                f"commit {commit.short_hash} ({ref or 'HEAD'}) carries no config.json, so the "
                "Hub could not load it; commit the model with coral_hf.save_pretrained"
            )
        (folder / "README.md").write_text(model_card(repo, commit))
        api.create_repo(repo_id, private=private, exist_ok=True)
        if revision != "main":
            api.create_branch(repo_id, branch=revision, exist_ok=True)
        operations = [
            CommitOperationAdd(path_in_repo=path.name, path_or_fileobj=str(path))
            for path in sorted(folder.iterdir())
        ]
        info = api.create_commit(
            repo_id,
            operations,
            commit_message=commit_message or f"Coral {commit.short_hash}: {commit.message}"[:200],
            commit_description=f"Coral commit {commit.commit_hash}",
            revision=revision,
        )
    return HubCommit(repo_id, revision, info.oid, info.commit_url, commit.commit_hash)


def import_folder(
    repo: Repository,
    folder: str | os.PathLike[str],
    message: str | None = None,
    *,
    branch: str | None = None,
    metadata: Mapping[str, Any] | None = None,
) -> Commit:
    """Commit a ``save_pretrained`` folder: its ``*.safetensors`` weights (every
    shard; ``.bin`` files only without them, read with ``weights_only=True``)
    and its other files (``config.json``, tokenizer files) as in
    :func:`~coral_hf.save_pretrained`. Only the folder's top level is read;
    other weight formats (TF, Flax, ONNX, ...) are left out.

    Raises:
        ModelFileError: when the folder holds no weights file, or two shards
            hold the same tensor.
    """
    source = Path(folder)
    weight_files = sorted(source.glob("*.safetensors")) or sorted(source.glob("*.bin"))
    if not weight_files:
        raise ModelFileError(f"{source} holds no *.safetensors (or *.bin) weights file")
    weights: dict[str, Any] = {}
    for path in weight_files:
        for name, array in format_for(path).read(path).items():
            if name in weights:
                raise ModelFileError(f"{path}: tensor {name!r} is in another shard as well")
            weights[name] = array
    skip = [
        p.name
        for p in source.iterdir()
        if p.name in _NOT_KEPT or p.name.endswith((".safetensors", _INDEX_SUFFIX, *_OTHER_WEIGHTS))
    ]
    details = {**(metadata or {}), FILES_KEY: encode_files(source, skip)}
    details.setdefault(SOURCE_KEY, {"folder": str(source.absolute())})
    return repo.commit(
        message or f"import {source.name}", metadata=details, weights=weights, branch=branch
    )


def import_from_hub(
    repo: Repository,
    repo_id: str,
    revision: str = "main",
    *,
    message: str | None = None,
    branch: str | None = None,
    token: str | None = None,
    endpoint: str | None = None,
    cache_dir: str | Path | None = None,
) -> Commit:
    """Download revision ``revision`` of the Hub model repo ``repo_id`` and commit it.

    The commit records the source (:data:`SOURCE_KEY`: repo id, revision and
    the Hub's commit sha) and holds the tensors and files as
    :func:`import_folder` does. When the revision has ``*.safetensors`` files,
    its other weight formats (``pytorch_model.bin``, TF, Flax, ONNX) are not
    downloaded.

    Raises:
        huggingface_hub.errors.RepositoryNotFoundError, RevisionNotFoundError:
            when the Hub has no such repo or revision.
    """
    api = HfApi(endpoint=endpoint, token=token)
    info = api.model_info(repo_id, revision=revision)
    if info.sha is None:
        raise CoralError(f"the Hub gave no commit sha for {repo_id}@{revision}")
    sha = info.sha
    names = [sibling.rfilename for sibling in info.siblings or []]
    has_safetensors = any(name.endswith(".safetensors") for name in names)
    folder = snapshot_download(
        repo_id,
        revision=sha,
        token=token,
        endpoint=endpoint,
        cache_dir=cache_dir,
        ignore_patterns=[f"*{suffix}" for suffix in _OTHER_WEIGHTS] if has_safetensors else None,
    )
    source = {"hub": repo_id, "revision": revision, "sha": sha}
    return import_folder(
        repo,
        folder,
        message or f"import {repo_id}@{revision} ({sha[:12]})",
        branch=branch,
        metadata={SOURCE_KEY: source},
    )
