"""One process of the shared-run tests (run as ``python -m tests.coral_core.run_worker``).

    train REPO URL SEED STEPS [DELAY]   train a run of STEPS checkpoints (max 2 kept,
                                        best by loss) pushing to URL after each one
    gc REPO LEASE                       collect garbage on the repository's origin,
                                        holding the remote lock with a LEASE-second lease,
                                        20 ms a deleted object (so a kill lands mid-way)
    prune REPO SEED STEPS               train STEPS checkpoints with retention, no remote

A run's checkpoint at step s holds :func:`weights` of (SEED, s), so a test can
check any kept checkpoint bit for bit. ``train`` prints ``done <run id>`` when
every checkpoint was pushed.
"""

from __future__ import annotations

import sys
import time

import numpy as np

from coral_core import CheckpointConfig, CheckpointManager, Repository, TrainingState
from coral_core.remote import collect_remote_garbage

EXPERIMENT = "exp"


def weights(seed: int, step: int, size: int = 64) -> dict[str, np.ndarray]:
    """A small model whose weights change each step (no delta pays), and a
    tensor that comes back every third step: when it does, only pruned
    checkpoints held it, so a push finds it on the remote while a gc there
    sees garbage (the race the remote locks are for)."""
    rng = np.random.default_rng([seed, step])
    return {
        "encoder.weight": rng.standard_normal((size, size)).astype(np.float32),
        "encoder.bias": np.full(size, step, np.float32),
        "cycle": np.full(size, step % 3, np.float32),
    }


def loss(seed: int, step: int) -> float:
    """Falls, then rises after step 4: the best is not the last."""
    return float(abs(step - 4) + 0.1 * seed)


def train(path: str, url: str | None, seed: int, steps: int, delay: float) -> None:
    repo = Repository(path, init=True)
    if url is not None and "origin" not in repo.list_remotes():
        repo.add_remote("origin", url)
    config = CheckpointConfig(
        max_checkpoints=2,
        save_on_best_metric="loss",
        push_to="origin" if url is not None else None,
    )
    manager = CheckpointManager(repo, config, EXPERIMENT, hyperparameters={"seed": seed})
    for step in range(1, steps + 1):
        state = TrainingState(epoch=step, global_step=step, metrics={"loss": loss(seed, step)})
        manager.save(weights(seed, step), state)
        print(f"saved {step}", flush=True)
        time.sleep(delay)
    if not manager.finish(timeout=120):
        raise SystemExit("pushes did not finish")
    print(f"done {manager.run_id}", flush=True)


def _slowly(done: int, total: int | None) -> None:
    time.sleep(0.02)


def main() -> None:
    mode, path = sys.argv[1], sys.argv[2]
    if mode == "train":
        delay = float(sys.argv[6]) if len(sys.argv) > 6 else 0.0
        train(path, sys.argv[3], int(sys.argv[4]), int(sys.argv[5]), delay)
    elif mode == "prune":
        train(path, None, int(sys.argv[3]), int(sys.argv[4]), 0.0)
    elif mode == "gc":
        result = collect_remote_garbage(
            Repository(path), "origin", lease=float(sys.argv[3]), progress=_slowly
        )
        print(f"removed {result.removed_objects}", flush=True)
    else:
        raise SystemExit(f"unknown mode {mode!r}")


if __name__ == "__main__":
    main()
