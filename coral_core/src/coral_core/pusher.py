"""Pushing a training run as it trains: in the background, retried, flushed at the end.

``CheckpointConfig(push_to="origin")`` gives the run's manager a
:class:`BackgroundPusher`. After each checkpoint the manager asks for a push
of its branch and its run's pointers; the pusher's thread does it while
training goes on, so a step waits for the commit only. Requests that arrive
while a push runs are folded into the next one (it sends whatever is new).
A failed push (the remote is down, a network error) is retried with
exponential backoff and a warning; nothing is lost meanwhile, since every
checkpoint is committed locally first and a remote ref moves only once all
its objects are there. When another run moved the same branch on the remote,
the branch stays as it is there and the run travels by its pointers
(``refs/runs/<experiment>/<run>/...``), with a warning saying so.
"""

from __future__ import annotations

import atexit
import concurrent.futures.thread  # noqa: F401 (its exit hook must be registered before ours)
import logging
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from coral_core.errors import ConfigError, MissingObjectError
from coral_core.refs import HEADS, PRUNED

if TYPE_CHECKING:
    from coral_core.repository import Repository

_log = logging.getLogger("coral.push")
FIRST_RETRY_SECONDS = 0.5
MAX_RETRY_SECONDS = 30.0
#: How long :meth:`BackgroundPusher.flush` waits by default at the end of training.
FLUSH_TIMEOUT_SECONDS = 600.0


class BackgroundPusher:
    """Pushes a branch and refs to a remote on a thread of its own.

    Args:
        repo: the repository the checkpoints are committed to.
        remote: the remote's name.

    Raises:
        ConfigError: when the repository has no such remote.
    """

    def __init__(
        self,
        repo: Repository,
        remote: str,
        *,
        first_retry: float = FIRST_RETRY_SECONDS,
        max_retry: float = MAX_RETRY_SECONDS,
    ) -> None:
        if remote not in repo.list_remotes():
            raise ConfigError(
                f"push_to={remote!r}: {repo.path} has no such remote; add it first with "
                f"`coral-ml remote add {remote} <url>`"
            )
        self.repo = repo
        self.remote = remote
        self.first_retry = first_retry
        self.max_retry = max_retry
        self.pushes = 0  # pushes that succeeded
        self.failures = 0  # attempts that failed
        self.bytes_sent = 0
        self.last_error: BaseException | None = None
        self._cond = threading.Condition()
        self._branch: str | None = None
        self._refs: dict[str, None] = {}
        self._requested = self._done = 0
        self._at_end: dict[str, list[str]] = {}  # branch -> refs, pushed by flush()
        self._gave_up = False  # the last flush timed out: exiting does not wait again
        self._closed = False
        self._warned_branch = False
        self._thread: threading.Thread | None = None

    def request(self, branch: str, refs: Sequence[str]) -> None:
        """Ask for a push of ``branch`` and ``refs`` (full names); returns at once."""
        with self._cond:
            if self._closed:
                raise ConfigError("the pusher is closed; no more pushes")
            self._branch = branch
            self._refs.update(dict.fromkeys(refs))
            self._requested += 1
            self._gave_up = False
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="coral-push", daemon=True)
                self._thread.start()
            self._cond.notify_all()

    def request_at_end(self, branch: str, refs: Sequence[str]) -> None:
        """Ask for a push of ``branch`` and ``refs`` at the next :meth:`flush`
        (``push_strategy="end"``); the process's exit flushes too."""
        with self._cond:
            self._at_end[branch] = list(refs)
            self._gave_up = False

    @property
    def pending(self) -> bool:
        """Whether a requested push (or one for the end) has not gone through yet."""
        with self._cond:
            return self._done < self._requested or bool(self._at_end)

    def _run(self) -> None:
        delay = self.first_retry
        while True:
            with self._cond:
                while self._done == self._requested and not self._closed:
                    self._cond.wait()
                if self._closed:
                    return
                generation, branch, refs = self._requested, self._branch, list(self._refs)
            marks = self.repo.refs.names(PRUNED)
            try:
                self._push(str(branch), refs)
            except Exception as exc:  # the thread outlives any failure
                pruned_meanwhile = self.repo.refs.names(PRUNED) != marks
                if isinstance(exc, MissingObjectError) and pruned_meanwhile:
                    continue  # retention freed what the walk had seen: walk again, at once
                with self._cond:
                    self.failures += 1
                    self.last_error = exc
                    _log.warning(
                        "push to %r failed (%s); the checkpoints are committed here, "
                        "retrying in %.1f s",
                        self.remote,
                        exc,
                        delay,
                    )
                    self._cond.wait(delay)
                delay = min(delay * 2, self.max_retry)
                continue
            with self._cond:
                if self.last_error is not None:
                    _log.warning("push to %r works again", self.remote)
                self.last_error = None
                self.pushes += 1
                self._done = generation
                self._cond.notify_all()
            delay = self.first_retry

    def _push(self, branch: str, refs: list[str]) -> None:
        from coral_core.remote import PushRejectedError, push

        def count(size: int) -> None:
            self.bytes_sent += size

        try:
            push(self.repo, self.remote, [branch], refs=refs, progress=count)
        except PushRejectedError as exc:
            if exc.ref != HEADS + branch:
                raise
            push(self.repo, self.remote, [], refs=refs, progress=count)
            if not self._warned_branch:
                self._warned_branch = True
                _log.warning(
                    "branch %r on %r has commits of another run: it stays as it is there, "
                    "and this run is pushed as %s (fetch and merge to bring them together)",
                    branch,
                    self.remote,
                    ", ".join(refs),
                )

    def flush(self, timeout: float | None = None) -> bool:
        """Wait until every requested push went through, showing progress on a
        terminal. Returns False (with a warning) if the remote was still failing
        after ``timeout`` seconds (default 10 minutes)."""
        limit = FLUSH_TIMEOUT_SECONDS if timeout is None else timeout
        deadline = time.monotonic() + limit
        show = sys.stderr.isatty()
        with self._cond:
            deferred, self._at_end = self._at_end, {}
        for branch, refs in deferred.items():
            self.request(branch, refs)
        with self._cond:
            while self._done < self._requested and not self._closed:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                if show:
                    sys.stderr.write(
                        f"\rpushing to {self.remote}: {self.bytes_sent / 1e6:.1f} MB sent"
                    )
                    sys.stderr.flush()
                self._cond.wait(min(0.2, remaining))
            done = self._done >= self._requested
            self._gave_up = not done
        if show:
            sys.stderr.write(f"\rpushing to {self.remote}: {self.bytes_sent / 1e6:.1f} MB sent\n")
        if not done:
            _log.warning(
                "push to %r is not done after %.0f s (%s); every checkpoint is committed "
                "here: push it later with `coral-ml push %s`",
                self.remote,
                limit,
                self.last_error,
                self.remote,
            )
        return done

    def close(self) -> None:
        """Stop the thread (after the push in progress, if any); pending requests are dropped."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join()


_shared: dict[tuple[Path, str], BackgroundPusher] = {}
_shared_lock = threading.Lock()


def pusher_for(repo: Repository, remote: str) -> BackgroundPusher:
    """The one :class:`BackgroundPusher` of this process for ``repo``'s folder and
    ``remote``, so every writer of a run shares a thread and an order of pushes.
    Pushers made here are flushed when the process exits."""
    key = (repo.path, remote)
    with _shared_lock:
        pusher = _shared.get(key)
        if pusher is None or pusher._closed:
            pusher = _shared[key] = BackgroundPusher(repo, remote)
        return pusher


def _flush_at_exit() -> None:
    with _shared_lock:
        pushers = list(_shared.values())
    for pusher in pushers:
        if pusher.pending and not pusher._gave_up:  # a flush that gave up warned already
            pusher.flush()


# The exit's flush must run while threads still start and thread pools still take
# work: threading's own exit hooks run before the interpreter joins its threads,
# and in reverse order, so this one runs before concurrent.futures stops its pools
# (imported above, so registered first). ``atexit`` runs too late for both.
getattr(threading, "_register_atexit", atexit.register)(_flush_at_exit)
