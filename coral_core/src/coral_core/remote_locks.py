"""Locks on a remote: any number of pushes at once, or one ``gc --remote`` alone.

On a folder, the readers-writer ``flock`` of its ``locks/gc.lock``: for a
repository's ``.coral``, the very lock its owner's commits (shared) and gc
(exclusive) take, so a push into someone's live repository excludes their gc
and the other way round; the kernel drops a dead holder's lock.

Elsewhere (a bucket), restic's scheme on any :class:`~coral_core.WeightStore`:
a push holds a shared lock object ``locks/push-<token>`` while it looks for
what the remote lacks, copies it and moves refs; ``gc --remote`` holds the
exclusive ``locks/gc`` and starts marking only once no push lock is left.
Each side writes its own lock first and then looks for the other's, so with a
store that reads its own writes (S3 and folders do) at least one of two
racing sides sees the other and waits.

A lock is a small JSON object ``{"owner", "kind", "expires"}`` that a
heartbeat thread of its holder renews every third of its lease; one past its
expiry belongs to a process that died and is broken by whoever finds it. A
push checks that its lock is still its own, and that no gc has started,
right before it moves refs; a push whose lock was broken (it stalled past
its lease) gives up without moving anything and is run again.
"""

from __future__ import annotations

import contextlib
import json
import secrets
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Protocol

from coral_core.errors import CoralError, LockTimeoutError, MissingObjectError
from coral_core.locks import fair_lock
from coral_core.store.base import WeightStore
from coral_core.store.local import GC_LOCK as FOLDER_GC_LOCK
from coral_core.store.local import LocalStore

LOCKS = "locks/"
GC_LOCK = LOCKS + "gc"
PUSH_PREFIX = LOCKS + "push-"
#: Seconds a lock stays valid without a heartbeat.
LEASE_SECONDS = 60.0
#: How long a push waits for a gc to finish (and a gc for another gc) before giving up.
WAIT_SECONDS = 300.0


class RemoteBusyError(LockTimeoutError):
    """A remote's lock is held by another push or gc: run again later."""


@dataclass
class Lease:
    """A lock object this process holds, kept alive by a heartbeat thread."""

    store: WeightStore
    key: str
    kind: str
    lease: float
    owner: str = ""
    renewed: float = 0.0

    def body(self) -> bytes:
        expires = time.time() + self.lease
        return json.dumps({"owner": self.owner, "kind": self.kind, "expires": expires}).encode()

    def renew(self) -> None:
        self.store.put(self.key, self.body())
        self.renewed = time.monotonic()

    def check(self) -> None:
        """Raise unless the lock is still this process's and within its lease.

        Raises:
            RemoteBusyError: when it was broken, or a gc started (for a push).
        """
        if time.monotonic() - self.renewed > self.lease * 0.8:
            raise RemoteBusyError(f"{self.key} on {self.store!r} was not renewed in time")
        held = read_lock(self.store, self.key)
        if held is None or held[0] != self.owner:
            raise RemoteBusyError(f"{self.key} on {self.store!r} was broken by another process")
        if self.kind == "push" and live_lock(self.store, GC_LOCK):
            raise RemoteBusyError(f"a gc started on {self.store!r} during this push")


def read_lock(store: WeightStore, key: str) -> tuple[str, float] | None:
    """``(owner, expires)`` of a lock object; None when absent; ``("", 0)`` when garbage."""
    try:
        data = json.loads(store.get(key))
        return str(data["owner"]), float(data["expires"])
    except MissingObjectError:
        return None
    except (ValueError, KeyError, TypeError):
        return "", 0.0  # garbage (a torn or foreign file): as good as expired


def live_lock(store: WeightStore, key: str) -> bool:
    """Whether ``key`` is a lock within its lease; an expired or garbage one is broken."""
    held = read_lock(store, key)
    if held is None:
        return False
    if held[1] > time.time():
        return True
    with contextlib.suppress(CoralError):
        store.delete(key)
    return False


@contextmanager
def _heartbeat(lease: Lease) -> Iterator[Lease]:
    stop = threading.Event()

    def beat() -> None:
        while not stop.wait(lease.lease / 3):
            with contextlib.suppress(Exception):  # a failed renewal shows in check()
                lease.renew()

    thread = threading.Thread(target=beat, name=f"coral-{lease.kind}-lock", daemon=True)
    thread.start()
    try:
        yield lease
    finally:
        stop.set()
        thread.join()
        with contextlib.suppress(CoralError):
            lease.store.delete(lease.key)


class Held(Protocol):
    """A lock held on a remote; ``check()`` raises if it was lost meanwhile."""

    def check(self) -> None: ...


class _Flock:
    """A folder's ``flock``: nobody else can break it while this process lives."""

    def check(self) -> None:
        return None


@contextmanager
def _folder_lock(store: LocalStore, shared: bool, wait: float) -> Iterator[Held]:
    try:
        with fair_lock(store.root / FOLDER_GC_LOCK, shared=shared, timeout=wait):
            store.refresh()  # a gc may have rewritten packs this view still names
            yield _Flock()
    except LockTimeoutError as exc:
        raise RemoteBusyError(f"{store!r} stays locked by another push or gc: {exc}") from exc


@contextmanager
def push_lock(
    store: WeightStore, lease: float = LEASE_SECONDS, wait: float = WAIT_SECONDS
) -> Iterator[Held]:
    """Hold a shared push lock on ``store`` (waiting while a gc runs).

    Raises:
        RemoteBusyError: when a gc holds the remote for ``wait`` seconds.
    """
    if isinstance(store, LocalStore):
        with _folder_lock(store, True, wait) as held:
            yield held
        return
    token = secrets.token_hex(8)
    held = Lease(store, f"{PUSH_PREFIX}{token}", "push", lease, owner=token)
    deadline = time.monotonic() + wait
    delay = 0.05
    while True:
        held.renew()
        if not live_lock(store, GC_LOCK):
            break
        with contextlib.suppress(CoralError):
            store.delete(held.key)  # let the gc go on, then try again
        if time.monotonic() > deadline:
            raise RemoteBusyError(
                f"a gc holds {store!r} (lock {GC_LOCK!r}) for more than {wait:.0f} s; "
                "push again when it is done"
            )
        time.sleep(delay)
        delay = min(delay * 2, 1.0)
    with _heartbeat(held) as active:
        yield active


@contextmanager
def gc_lock(
    store: WeightStore, lease: float = LEASE_SECONDS, wait: float = WAIT_SECONDS
) -> Iterator[Held]:
    """Hold the exclusive gc lock on ``store``, once every push in progress is done.

    Raises:
        RemoteBusyError: when another gc holds it, or pushes keep going, for ``wait`` seconds.
    """
    if isinstance(store, LocalStore):
        with _folder_lock(store, False, wait) as held:
            yield held
        return
    token = secrets.token_hex(8)
    held = Lease(store, GC_LOCK, "gc", lease, owner=token)
    deadline = time.monotonic() + wait
    while not store.put_if_absent(GC_LOCK, held.body()):
        if not live_lock(store, GC_LOCK):
            continue  # it was stale and is broken now
        if time.monotonic() > deadline:
            raise RemoteBusyError(f"another gc holds {store!r} for more than {wait:.0f} s")
        time.sleep(0.2)
    held.renewed = time.monotonic()
    with _heartbeat(held) as active:
        while any(live_lock(store, key) for key in list(store.list(PUSH_PREFIX))):
            if time.monotonic() > deadline:
                raise RemoteBusyError(
                    f"pushes to {store!r} did not stop for {wait:.0f} s; gc again later"
                )
            time.sleep(0.1)
        yield active
