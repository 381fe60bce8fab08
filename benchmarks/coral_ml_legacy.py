"""Commit checkpoints with the original ``coral-ml`` 1.0.0 from PyPI, for comparison.

Runs inside its own venv (``benchmarks/.venv-coral-ml``, made by
``benchmarks/storage.py``), since that release installs a top-level ``coral``
package; it imports nothing from this repository. Reads ``ckpt-*.npz`` from
the folder given, commits them in order, restores every version, and prints
one JSON object: stored bytes, median commit seconds (after the first, as for
Coral), newest checkout seconds, and how many versions came back bit for bit
(1.0.0 rebuilds deltas in float arithmetic and merges near-duplicates, so
some do not).

    benchmarks/.venv-coral-ml/bin/python benchmarks/coral_ml_legacy.py CHECKPOINT_DIR
"""

from __future__ import annotations

import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from coral.core.weight_tensor import WeightMetadata, WeightTensor
from coral.version_control.repository import Repository


def same_bits(a: np.ndarray, b: np.ndarray) -> bool:
    width = {1: np.uint8, 2: np.uint16, 4: np.uint32, 8: np.uint64}[a.dtype.itemsize]
    return (
        a.dtype == b.dtype and a.shape == b.shape and np.array_equal(a.view(width), b.view(width))
    )


def main() -> None:
    folder = Path(sys.argv[1])
    paths = sorted(folder.glob("ckpt-*.npz"))
    with tempfile.TemporaryDirectory(prefix="coral-ml-1.0.0-") as root:
        repo = Repository(Path(root), init=True)
        commits, commit_times = [], []
        for i, path in enumerate(paths):
            with np.load(path) as arrays:
                weights = {
                    name: WeightTensor(
                        data=arrays[name],
                        metadata=WeightMetadata(name, arrays[name].shape, arrays[name].dtype),
                    )
                    for name in arrays.files
                }
            start = time.perf_counter()
            repo.stage_weights(weights)
            commits.append(repo.commit(f"checkpoint {i}").commit_hash)
            commit_times.append(time.perf_counter() - start)
        stored = sum(f.stat().st_size for f in Path(root, ".coral").rglob("*") if f.is_file())
        exact, newest_s = 0, 0.0
        for commit, path in zip(commits, paths, strict=True):
            start = time.perf_counter()
            restored = repo.get_all_weights(commit)
            newest_s = time.perf_counter() - start
            with np.load(path) as arrays:
                exact += set(restored) == set(arrays.files) and all(
                    same_bits(np.asarray(restored[n].data), arrays[n]) for n in arrays.files
                )
    result = {
        "stored_bytes": stored,
        "commit_s": statistics.median(commit_times[1:] or commit_times),  # as for Coral
        "checkout_newest_s": newest_s,
        "versions": len(paths),
        "versions_exact": int(exact),
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
