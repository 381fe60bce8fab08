"""Push and clone against a real S3-compatible server (moto on 127.0.0.1) and a folder.

Trains a small MLP (about 4M parameters, float32) with AdamW at a fine-tuning
learning rate on the CPU and commits a checkpoint every few steps; after each
commit it pushes, and reports the bytes each push sent beside the full
checkpoint's size (the 2nd..Nth push should send about the delta). Then it
clones the repository, in full and with ``depth=1``, and reports push and
clone throughput (MB of checkpoint per second) and the bytes of each clone.

Then a training run the way teams share one (``CheckpointManager`` with
``max_checkpoints=2``, the best by loss, ``push_to="origin"``): the bytes and
store requests per pushed checkpoint, how long a save blocks the training
step with ``push_to`` beside a save of the same checkpoint without it (the
two runs interleaved, one checkpoint each by turns; target: no longer), and
the local and remote sizes after pruning (``gc --remote``) beside what the
kept checkpoints alone take. Both remotes: a bucket on ``moto_server``
(started here, needs ``moto[server]``) and a local folder.

    python benchmarks/remote.py [--checkpoints 10] [--run 20] [--json PATH]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

import torch

from coral_core import (
    CheckpointConfig,
    CheckpointManager,
    Repository,
    TrainingState,
    WeightStore,
    clone,
)
from coral_core import remote as remote_module
from coral_core.testing.s3_server import (
    ACCESS_KEY,
    REGION,
    SECRET_KEY,
    S3Server,
    count_requests,
    missing_packages,
)
from coral_torch import state_dict_to_weights

MB = 1024 * 1024


class Trainer:
    """The benchmark's model: an MLP trained with AdamW at a fine-tuning rate."""

    def __init__(self) -> None:
        torch.manual_seed(0)
        self.model = torch.nn.Sequential(
            torch.nn.Linear(512, 2048),
            torch.nn.GELU(),
            torch.nn.Linear(2048, 1536),
            torch.nn.Linear(1536, 10),
        )
        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=2e-5)
        self.inputs, self.targets = torch.randn(64, 512), torch.randint(0, 10, (64,))
        self.bytes = sum(t.numel() * t.element_size() for t in self.model.state_dict().values())

    def steps(self, count: int = 5) -> float:
        """Train ``count`` steps; the last loss."""
        for _ in range(count):
            self.optimizer.zero_grad()
            loss = torch.nn.functional.cross_entropy(self.model(self.inputs), self.targets)
            loss.backward()  # type: ignore[no-untyped-call]
            self.optimizer.step()
        return float(loss.detach())

    def weights(self) -> dict[str, Any]:
        weights, _ = state_dict_to_weights(self.model.state_dict(), self.model)
        return {name: weight.data.copy() for name, weight in weights.items()}


def train_and_push(remote_url: str, work: Path, checkpoints: int) -> dict[str, Any]:
    trainer = Trainer()
    repo = Repository(work / "local", init=True)
    repo.add_remote("origin", remote_url)
    pushes = []
    for index in range(checkpoints):
        trainer.steps()
        weights, _ = state_dict_to_weights(trainer.model.state_dict(), trainer.model)
        before = stored_bytes(repo)
        repo.commit(f"checkpoint {index}", weights=weights)
        stored = stored_bytes(repo) - before
        REQUESTS.clear()
        start = time.perf_counter()
        sent = repo.push()
        seconds = time.perf_counter() - start
        pushes.append(
            {
                "bytes": sent.bytes,
                "stored": stored,
                "seconds": seconds,
                "object_requests": requests_of("objects"),
                "other_requests": requests_of("refs+locks"),
            }
        )
    checkpoint_bytes = trainer.bytes
    REQUESTS.clear()
    start = time.perf_counter()
    received: list[int] = []
    copy = clone(remote_url, work / "clone", received.append)
    clone_seconds = time.perf_counter() - start
    clone_requests = sum(REQUESTS.values())
    assert copy.verify().ok
    shallow: list[int] = []
    clone(remote_url, work / "shallow", shallow.append, depth=1)
    return {
        "checkpoint_bytes": checkpoint_bytes,
        "full_clone_bytes": sum(received),
        "shallow_clone_bytes": sum(shallow),
        "pushes": pushes,
        "first_push_mb_s": checkpoint_bytes / MB / pushes[0]["seconds"],
        "clone_seconds": clone_seconds,
        "clone_requests": clone_requests,
        "clone_objects": len(list(copy.objects.iter_ids())),
        "clone_mb_s": checkpoints * checkpoint_bytes / MB / clone_seconds,
        "later_push_fraction": [p["bytes"] / checkpoint_bytes for p in pushes[1:]],
        "later_push_vs_stored": [p["bytes"] / p["stored"] for p in pushes[1:]],
    }


def stored_bytes(repo: Repository) -> int:
    """Bytes of the repository's object files."""
    return sum(f.stat().st_size for f in (repo.coral_dir / "objects").rglob("*") if f.is_file())


#: The HTTP requests sent to S3 since the last clear, by "METHOD area" (area:
#: ``objects`` for the objects and packs, ``refs+locks`` for the rest).
REQUESTS: Counter[str] = Counter()


def counting_remotes() -> None:
    """Make every S3 remote a push, fetch or clone opens count its HTTP requests
    (botocore's own events: retries and multipart parts count too)."""
    opener = remote_module.open_store

    def counted(url: str, base: Path | None = None) -> WeightStore:
        store = opener(url, base)
        count_requests(store, REQUESTS)
        return store

    remote_module.open_store = counted  # type: ignore[assignment]


def requests_of(area: str) -> int:
    return sum(n for name, n in REQUESTS.items() if name.endswith(area))


def shared_run(remote_url: str, work: Path, checkpoints: int) -> dict[str, Any]:
    """A run with retention and push_to, beside the same run without push_to."""
    trainer = Trainer()
    repos = {name: Repository(work / name, init=True) for name in ("alone", "pushing")}
    repos["pushing"].add_remote("origin", remote_url)
    config = CheckpointConfig(max_checkpoints=2, save_on_best_metric="loss")
    managers = {
        "alone": CheckpointManager(repos["alone"], config, "bench"),
        "pushing": CheckpointManager(
            repos["pushing"],
            CheckpointConfig(max_checkpoints=2, save_on_best_metric="loss", push_to="origin"),
            "bench",
        ),
    }
    blocked: dict[str, list[float]] = {name: [] for name in managers}
    kept: dict[int, dict[str, Any]] = {}
    REQUESTS.clear()
    for step in range(1, checkpoints + 1):
        loss = trainer.steps()
        weights = trainer.weights()
        kept[step * 5] = weights
        state = TrainingState(epoch=step, global_step=step * 5, metrics={"loss": loss})
        order = list(managers) if step % 2 else list(managers)[::-1]  # by turns
        for name in order:
            start = time.perf_counter()
            managers[name].save(weights, state)
            blocked[name].append(time.perf_counter() - start)
    managers["pushing"].finish()
    pusher = managers["pushing"].pusher
    assert pusher is not None
    assert pusher.failures == 0
    requests = dict(REQUESTS)
    reference = Repository(work / "reference", init=True)
    for checkpoint in managers["pushing"].checkpoints:
        reference.commit("kept", weights=kept[checkpoint.step])
    remote_before = remote_bytes(remote_url)
    repos["pushing"].gc(remote="origin")
    return {
        "checkpoints": checkpoints,
        "kept": len(managers["pushing"].checkpoints),
        "bytes_per_push": pusher.bytes_sent / checkpoints,
        "requests_per_push": sum(requests.values()) / checkpoints,
        "requests": requests,
        "save_seconds_alone": statistics.median(blocked["alone"]),
        "save_seconds_pushing": statistics.median(blocked["pushing"]),
        "save_seconds_pushing_max": max(blocked["pushing"]),
        "kept_bytes": stored_bytes(reference),
        "local_bytes": stored_bytes(repos["pushing"]),
        "remote_bytes_before_gc": remote_before,
        "remote_bytes_after_gc": remote_bytes(remote_url),
    }


def remote_bytes(url: str) -> int:
    objects = remote_module.RemoteRefs(remote_module.open_store(url)).objects
    return sum(objects.stored_size(i) for i in objects.iter_ids())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoints", type=int, default=10)
    parser.add_argument("--run", type=int, default=20, help="checkpoints of the shared run")
    parser.add_argument(
        "--json", type=Path, default=Path(__file__).parent / "results" / "remote.json"
    )
    args = parser.parse_args()
    results: dict[str, Any] = {}
    runs: dict[str, Any] = {}
    counting_remotes()
    with tempfile.TemporaryDirectory(prefix="coral-remote-") as folder:
        root = Path(folder)
        results["folder"] = train_and_push(str(root / "remote"), root / "f", args.checkpoints)
        runs["folder"] = shared_run(str(root / "run-remote"), root / "fr", args.run)
        if missing_packages():
            print(f"S3 skipped: {', '.join(missing_packages())} not installed")
        else:
            with S3Server() as server:
                bucket = server.make_bucket().bucket
                os.environ.update(
                    CORAL_S3_ENDPOINT_URL=server.endpoint_url,
                    AWS_ACCESS_KEY_ID=ACCESS_KEY,
                    AWS_SECRET_ACCESS_KEY=SECRET_KEY,
                    AWS_DEFAULT_REGION=REGION,
                )
                results["s3 (moto)"] = train_and_push(
                    f"s3://{bucket}/bench", root / "s", args.checkpoints
                )
                runs["s3 (moto)"] = shared_run(f"s3://{bucket}/run", root / "sr", args.run)
    size = results["folder"]["checkpoint_bytes"] / MB
    print(
        f"checkpoint: {size:.1f} MB of float32; {args.checkpoints} checkpoints, 5 AdamW steps apart"
    )
    print("pushes 2..N: bytes sent as a share of a checkpoint, and of what the commit stored\n")
    print("| remote | first push MB/s | clone MB/s | pushes 2..N / checkpoint | / stored |")
    print("| --- | ---: | ---: | --- | --- |")
    for name, r in results.items():
        shares = ", ".join(f"{f:.0%}" for f in r["later_push_fraction"])
        stored = ", ".join(f"{f:.2f}" for f in r["later_push_vs_stored"])
        print(
            f"| {name} | {r['first_push_mb_s']:.1f} | {r['clone_mb_s']:.1f} | {shares} | {stored} |"
        )
    print(
        "\nS3 requests per push of one checkpoint (2nd..Nth; target for the objects: at most "
        "4 + 1 per 64 MiB) and per clone of all of them\n"
    )
    print(
        "| remote | objects / push | target | refs and locks / push | clone: requests "
        "| clone: objects |"
    )
    print("| --- | ---: | ---: | ---: | ---: | ---: |")
    for name, r in results.items():
        if "s3" not in name:
            continue
        later = r["pushes"][1:]
        mib = max(p["bytes"] for p in later) / (64 * MB)
        print(
            f"| {name} | {max(p['object_requests'] for p in later)} | <= {4 + math.ceil(mib)} "
            f"| {max(p['other_requests'] for p in later)} | {r['clone_requests']} "
            f"| {r['clone_objects']} |"
        )
    print("\nclones of those checkpoints: bytes received (target: depth 1 at most half of full)\n")
    print("| remote | full clone | --depth 1 | depth 1 / full |")
    print("| --- | ---: | ---: | ---: |")
    for name, r in results.items():
        full, shallow = r["full_clone_bytes"], r["shallow_clone_bytes"]
        print(f"| {name} | {full / MB:.1f} MB | {shallow / MB:.1f} MB | {shallow / full:.2f} |")
    print(
        f"\na run of {args.run} checkpoints, max_checkpoints=2 and the best kept, push_to=origin; "
        "a save's time is what the training step waits"
    )
    print("(save alone: the same checkpoint into a repository without push_to, by turns)\n")
    print(
        "| remote | MB sent / checkpoint | requests / checkpoint | save with push_to | save alone "
        "| target | kept checkpoints | local after pruning | remote before gc | remote after gc |"
    )
    print("| --- | ---: | ---: | ---: | ---: | --- | ---: | ---: | ---: | ---: |")
    for name, r in runs.items():
        requests = f"{r['requests_per_push']:.0f}" if "s3" in name else "n/a"
        print(
            f"| {name} | {r['bytes_per_push'] / MB:.2f} "
            f"| {requests} "
            f"| {r['save_seconds_pushing']:.3f} s (max {r['save_seconds_pushing_max']:.3f}) "
            f"| {r['save_seconds_alone']:.3f} s | <= save alone "
            f"| {r['kept_bytes'] / MB:.1f} MB | {r['local_bytes'] / MB:.1f} MB "
            f"| {r['remote_bytes_before_gc'] / MB:.1f} MB "
            f"| {r['remote_bytes_after_gc'] / MB:.1f} MB |"
        )
    args.json.parent.mkdir(parents=True, exist_ok=True)
    document = {"machine": platform.platform(), "results": results, "shared_runs": runs}
    args.json.write_text(json.dumps(document, indent=2))


if __name__ == "__main__":
    main()
