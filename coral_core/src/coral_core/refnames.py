"""Rules for branch and tag names (those of ``git check-ref-format``)."""

from __future__ import annotations

import re

from coral_core.errors import InvalidRefNameError

_BAD_CHARS = re.compile(r"[\x00-\x20\x7f~^:?*\[\\]")
#: What every store (a bucket's keys, a folder's names) takes: a name made of
#: these can be pushed anywhere it can be made.
_PORTABLE = re.compile(r"[A-Za-z0-9._/-]+")


def validate_ref_name(name: str, what: str = "branch") -> str:
    """Return ``name`` if it can name a branch or tag.

    Slashes group names (``feature/lr-sweep``); ``..``, a leading ``-`` or ``/``,
    empty or hidden parts, ``.lock`` endings, ``@{`` and control or glob
    characters are refused, so a name can never escape ``.coral/refs``.

    Raises:
        InvalidRefNameError: naming the problem.
    """
    problem = None
    if not isinstance(name, str) or not name:
        problem = "it is empty"
    elif name.startswith(("-", "/")) or name.endswith(("/", ".")):
        problem = "it starts with '-' or '/', or ends with '/' or '.'"
    elif ".." in name or "@{" in name or name == "@" or "//" in name:
        problem = "it contains '..', '//' or '@{'"
    elif _BAD_CHARS.search(name):
        problem = "it contains a space, a control character or one of ~^:?*[\\"
    elif not _PORTABLE.fullmatch(name):
        problem = "use letters a-z, A-Z, digits, '.', '_', '-' and '/' (what every remote takes)"
    elif any(part.startswith(".") or part.endswith(".lock") for part in name.split("/")):
        problem = "a part starts with '.' or ends with '.lock'"
    elif name == "HEAD":
        problem = "HEAD is reserved"
    if problem:
        raise InvalidRefNameError(f"{name!r} is not a valid {what} name: {problem}")
    return name
