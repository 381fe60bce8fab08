"""Scale: a model of ``--gb`` GiB, and a repository of ``--commits`` commits.

(a) A float32 model of ``--gb`` GiB (default 4) in many 16 MiB tensors plus
one tensor of 1 GiB is committed and checked out (``get_all_weights``) in a
child process; a thread samples its RSS every 5 ms. Reported: peak RSS
above the model's own memory (the input's while committing, the restored
model's while checking out) against the target of 1.5 GiB, the times, and a
bitwise check of every tensor. The data is cheap to make but not trivially
compressible: each 4 MiB piece is a random block times a random scale plus a
random shift (mantissas stay random, no two chunks are equal).

(b) A repository gets ``--commits`` commits (default 1000) of a small model
(the one in ``tests/coral_core/test_concurrency.py``: its matrix stored as
deltas); at 10, 100 and the last count this times ``log`` (the API, and
``coral-ml log`` as a process: Python's start included), ``status``
(``Repository.staged()`` and ``coral-ml status``), a checkout of the oldest
commit (``checkout`` + ``get_all_weights``, then back) and ``gc``. Target:
each under a second or two, and growing no faster than the history.

    python benchmarks/scale.py [--gb 4] [--commits 1000] [--quick] [--json PATH]

``--quick`` is ``--gb 0.5 --commits 200``. Check free memory first: the full
run needs about ``--gb`` + 2 GiB.
"""

from __future__ import annotations

import argparse
import functools
import gc
import json
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
import timeit
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # the small model of (b) comes from the concurrency test

from rss import PeakRSS  # noqa: E402 (benchmarks/rss.py)

from coral_core import Repository, bit_view  # noqa: E402
from tests.coral_core.test_concurrency import weights_for  # noqa: E402

GIB = 1 << 30
MIB = 1 << 20
PIECE = 4 * MIB  # one chunk of the default chunk size
SMALL_TENSOR = 16 * MIB
TARGET_OVERHEAD = 1.5 * GIB
CORAL_ML = str(Path(sys.executable).with_name("coral-ml"))


# -- (a) one big model ------------------------------------------------------------------


def model_layout(total: float) -> dict[str, tuple[int, ...]]:
    """Tensor shapes: one of min(1 GiB, half the model), the rest in 16 MiB tensors."""
    big = int(min(GIB, total * GIB / 2))
    layout = {"big.weight": (big // 4 // 4096, 4096)}
    for index in range(int((total * GIB - big) // SMALL_TENSOR)):
        layout[f"layers.{index}.weight"] = (SMALL_TENSOR // 4 // 1024, 1024)
    return layout


@functools.cache
def shared_block() -> np.ndarray:
    return np.random.default_rng(0).standard_normal(PIECE // 4).astype(np.float32)


def pieces(name: str, shape: tuple[int, ...]) -> Iterator[tuple[slice, np.ndarray]]:
    """The 4 MiB pieces of a tensor, deterministic for its name: a shared random
    block times a random scale plus a random shift."""
    block = shared_block()
    rng = np.random.default_rng(zlib.crc32(name.encode()))
    size = int(np.prod(shape))
    for start in range(0, size, PIECE // 4):
        stop = min(size, start + PIECE // 4)
        scale, shift = rng.uniform(0.01, 1.0), rng.uniform(-0.1, 0.1)
        yield slice(start, stop), block[: stop - start] * np.float32(scale) + np.float32(shift)


def make_model(layout: dict[str, tuple[int, ...]]) -> dict[str, np.ndarray]:
    arrays = {}
    for name, shape in layout.items():
        array = np.empty(shape, dtype=np.float32)
        flat = array.reshape(-1)
        for where, piece in pieces(name, shape):
            flat[where] = piece
        arrays[name] = array
    return arrays


def matches(name: str, array: np.ndarray) -> bool:
    flat = bit_view(array).reshape(-1)
    return all(
        np.array_equal(flat[where], bit_view(piece)) for where, piece in pieces(name, array.shape)
    )


def big_model_child(total: float, folder: Path) -> dict[str, Any]:
    """Commit and check out the model; measure (runs in a process of its own)."""
    rss = PeakRSS()
    layout = model_layout(total)
    arrays = make_model(layout)
    model_bytes = sum(a.nbytes for a in arrays.values())
    start = rss.reset()
    began = time.perf_counter()
    repo = Repository(folder / "repo", init=True)
    commit = repo.commit("big model", weights=arrays)
    commit_s = time.perf_counter() - began
    commit_over = rss.peak - start
    del arrays, repo  # the repository keeps references to the last arrays it wrote
    gc.collect()
    start = rss.reset()
    began = time.perf_counter()
    restored = Repository(folder / "repo").get_all_weights(commit.commit_hash)
    checkout_s = time.perf_counter() - began
    checkout_over = rss.peak - start - model_bytes
    bitwise = set(restored) == set(layout) and all(
        matches(name, weight.data) for name, weight in restored.items()
    )
    stored = sum(p.stat().st_size for p in (folder / "repo" / ".coral").rglob("*") if p.is_file())
    return {
        "model_gib": model_bytes / GIB,
        "tensors": len(layout),
        "largest_tensor_gib": layout["big.weight"][0] * 4096 * 4 / GIB,
        "commit_s": commit_s,
        "commit_peak_above_input_gib": commit_over / GIB,
        "checkout_s": checkout_s,
        "checkout_peak_above_model_gib": checkout_over / GIB,
        "process_max_rss_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / GIB,
        "stored_gib": stored / GIB,
        "bitwise": bitwise,
    }


def big_model(total: float, folder: Path) -> dict[str, Any]:
    """Run :func:`big_model_child` in a fresh process; return what it measured."""
    out = subprocess.run(
        [sys.executable, __file__, "--big-child", str(total), str(folder)],
        capture_output=True,
        text=True,
        check=True,
    )
    result: dict[str, Any] = json.loads(out.stdout)
    return result


# -- (b) a long history -----------------------------------------------------------------


def timed(action: Callable[[], object]) -> float:
    """Median wall time of ``action`` over 3 runs."""
    return statistics.median(timeit.repeat(action, number=1, repeat=3))


def cli(repo: Repository, *args: str) -> Callable[[], object]:
    return lambda: subprocess.run(
        [CORAL_ML, "-C", str(repo.path), *args], stdout=subprocess.DEVNULL, check=True
    )


def checkout_oldest(repo: Repository, oldest: str) -> None:
    repo.checkout(oldest)
    repo.get_all_weights()
    repo.checkout("main")


def history(commits: int, folder: Path) -> list[dict[str, Any]]:
    """Commit ``commits`` versions, timing the operations at each milestone."""
    repo = Repository(folder / "history", init=True)
    milestones = sorted({10, 100, commits} & set(range(1, commits + 1)))
    rows, oldest, built = [], "", 0.0
    for count in range(1, commits + 1):
        began = time.perf_counter()
        made = repo.commit(f"step {count}", weights=weights_for(count))
        built += time.perf_counter() - began
        oldest = oldest or made.commit_hash
        if count not in milestones:
            continue
        row = {"commits": count, "mean_commit_s": built / count}
        row["log_api_s"] = timed(repo.log)
        row["log_cli_s"] = timed(cli(repo, "log"))
        repo.stage_weights({"staged": np.arange(10.0)})  # status has something to show
        row["staged_api_s"] = timed(repo.staged)
        row["status_cli_s"] = timed(cli(repo, "status"))
        repo.reset()
        row["checkout_s"] = timed(functools.partial(checkout_oldest, repo, oldest))
        row["gc_s"] = timed(repo.gc)
        rows.append(row)
        print(f"  {count} commits measured", flush=True)
    return rows


def main() -> None:
    if len(sys.argv) == 4 and sys.argv[1] == "--big-child":
        print(json.dumps(big_model_child(float(sys.argv[2]), Path(sys.argv[3]))))
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gb", type=float, default=4.0, help="model size in GiB")
    parser.add_argument("--commits", type=int, default=1000)
    parser.add_argument("--quick", action="store_true", help="--gb 0.5 --commits 200")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    if args.quick:
        args.gb, args.commits = 0.5, 200
    name = "scale_quick.json" if args.quick else "scale.json"
    args.json = args.json or Path(__file__).parent / "results" / name
    with tempfile.TemporaryDirectory(prefix="coral-scale-") as tmp:
        print(f"(a) committing and checking out a {args.gb:g} GiB model ...", flush=True)
        big = big_model(args.gb, Path(tmp))
        print(f"(b) {args.commits} commits of a small model ...", flush=True)
        rows = history(args.commits, Path(tmp))
    print(
        f"\n(a) {big['model_gib']:.2f} GiB model, {big['tensors']} tensors, the largest "
        f"{big['largest_tensor_gib']:.2f} GiB; stored {big['stored_gib']:.2f} GiB; "
        f"bitwise: {big['bitwise']}\n"
    )
    print("| operation | time (s) | peak RSS above the model's own (MiB) | target (MiB) |")
    print("| --- | ---: | ---: | ---: |")
    for key, over in (("commit", "input"), ("checkout", "model")):
        above = big[f"{key}_peak_above_{over}_gib"] * GIB / MIB
        print(f"| {key} | {big[f'{key}_s']:.1f} | {above:.0f} | < {TARGET_OVERHEAD / MIB:.0f} |")
    print("\n(b) operations on a history, in ms (median of 3; target: under a second or two)\n")
    print(
        "| commits | log (API) | coral-ml log | staged() | coral-ml status "
        "| checkout oldest | gc | mean commit |"
    )
    print("| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for r in rows:
        ms = {key: value * 1000 for key, value in r.items() if key.endswith("_s")}
        print(
            f"| {r['commits']} | {ms['log_api_s']:.1f} | {ms['log_cli_s']:.0f} | "
            f"{ms['staged_api_s']:.3f} | {ms['status_cli_s']:.0f} | {ms['checkout_s']:.1f} | "
            f"{ms['gc_s']:.1f} | {ms['mean_commit_s']:.1f} |"
        )
    args.json.parent.mkdir(parents=True, exist_ok=True)
    report = {"machine": platform.platform(), "big_model": big, "history": rows}
    args.json.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
