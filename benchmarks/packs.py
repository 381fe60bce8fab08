"""Packs against loose objects: files, bytes and time of commits and checkouts.

A from-scratch run of a small GPT-shaped model (float32; 12 blocks of
attention, MLP, layer norms and biases, 148 tensors of 60 MB: many small
tensors, as in issue 19's from-scratch GPT) is committed checkpoint by checkpoint into two
repositories, one storing every object as a file of its own (the format
before packs, ``LocalStore``) and one with packs (``PackedStore``, the
default), the two interleaved step by step. Each checkpoint moves every
tensor a little, as a training step does. Reported, as medians over the
checkpoints: files a commit adds, commit seconds, and the newest checkout's
seconds warm and cold (the page cache dropped, when run as root; otherwise
said skipped), beside ``safetensors`` ``save_file`` + fsync and ``load_file``
of the same checkpoint. Targets (issue 19): a commit writes O(1) files; the
commit at most 1.5x ``save_file`` + fsync for models of 50 MB and more.

    python benchmarks/packs.py [--checkpoints 8] [--json PATH]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import tempfile
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path

import numpy as np
from safetensors.numpy import load_file, save_file

from coral_core import LocalStore, Repository, bit_view


def gpt_shaped(
    rng: np.random.Generator, width: int = 384, blocks: int = 12
) -> dict[str, np.ndarray]:
    """Weights of a GPT-shaped decoder: embeddings, then per block attention,
    MLP, two layer norms, and their biases."""

    def normal(*shape: int) -> np.ndarray:
        return (rng.standard_normal(shape) * 0.02).astype(np.float32)

    weights = {"wte": normal(2048, width), "wpe": normal(256, width)}
    for b in range(blocks):
        p = f"h.{b}."
        weights |= {
            p + "attn.c_attn.weight": normal(width, 3 * width),
            p + "attn.c_attn.bias": normal(3 * width),
            p + "attn.c_proj.weight": normal(width, width),
            p + "attn.c_proj.bias": normal(width),
            p + "mlp.c_fc.weight": normal(width, 2 * width),
            p + "mlp.c_fc.bias": normal(2 * width),
            p + "mlp.c_proj.weight": normal(2 * width, width),
            p + "mlp.c_proj.bias": normal(width),
            p + "ln_1.weight": np.ones(width, np.float32),
            p + "ln_1.bias": np.zeros(width, np.float32),
            p + "ln_2.weight": np.ones(width, np.float32),
            p + "ln_2.bias": np.zeros(width, np.float32),
        }
    return weights | {
        "ln_f.weight": np.ones(width, np.float32),
        "ln_f.bias": np.zeros(width, np.float32),
    }


def step(weights: dict[str, np.ndarray], rng: np.random.Generator) -> dict[str, np.ndarray]:
    """One training step's worth of change in every tensor (Adam-sized, lr 1e-3)."""
    return {
        k: v + (rng.standard_normal(v.shape) * 1e-3).astype(np.float32) for k, v in weights.items()
    }


def files_in(folder: Path) -> int:
    return sum(1 for p in folder.rglob("*") if p.is_file())


def bytes_in(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def timed(action: Callable[[], object]) -> float:
    start = time.perf_counter()
    action()
    return time.perf_counter() - start


def drop_caches() -> bool:
    """Empty the page cache (needs root); False when it cannot."""
    try:
        os.sync()
        Path("/proc/sys/vm/drop_caches").write_text("3\n")
    except OSError:
        return False
    return True


def save_fsync(path: Path, weights: dict[str, np.ndarray]) -> None:
    save_file(weights, str(path))
    with open(path, "rb") as handle:
        os.fsync(handle.fileno())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoints", type=int, default=8)
    default = Path(__file__).parent / "results" / "packs.json"
    parser.add_argument("--json", type=Path, default=default)
    args = parser.parse_args()

    rng = np.random.default_rng(0)
    weights = gpt_shaped(rng)
    size = sum(a.nbytes for a in weights.values())
    modes = ("loose", "packed")
    rows: dict[str, dict[str, list[float]]] = {
        m: {"files": [], "commit": [], "warm": [], "cold": []} for m in (*modes, "safetensors")
    }
    cold = True
    with tempfile.TemporaryDirectory(dir=Path.cwd()) as scratch:
        root = Path(scratch)
        repos = {
            "loose": Repository(
                root / "loose", init=True, store=LocalStore(root / "loose" / ".coral" / "objects")
            ),
            "packed": Repository(root / "packed", init=True),
        }
        for index in range(args.checkpoints):
            weights = step(weights, rng)
            target = root / f"step{index}.safetensors"
            rows["safetensors"]["commit"].append(timed(partial(save_fsync, target, weights)))
            for mode in modes if index % 2 == 0 else modes[::-1]:  # interleaved
                repo = repos[mode]
                before = files_in(repo.coral_dir / "objects")
                seconds = timed(partial(repo.commit, f"step {index}", weights=weights))
                rows[mode]["commit"].append(seconds)
                rows[mode]["files"].append(files_in(repo.coral_dir / "objects") - before)
        for mode in ("safetensors", *modes):  # the newest checkpoint, warm then cold
            for kind in ("warm", "cold"):
                for _ in range(3):
                    if kind == "cold":
                        cold = drop_caches() and cold
                        if not cold:
                            break
                    if mode == "safetensors":
                        newest = root / f"step{args.checkpoints - 1}.safetensors"
                        rows[mode][kind].append(timed(partial(load_file, str(newest))))
                    else:
                        reader = Repository(root / mode)
                        rows[mode][kind].append(timed(reader.get_all_weights))
        for mode in modes:
            got = Repository(root / mode).get_all_weights()
            assert all(
                np.array_equal(bit_view(got[k].data), bit_view(v)) for k, v in weights.items()
            )
        stored = {mode: bytes_in(repos[mode].coral_dir / "objects") for mode in modes}

    def median(values: list[float]) -> float | None:
        return statistics.median(values) if values else None

    summary = {
        mode: {key: median(values) for key, values in found.items()} for mode, found in rows.items()
    }
    base = summary["safetensors"]
    print(
        f"{len(weights)} tensors, {size / 1e6:.1f} MB a checkpoint, {args.checkpoints} checkpoints"
    )
    print(
        "| | files a commit adds | commit s | vs save_file+fsync "
        "| newest checkout warm s | cold s | stored MB |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|")
    for mode in modes:
        found = summary[mode]
        cold_s = f"{found['cold']:.3f}" if found["cold"] is not None else "skipped (not root)"
        print(
            f"| {mode} | {found['files']:.0f} | {found['commit']:.3f} | "
            f"{found['commit'] / base['commit']:.2f}x | {found['warm']:.3f} | {cold_s} | "
            f"{stored[mode] / 1e6:.1f} |"
        )
    cold_base = f"{base['cold']:.3f}" if base["cold"] is not None else "skipped"
    print(
        f"| safetensors | 1 | {base['commit']:.3f} | 1.00x | {base['warm']:.3f} | {cold_base} | "
        f"{size * args.checkpoints / 1e6:.1f} |"
    )
    print(
        "target: files a commit adds O(1) (packed: pack + index + tree + commit = 4); "
        "commit <= 1.5x save_file+fsync at 50 MB and more"
    )
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(
        json.dumps(
            {
                "machine": platform.platform(),
                "tensors": len(weights),
                "bytes": size,
                "checkpoints": args.checkpoints,
                "medians": summary,
                "stored": stored,
                "runs": rows,
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
