"""S3Store benchmark against a local S3 server (moto's server mode on 127.0.0.1).

Measures one big object up and down (multipart, at several part concurrencies),
ranged reads of it, and 1000 small objects moved by ``sync_from_local`` /
``sync_to_local``. moto is a Python server, so the figures bound the client's
overhead and show how the knobs scale, not what AWS S3 or MinIO would deliver.

    python benchmarks/s3_store.py [--size-mb 200] [--small 1000] [--json PATH]

Needs ``boto3`` and ``moto[server]``.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from coral_core import MemoryStore
from coral_core.store import S3Store
from coral_core.testing.s3_server import S3Server

MB = 2**20


def timed(action: Callable[[], object]) -> float:
    started = time.perf_counter()
    action()
    return time.perf_counter() - started


def big_object(server: S3Server, size_mb: int, concurrency: int) -> dict[str, Any]:
    store = S3Store(server.make_bucket(max_concurrency=concurrency))
    data = np.random.default_rng(0).integers(0, 256, size_mb * MB, dtype=np.uint8).tobytes()
    put = timed(lambda: store.put("big/x", data))
    get = timed(lambda: store.get("big/x"))
    ranges = 100
    ranged = timed(
        lambda: [store.get("big/x", byte_range=(i * MB, i * MB + 4096)) for i in range(ranges)]
    )
    store.close()
    return {
        "concurrency": concurrency,
        "put_mb_s": size_mb / put,
        "get_mb_s": size_mb / get,
        "ranged_get_ms": 1000 * ranged / ranges,
    }


def small_objects(server: S3Server, count: int) -> dict[str, Any]:
    local = MemoryStore()
    for i in range(count):
        local.put(f"{i % 256:02x}/object-{i}", np.random.default_rng(i).bytes(1024))
    store = S3Store(server.make_bucket())
    up = timed(lambda: store.sync_from_local(local))
    again = timed(lambda: store.sync_from_local(local))
    down = timed(lambda: store.sync_to_local(MemoryStore()))
    store.close()
    return {
        "objects": count,
        "upload_per_s": count / up,
        "download_per_s": count / down,
        "noop_sync_s": again,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mb", type=int, default=200)
    parser.add_argument("--small", type=int, default=1000)
    parser.add_argument("--json", help="write the results here too")
    args = parser.parse_args()
    with S3Server() as server:
        results: dict[str, Any] = {
            "big": [big_object(server, args.size_mb, c) for c in (1, 4, 8)],
            "small": small_objects(server, args.small),
        }
    print(f"{args.size_mb} MB object (multipart, 8 MiB parts):")
    for row in results["big"]:
        print(
            f"  parts in parallel {row['concurrency']}: put {row['put_mb_s']:.0f} MB/s, "
            f"get {row['get_mb_s']:.0f} MB/s, 4 KiB ranged get {row['ranged_get_ms']:.1f} ms"
        )
    small = results["small"]
    print(
        f"{small['objects']} objects of 1 KiB: sync up {small['upload_per_s']:.0f}/s, "
        f"down {small['download_per_s']:.0f}/s, nothing-to-do sync {small['noop_sync_s']:.2f} s"
    )
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(results, handle, indent=2)


if __name__ == "__main__":
    main()
