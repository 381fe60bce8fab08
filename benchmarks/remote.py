"""Push and clone against a real S3-compatible server (moto on 127.0.0.1) and a folder.

Trains a small MLP (about 4M parameters, float32) with AdamW at a fine-tuning
learning rate on the CPU and commits a checkpoint every few steps; after each
commit it pushes, and reports the bytes each push sent beside the full
checkpoint's size (the 2nd..Nth push should send about the delta). Then it
clones the repository and reports push and clone throughput (MB of
checkpoint per second). Both remotes: a bucket on ``moto_server`` (started
here, needs ``moto[server]``) and a local folder.

    python benchmarks/remote.py [--checkpoints 6] [--json PATH]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from coral_core import Repository, clone
from coral_core.testing.s3_server import ACCESS_KEY, REGION, SECRET_KEY, S3Server, missing_packages
from coral_torch import state_dict_to_weights

MB = 1024 * 1024


def train_and_push(remote_url: str, work: Path, checkpoints: int) -> dict[str, Any]:
    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Linear(512, 2048),
        torch.nn.GELU(),
        torch.nn.Linear(2048, 1536),
        torch.nn.Linear(1536, 10),
    )
    optimizer = torch.optim.AdamW(model.parameters(), lr=2e-5)
    inputs, targets = torch.randn(64, 512), torch.randint(0, 10, (64,))
    repo = Repository(work / "local", init=True)
    repo.add_remote("origin", remote_url)
    pushes = []
    for index in range(checkpoints):
        for _ in range(5):
            optimizer.zero_grad()
            torch.nn.functional.cross_entropy(model(inputs), targets).backward()  # type: ignore[no-untyped-call]
            optimizer.step()
        weights, _ = state_dict_to_weights(model.state_dict(), model)
        before = stored_bytes(repo)
        repo.commit(f"checkpoint {index}", weights=weights)
        stored = stored_bytes(repo) - before
        start = time.perf_counter()
        sent = repo.push()
        seconds = time.perf_counter() - start
        pushes.append({"bytes": sent.bytes, "stored": stored, "seconds": seconds})
    checkpoint_bytes = sum(t.numel() * t.element_size() for t in model.state_dict().values())
    start = time.perf_counter()
    copy = clone(remote_url, work / "clone")
    clone_seconds = time.perf_counter() - start
    assert copy.verify().ok
    return {
        "checkpoint_bytes": checkpoint_bytes,
        "pushes": pushes,
        "first_push_mb_s": checkpoint_bytes / MB / pushes[0]["seconds"],
        "clone_seconds": clone_seconds,
        "clone_mb_s": checkpoints * checkpoint_bytes / MB / clone_seconds,
        "later_push_fraction": [p["bytes"] / checkpoint_bytes for p in pushes[1:]],
        "later_push_vs_stored": [p["bytes"] / p["stored"] for p in pushes[1:]],
    }


def stored_bytes(repo: Repository) -> int:
    """Bytes of the repository's object files."""
    return sum(f.stat().st_size for f in (repo.coral_dir / "objects").rglob("*") if f.is_file())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoints", type=int, default=6)
    parser.add_argument(
        "--json", type=Path, default=Path(__file__).parent / "results" / "remote.json"
    )
    args = parser.parse_args()
    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="coral-remote-") as folder:
        root = Path(folder)
        results["folder"] = train_and_push(str(root / "remote"), root / "f", args.checkpoints)
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
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps({"machine": platform.platform(), "results": results}, indent=2))


if __name__ == "__main__":
    main()
