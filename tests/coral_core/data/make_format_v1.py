"""Write ``format_v1.tar.gz``: a repository as Coral's format 1 (the release
before append-only history) left it, for ``test_format.py`` to open and migrate.

Run with the format-1 code (commit 4a90e66 of this repository):
``python tests/coral_core/data/make_format_v1.py``. What it holds: a plain commit,
a checkpoint run ``exp`` whose retention rewrote the branch (``drop_commits``)
and kept a moving ``exp/best`` tag, training state on every checkpoint, an
annotated tag ``v1``, and a branch ``feature``. Tensors are a function of the
step (see ``weights``), so the test can check every kept version bit for bit.
"""

from __future__ import annotations

import json
import tarfile
import tempfile
from pathlib import Path

import numpy as np

from coral_core import CheckpointConfig, CheckpointManager, Repository, TrainingState

HERE = Path(__file__).resolve().parent


def weights(step: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(step)
    return {
        "encoder.weight": rng.standard_normal((32, 16)).astype(np.float32),
        "encoder.bias": np.full(32, step, np.float16),
    }


def main() -> None:
    with tempfile.TemporaryDirectory() as scratch:
        root = Path(scratch) / "repo"
        repo = Repository(root, init=True, chunk_size=1024)
        repo.commit("base model", weights=weights(100), metrics={"acc": 0.1})
        repo.tag_version("v1", "the base", metrics={"acc": 0.1})
        repo.create_branch("feature")
        repo.commit("feature work", weights=weights(200), branch="feature")
        config = CheckpointConfig(save_on_best_metric="loss", max_checkpoints=2)
        manager = CheckpointManager(repo, config, "exp")
        losses = [0.9, 0.5, 0.7, 0.8, 0.6]
        for step, loss in enumerate(losses, 1):
            state = TrainingState(epoch=step, global_step=step, metrics={"loss": loss})
            state.optimizer_state = {"momentum": np.full(4, step, np.float32)}
            manager.save(weights(step), state)
        repo.gc()
        expected = {
            "kept_steps": [c.step for c in manager.checkpoints],
            "best_step": manager.best.step if manager.best else None,
            "log": [c.message for c in repo.log()],
        }
        (root / "expected.json").write_text(json.dumps(expected, indent=2) + "\n")
        with tarfile.open(HERE / "format_v1.tar.gz", "w:gz") as archive:
            archive.add(root, arcname="repo")


if __name__ == "__main__":
    main()
