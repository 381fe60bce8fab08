"""How long a checkpoint blocks training: CoralTrainer with and without async_commit.

Trains a small transformer encoder (built from a config, ~25M parameters,
float32, AdamW) on the CPU for ``--steps`` steps with a checkpoint (model and
optimizer state) every ``--every`` steps, once with synchronous commits and
once with ``async_commit=True``. For each it reports the median and worst time
the training thread spent inside the checkpoint call, the wall time of the
whole run, and, as the floor an async commit can reach, the time of copying
the model and optimizer tensors once (the copies the snapshot makes). Issue
4's target: async training is never blocked longer than that snapshot copy.
Async runs with ``max_pending=2``: a third checkpoint waits for the first to
be written, and that wait counts as blocked time. The first async checkpoint
allocates the snapshot's buffers; later ones copy into the buffers of a
snapshot already written.

    python benchmarks/async_commit.py [--steps 24] [--every 4] [--json PATH]
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from coral_core import CheckpointConfig, Repository
from coral_torch import CoralTrainer, to_numpy_tree


def build_model() -> torch.nn.Module:
    torch.manual_seed(0)
    layer = torch.nn.TransformerEncoderLayer(512, 8, 2048, dropout=0.1, batch_first=True)
    return torch.nn.Sequential(
        torch.nn.Embedding(8000, 512),
        torch.nn.TransformerEncoder(layer, 6, enable_nested_tensor=False),
        torch.nn.Linear(512, 8000),
    )


def run(steps: int, every: int, async_commit: bool, root: Path) -> dict[str, Any]:
    model = build_model()
    optimizer = torch.optim.AdamW(model.parameters(), lr=2e-5)
    config = CheckpointConfig(save_every_n_steps=every, save_every_n_epochs=None, save_last=False)
    repo = Repository(root, init=True)
    trainer = CoralTrainer(
        model, repo, "bench", config, optimizer, async_commit=async_commit, max_pending=2
    )
    tokens = torch.randint(0, 8000, (4, 32), generator=torch.Generator().manual_seed(1))
    blocked = []
    start = time.perf_counter()
    for _ in range(steps):
        optimizer.zero_grad()
        logits = model(tokens)
        loss = torch.nn.functional.cross_entropy(logits.reshape(-1, 8000), tokens.reshape(-1))
        loss.backward()  # type: ignore[no-untyped-call]
        optimizer.step()
        before = time.perf_counter()
        trainer.step(loss=loss.item())
        if trainer.state.global_step % every == 0:
            blocked.append(time.perf_counter() - before)
    trainer.close()
    wall = time.perf_counter() - start
    snapshot = []
    for _ in range(3):  # the copies an async checkpoint makes, and nothing else
        before = time.perf_counter()
        to_numpy_tree(model.state_dict(), copy=True)
        to_numpy_tree(optimizer.state_dict(), copy=True)
        snapshot.append(time.perf_counter() - before)
    return {
        "async_commit": async_commit,
        "checkpoints": len(blocked),
        "blocked_median_s": statistics.median(blocked),
        "blocked_max_s": max(blocked),
        "blocked_s": blocked,
        "wall_s": wall,
        "snapshot_copy_s": statistics.median(snapshot),
        "commits": len(repo.log()),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=24)
    parser.add_argument("--every", type=int, default=4)
    parser.add_argument(
        "--json", type=Path, default=Path(__file__).parent / "results" / "async_commit.json"
    )
    args = parser.parse_args()
    params = sum(p.numel() for p in build_model().parameters())
    results = []
    with tempfile.TemporaryDirectory(prefix="coral-async-") as tmp:
        for mode in (False, True):
            results.append(run(args.steps, args.every, mode, Path(tmp) / str(mode)))
    print(f"model: {params / 1e6:.1f}M parameters, float32 + AdamW state")
    print(f"{args.steps} steps, a checkpoint every {args.every}\n")
    print("| commits | first blocked (s) | later, median (s) | later, worst (s) | run wall (s) |")
    print("| --- | ---: | ---: | ---: | ---: |")
    for r in results:
        name = "async_commit=True" if r["async_commit"] else "synchronous"
        later = r["blocked_s"][1:]
        print(
            f"| {name} | {r['blocked_s'][0]:.3f} | {statistics.median(later):.3f} | "
            f"{max(later):.3f} | {r['wall_s']:.2f} |"
        )
    floor = results[1]["snapshot_copy_s"]
    print(f"\ntarget (async): blocked <= one snapshot copy of the tensors = {floor:.3f} s")
    later = results[1]["blocked_s"][1:]
    print(
        f"measured (async): first {results[1]['blocked_s'][0]:.3f} s (allocates the snapshot "
        f"buffers), later median {statistics.median(later):.3f} s, worst {max(later):.3f} s"
    )
    args.json.parent.mkdir(parents=True, exist_ok=True)
    report = {"machine": platform.platform(), "parameters": params, "runs": results}
    args.json.write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
