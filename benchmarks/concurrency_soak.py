"""Concurrency soak: 4 processes commit to one repository for ``--seconds``, two
onto branches of their own and two onto the same branch (``main``); afterwards
no commit is lost (every id a process got back is in its branch's history,
and ``main`` is one linear chain holding both writers' commits), no ref is
broken (each names a readable commit), the repository verifies, and every
commit restores bit for bit.

The workers commit the model of ``tests/coral_core/test_concurrency.py``
(a 12 KB matrix stored as deltas of its last version, a bias and a step) as
fast as they can, so the refs lock is contended all the time.

    python benchmarks/concurrency_soak.py [--seconds 60] [--json PATH]
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # the model and the checks come from the concurrency test

from coral_core import CoralError, Repository  # noqa: E402
from coral_core.refs import HEADS  # noqa: E402
from tests.coral_core.test_concurrency import (  # noqa: E402
    CHUNK_SIZE,
    assert_restores,
    first_parent_chain,
    weights_for,
)

#: (worker, branch): two writers with a branch each, two sharing main.
WORKERS = [
    ("own-1", "soak/own-1"),
    ("own-2", "soak/own-2"),
    ("shared-1", "main"),
    ("shared-2", "main"),
]


def worker(repo_path: Path, branch: str, first_seed: int, start: float, seconds: float) -> None:
    """From the wall-clock time ``start``, commit onto ``branch`` for ``seconds``;
    print ``id seed seconds-it-took`` after each commit returned."""
    repo = Repository(repo_path)
    seed = first_seed
    time.sleep(max(0.0, start - time.time()))
    while time.time() < start + seconds:
        started = time.perf_counter()
        commit = repo.commit(f"{branch} {seed}", weights=weights_for(seed), branch=branch)
        print(commit.commit_hash, seed, f"{time.perf_counter() - started:.4f}", flush=True)
        seed += 1


def soak(repo_path: Path, seconds: float) -> dict[str, list[tuple[str, int, float]]]:
    """Run the workers together; return each one's (id, seed, latency) lines."""
    start = time.time() + 5  # time for every worker to start and import
    processes = {}
    for i, (name, branch) in enumerate(WORKERS, start=1):
        command = [sys.executable, __file__, "--worker", str(repo_path), branch]
        processes[name] = subprocess.Popen(
            [*command, str(i * 10**6), str(start), str(seconds)], stdout=subprocess.PIPE, text=True
        )
    made = {}
    for name, process in processes.items():
        out, _ = process.communicate(timeout=seconds + 120)
        if process.returncode != 0:
            raise SystemExit(f"worker {name} failed (exit {process.returncode})")
        lines = [line.split() for line in out.splitlines()]
        made[name] = [(commit, int(seed), float(took)) for commit, seed, took in lines]
    return made


def check(repo_path: Path, made: dict[str, list[tuple[str, int, float]]]) -> dict[str, Any]:
    """Lost commits, broken refs, verify, restores."""
    repo = Repository(repo_path)
    broken_refs = []
    for name, tip in repo.refs.list_refs(HEADS).items():
        try:
            repo.read_commit(tip)
        except CoralError:
            broken_refs.append(name)
    branches = dict(WORKERS)
    lost, not_restored = {}, 0
    for name, commits in made.items():
        chain = set(first_parent_chain(repo, repo.resolve(branches[name])))
        lost[name] = sum(commit not in chain for commit, _, _ in commits)
        for commit, seed, _ in commits:
            try:
                assert_restores(repo, commit, weights_for(seed))
            except (AssertionError, CoralError):
                not_restored += 1
    shared = {
        c for name, commits in made.items() if branches[name] == "main" for c, _, _ in commits
    }
    main_chain = first_parent_chain(repo, repo.resolve("main"))
    report = repo.verify()
    return {
        "lost": lost,
        "broken_refs": broken_refs,
        "not_restored": not_restored,
        "main_is_one_chain_of_both_writers": set(main_chain) == shared,
        "verify_ok": report.ok,
        "verify_problems": [f"{p.object_id}: {p.message}" for p in report.problems],
        "commits_verified": report.commits_checked,
    }


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--worker":
        repo_path, branch, seed, start, seconds = sys.argv[2:7]
        worker(Path(repo_path), branch, int(seed), float(start), float(seconds))
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=60)
    parser.add_argument(
        "--json", type=Path, default=Path(__file__).parent / "results" / "concurrency_soak.json"
    )
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="coral-soak-") as tmp:
        repo_path = Path(tmp) / "repo"
        Repository(repo_path, init=True, chunk_size=CHUNK_SIZE)
        made = soak(repo_path, args.seconds)
        result = check(repo_path, made)
    print(f"{len(WORKERS)} processes committing for {args.seconds:.0f} s\n")
    print("| worker | branch | commits | lost | commits/s | median commit (s) | slowest (s) |")
    print("| --- | --- | ---: | ---: | ---: | ---: | ---: |")
    workers = []
    for name, branch in WORKERS:
        took = [t for _, _, t in made[name]]
        row = {
            "worker": name,
            "branch": branch,
            "commits": len(took),
            "lost": result["lost"][name],
            "commits_per_s": len(took) / args.seconds,
            "median_commit_s": statistics.median(took),
            "slowest_commit_s": max(took),
        }
        workers.append(row)
        print(
            f"| {name} | {branch} | {row['commits']} | {row['lost']} | "
            f"{row['commits_per_s']:.1f} | {row['median_commit_s']:.3f} | "
            f"{row['slowest_commit_s']:.3f} |"
        )
    print(
        f"\nlost commits: {sum(result['lost'].values())} (target 0); broken refs: "
        f"{len(result['broken_refs'])} (target 0); not restored bitwise: "
        f"{result['not_restored']}; main is one chain of both writers: "
        f"{result['main_is_one_chain_of_both_writers']}; verify: "
        f"{'ok' if result['verify_ok'] else 'FAILED'} ({result['commits_verified']} commits)"
    )
    args.json.parent.mkdir(parents=True, exist_ok=True)
    summary = {"machine": platform.platform(), "seconds": args.seconds, "workers": workers}
    args.json.write_text(json.dumps({**summary, **result}, indent=2) + "\n")


if __name__ == "__main__":
    main()
