"""``coral://`` URLs: Coral checkpoints wherever Lightning opens a file.

Lightning opens checkpoints through fsspec (``LitModel.load_from_checkpoint``,
``ckpt_path`` with its own ``CheckpointIO``), and fsspec finds
:class:`CoralFileSystem` through the ``fsspec.specs`` entry point this package
declares, so no import is needed. Reading ``coral://...`` gives the Lightning
checkpoint that commit holds, as ``torch.save`` bytes of tensors and plain
values only (``torch.load(weights_only=True)`` takes them). Nothing can be
written: checkpoints go in through ``CoralCallback`` or ``CoralCheckpointIO``.

A URL is ``coral://[<repository folder>:]<ref>``, the ref a branch, a tag, a
run pointer (``mnist/best``), a commit id or a revision (``main~1``); refs
never hold ``:``. Without a folder, the repositories this process saved
checkpoints to are asked (newest first), then the current folder and those
above it, as ``coral-ml`` finds its repository.
"""

from __future__ import annotations

import contextlib
import io
import os
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch
from fsspec.spec import AbstractFileSystem

from coral_core import (
    CoralError,
    RefNotFoundError,
    Repository,
    RepositoryNotFoundError,
    find_repository,
)
from coral_lightning.convert import checkpoint_from_commit

#: What a Coral URL starts with.
SCHEME = "coral://"
#: Repositories this process saved checkpoints to, the newest last.
_SAVED_TO: list[Path] = []


@dataclass(frozen=True)
class CoralURL:
    """A parsed ``coral://[<folder>:]<ref>``."""

    folder: Path | None
    ref: str

    @classmethod
    def parse(cls, text: str | os.PathLike[str]) -> CoralURL:
        """Split a URL (or what follows ``coral://``) into folder and ref.

        Raises:
            RefNotFoundError: when no ref follows.
        """
        body = os.fspath(text).removeprefix(SCHEME)
        folder, colon, ref = body.rpartition(":")
        if not ref:
            raise RefNotFoundError(
                f"{SCHEME}{body} names no checkpoint: write coral://[<repository folder>:]<ref>"
            )
        return cls(Path(folder) if colon and folder else None, ref)

    def __str__(self) -> str:
        where = f"{self.folder}:" if self.folder is not None else ""
        return f"{SCHEME}{where}{self.ref}"


def url_for(repo: Repository, ref: str) -> str:
    """The URL of ``ref`` in ``repo``, which names the repository and so opens
    from any folder and any process."""
    return str(CoralURL(repo.path, ref))


def remember(repo: Repository) -> None:
    """Note that this process saves checkpoints to ``repo``: a URL without a
    folder is looked up there first."""
    if repo.path in _SAVED_TO:
        _SAVED_TO.remove(repo.path)
    _SAVED_TO.append(repo.path)


def known_repositories() -> list[Path]:
    """The repositories this process saved checkpoints to (newest first), then
    the one the current folder is in, if any."""
    candidates = [*reversed(_SAVED_TO)]
    with contextlib.suppress(RepositoryNotFoundError):
        candidates.append(find_repository(Path.cwd()))
    return list(dict.fromkeys(candidates))


def locate(url: str | os.PathLike[str] | CoralURL) -> tuple[Repository, str]:
    """The repository a URL names and the commit id of its ref.

    Raises:
        RepositoryNotFoundError: when the folder holds no repository (or,
            without a folder, none of those looked at holds the ref).
        RefNotFoundError: when the repository has no such ref.
    """
    parsed = url if isinstance(url, CoralURL) else CoralURL.parse(url)
    if parsed.folder is not None:
        repo = Repository(parsed.folder)
        return repo, repo.resolve(parsed.ref)
    candidates = known_repositories()
    for folder in candidates:
        try:
            repo = Repository(folder)
            return repo, repo.resolve(parsed.ref)
        except (RepositoryNotFoundError, RefNotFoundError):
            continue
    looked = ", ".join(str(folder) for folder in candidates) or "none"
    raise RefNotFoundError(
        f"{parsed} names no checkpoint of the repositories looked at ({looked}); name the "
        f"repository: coral://<repository folder>:{parsed.ref}"
    )


class CoralFileSystem(AbstractFileSystem):  # type: ignore[misc]
    """fsspec's view of Coral checkpoints: each ``coral://`` URL is a read-only
    file holding the Lightning checkpoint of its commit."""

    protocol = "coral"

    @classmethod
    def _strip_protocol(cls, path: Any) -> Any:
        if isinstance(path, list):
            return [cls._strip_protocol(item) for item in path]
        return os.fspath(path).removeprefix(SCHEME)

    def info(self, path: str, **kwargs: Any) -> dict[str, Any]:
        """Name, type, commit and time of a checkpoint; a pruned one exists
        (opening it says which checkpoint near it has weights).

        Raises:
            FileNotFoundError: when the URL names no checkpoint (saying why).
        """
        try:
            repo, commit = locate(self._strip_protocol(path))
        except CoralError as error:
            raise FileNotFoundError(str(error)) from None
        timestamp = repo.read_commit(commit).timestamp
        return {
            "name": self._strip_protocol(path),
            "type": "file",
            "size": None,
            "commit": commit,
            "mtime": timestamp,
        }

    def ls(self, path: str, detail: bool = True, **kwargs: Any) -> list[Any]:
        """A checkpoint is a file: its listing is itself."""
        entry = self.info(path)
        return [entry] if detail else [entry["name"]]

    def modified(self, path: str) -> datetime:
        """When the checkpoint was committed."""
        return datetime.fromtimestamp(self.info(path)["mtime"], tz=timezone.utc)

    def _open(self, path: str, mode: str = "rb", **kwargs: Any) -> io.BytesIO:
        if mode != "rb":
            raise CoralError(
                f"coral://{path} is read-only: Lightning's checkpoints go into Coral through "
                "CoralCallback or Trainer(plugins=[CoralCheckpointIO(...)])"
            )
        repo, commit = locate(path)
        buffer = io.BytesIO()
        torch.save(checkpoint_from_commit(repo, commit), buffer)
        buffer.seek(0)
        return buffer
