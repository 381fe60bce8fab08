"""Crash torture: child processes commit a small model (and run gc and repack)
until ``--commits`` commits were reported, each SIGKILLed at a random moment
and restarted; after every kill the repository must verify and every commit a
child ever reported (printed, and fsynced to a report file, after ``commit()``
returned) must still be on its branch and restore bit for bit.

The children are those of ``tests/coral_core/test_crash_safety.py`` (the test
runs 13 kills; this runs as many as the commit count takes): ``commit`` mode
stages and commits, commits snapshots and commits onto a second branch, with
a gc every sixth commit; ``gc`` mode makes garbage out of delta chains and is
killed inside ``gc``; ``repack`` mode is killed inside ``repack``.

    python benchmarks/crash_torture.py [--commits 200] [--seed 1] [--json PATH]
"""

from __future__ import annotations

import argparse
import json
import platform
import random
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # the children live in the test module

from coral_core import CoralError, Repository  # noqa: E402
from coral_core.refs import HEADS  # noqa: E402
from tests.coral_core.test_crash_safety import (  # noqa: E402
    CHUNK_SIZE,
    Torture,
    assert_restores,
    weights_for,
)

#: How often each child mode runs: most kills land in commits, the rest in gc and repack.
MODES = {"commit": 6, "gc": 2, "repack": 2}


@dataclass
class Tally:
    """What the kills did: counts over the whole run and one row per kill."""

    verify_failures: int = 0
    lost: set[str] = field(default_factory=set)
    rounds: list[dict[str, Any]] = field(default_factory=list)


def survey(torture: Torture) -> tuple[bool, list[str]]:
    """After a kill: does the repository verify, and which reported commits are
    missing from their branch or do not restore bit for bit?"""
    repo = Repository(torture.repo_path)
    report = repo.verify()
    tips = repo.refs.list_refs(HEADS)  # the branches that have commits
    history = {name: {c.commit_hash for c in repo.log(tip)} for name, tip in tips.items()}
    lost = []
    for commit_id, seed, branch in torture.reported():
        try:
            assert commit_id in history.get(branch, set())
            assert_restores(repo, commit_id, weights_for(seed))
        except (AssertionError, CoralError):
            lost.append(commit_id)
    return report.ok, lost


def run(commits: int, seed: int, folder: Path) -> Tally:
    """Kill children until ``commits`` commits were reported."""
    torture = Torture(folder / "repo")
    Repository(torture.repo_path, init=True, chunk_size=CHUNK_SIZE)
    rng, tally = random.Random(seed), Tally()
    while (reported := len(torture.reported())) < commits:
        number = len(tally.rounds)
        mode = "commit" if number == 0 else rng.choices(list(MODES), list(MODES.values()))[0]
        before = dict(torture.kills_in)
        torture.run_and_kill(mode, seed=(number + 1) * 1000, rng=rng)
        landed = next(k for k, v in torture.kills_in.items() if v != before.get(k, 0))
        ok, lost = survey(torture)
        tally.verify_failures += not ok
        tally.lost.update(lost)
        tally.rounds.append(
            {"mode": mode, "killed_in": landed, "reported": len(torture.reported()), "ok": ok}
        )
        print(
            f"kill {number + 1:3d}: {mode:6s} child killed in {landed:6s}; "
            f"{reported:3d} -> {len(torture.reported()):3d} commits; "
            f"verify {'ok' if ok else 'FAILED'}; lost {len(lost)}",
            flush=True,
        )
    return tally


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--commits", type=int, default=200, help="commits to get reported")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument(
        "--json", type=Path, default=Path(__file__).parent / "results" / "crash_torture.json"
    )
    args = parser.parse_args()
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="coral-torture-") as tmp:
        tally = run(args.commits, args.seed, Path(tmp))
        reported = tally.rounds[-1]["reported"]
    wall = time.monotonic() - started
    landed = {where: sum(r["killed_in"] == where for r in tally.rounds) for where in MODES}
    print(
        "\n| kills | in commit | in gc | in repack | commits reported | commits lost "
        "| verify failures | wall (s) |"
    )
    print("| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    print(
        f"| {len(tally.rounds)} | {landed['commit']} | {landed['gc']} | {landed['repack']} "
        f"| {reported} | {len(tally.lost)} | {tally.verify_failures} | {wall:.0f} |"
    )
    print("\ntarget: commits lost 0, verify failures 0")
    args.json.parent.mkdir(parents=True, exist_ok=True)
    summary = {
        "machine": platform.platform(),
        "seed": args.seed,
        "kills": len(tally.rounds),
        "kills_in": landed,
        "commits_reported": reported,
        "commits_lost": sorted(tally.lost),
        "verify_failures": tally.verify_failures,
        "wall_s": round(wall, 1),
        "rounds": tally.rounds,
    }
    args.json.write_text(json.dumps(summary, indent=2) + "\n")


if __name__ == "__main__":
    main()
