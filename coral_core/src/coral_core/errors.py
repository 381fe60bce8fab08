"""Every error Coral raises.

Each error subclasses :class:`CoralError` and the builtin it behaves like, so
``except LookupError`` keeps working for callers who do not know Coral. Messages
name what the user gave and say what to do next; the CLI prints them as one
line.
"""

from __future__ import annotations

from collections.abc import Sequence


class CoralError(Exception):
    """Base class of every error raised by Coral."""

    def __str__(self) -> str:  # KeyError would quote the message otherwise
        return str(self.args[0]) if self.args else self.__class__.__name__


class RepositoryNotFoundError(CoralError, FileNotFoundError):
    """No ``.coral`` folder where one was expected."""


class UnsupportedFormatError(CoralError, RuntimeError):
    """The repository was written by a newer Coral than this one."""


class InvalidRefNameError(CoralError, ValueError):
    """A branch or tag name that is not allowed (``..``, spaces, ...)."""


class RefNotFoundError(CoralError, LookupError):
    """A branch, tag or commit id that does not exist."""


class AmbiguousRefError(CoralError, LookupError):
    """A commit id prefix that matches more than one commit."""


class RefExistsError(CoralError, FileExistsError):
    """A branch or tag that already exists."""


class RefMovedError(CoralError, RuntimeError):
    """A ref changed between reading it and updating it (compare-and-swap failed)."""


class MissingObjectError(CoralError, LookupError):
    """An object a commit needs is not in the store."""


class DiskError(CoralError, OSError):
    """The disk or the OS refused: full, read-only, not allowed, too many open
    files, a symlink loop, an I/O error. Nothing was half done.

    Attributes:
        errno: the OS's error number; filename: the file it concerns.
    """

    def __init__(self, message: str, code: int | None = None, filename: str | None = None):
        super().__init__(message)
        self.errno = code
        self.filename = filename

    def __reduce__(self) -> tuple[type, tuple[str, int | None, str | None]]:
        return type(self), (str(self), self.errno, self.filename)


class UnsafePathError(CoralError, ValueError):
    """A file name from data (a commit, a remote) that would leave its folder."""


class CorruptObjectError(CoralError, OSError):
    """An object failed its integrity check; its data is never returned."""


class InvalidKeyError(CoralError, ValueError):
    """A store key outside the allowed alphabet or escaping the store."""


class ReadOnlyStoreError(CoralError, PermissionError):
    """A write to a store opened read-only."""


class UnsupportedDtypeError(CoralError, TypeError):
    """A dtype Coral cannot store."""


class TensorMismatchError(CoralError, ValueError):
    """Data that does not match its metadata (shape, dtype) or a bad tensor."""


class WeightsMismatchError(TensorMismatchError):
    """A commit's tensors do not fit a model: names missing, unexpected, or misshapen.

    The lists are sorted; the message shows up to 20 names of each kind.
    """

    LISTED = 20

    def __init__(
        self,
        missing: Sequence[str] = (),
        unexpected: Sequence[str] = (),
        misshapen: Sequence[str] = (),
        what: str = "model",
    ) -> None:
        self.missing = sorted(missing)
        self.unexpected = sorted(unexpected)
        self.misshapen = sorted(misshapen)
        parts = []
        for label, names in (
            ("missing from the commit", self.missing),
            (f"in the commit but not in the {what}", self.unexpected),
            ("of another shape or dtype", self.misshapen),
        ):
            if names:
                shown = ", ".join(names[: self.LISTED])
                more = f" and {len(names) - self.LISTED} more" if len(names) > self.LISTED else ""
                parts.append(f"{len(names)} {label}: {shown}{more}")
        hint = ""
        if self.missing or self.unexpected:
            hint = " (strict=False loads the tensors that match by name and shape)"
        super().__init__(f"the commit does not fit the {what}; " + "; ".join(parts) + hint)


class PrunedCommitError(CoralError, LookupError):
    """A commit whose weights are gone: retention pruned them (the commit, its
    message, metrics and lineage stay in history).

    Attributes:
        commit: the commit asked for.
        nearest: the nearest commit of the same run whose weights are kept, if any.
    """

    def __init__(self, message: str, commit: str | None = None, nearest: str | None = None):
        super().__init__(message)
        self.commit = commit
        self.nearest = nearest

    def __reduce__(self) -> tuple[type, tuple[str, str | None, str | None]]:
        return type(self), (str(self), self.commit, self.nearest)


class ShallowCommitError(PrunedCommitError):
    """A commit whose weights a shallow clone or fetch (``--depth``) did not bring."""


class TensorNotFoundError(CoralError, KeyError):
    """A tensor name that is not in the commit."""


class NothingToCommitError(CoralError, RuntimeError):
    """``commit`` with nothing staged."""


class DirtyIndexError(CoralError, RuntimeError):
    """An operation that would discard staged changes."""


class LockTimeoutError(CoralError, TimeoutError):
    """Another process held a repository lock for too long."""


class BranchInUseError(CoralError, RuntimeError):
    """Deleting the branch HEAD points at."""


class InvalidMetricError(CoralError, ValueError):
    """A metric that is not a number, string or bool, or a bad metric filter."""


class ConfigError(CoralError, ValueError):
    """An unknown configuration key or a value of the wrong type."""


class ModelFileError(CoralError, ValueError):
    """A file that should hold a model's tensors is truncated, damaged or not a model."""


class UnsafeModelFileError(ModelFileError):
    """A model file that can only be read by running code from it (a full pickle)."""


class UnknownCodecError(ConfigError):
    """No delta codec of that name is installed (a plugin's codec, without the plugin)."""
