"""Soak: pushes into a folder that is someone's live repository, while its owner works.

An owner process commits to ``main`` every 200 ms or so and runs ``gc``
about twice a second, in its own repository; two other processes, each a
clone of that folder, pull, commit a tensor of their own, and push to
``main`` over and over (a push behind the owner is refused: they pull, which
merges, and push again). When the time is up, every commit the owner made
and every commit a push reported as pushed must be in ``main``'s history,
readable bit for bit, and ``verify()`` must pass.

    python benchmarks/shared_folder_soak.py [--seconds 60] [--json PATH]

Prints a table, lost counts in bold; exits 1 if anything was lost.
"""

from __future__ import annotations

import argparse
import json
import platform
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from coral_core import CoralError, PushRejectedError, Repository, bit_view, clone

TENSOR = 256  # elements of each writer's tensor


def value(writer: str, count: int) -> np.ndarray:
    """The tensor ``writer`` commits for the ``count``-th time."""
    return np.full(TENSOR, count, np.float32) + np.float32(sum(map(ord, writer)) % 7)


def owner(folder: Path, stop: Path, log: Path) -> None:
    """Commit to main, and gc now and then, until ``stop`` exists."""
    repo = Repository(folder)
    count, last_gc = 0, time.monotonic()
    with open(log, "a") as out:
        while not stop.exists():
            count += 1
            repo.stage_weights({"owner": value("owner", count)})
            made = repo.commit(f"owner {count}")
            out.write(f"{made.commit_hash} owner {count}\n")
            out.flush()
            if time.monotonic() - last_gc > 0.5:
                repo.gc()
                last_gc = time.monotonic()
            time.sleep(0.2)


def pusher(name: str, folder: Path, work: Path, stop: Path, log: Path) -> None:
    """Pull, commit, push to the owner's main until ``stop`` exists."""
    repo = clone(str(folder), work)
    count = 0
    with open(log, "a") as out:
        while not stop.exists():
            count += 1
            repo.stage_weights({name: value(name, count)})
            made = repo.commit(f"{name} {count}")
            while not stop.exists():
                try:
                    repo.push("origin", ["main"])
                except PushRejectedError:
                    repo.pull("origin", "main", strategy="ours")  # merges the owner's work
                    time.sleep(random.uniform(0, 0.05))  # back off, or one pusher starves
                    continue
                except CoralError as exc:  # the owner's gc held the folder: try again
                    print(f"{name}: {exc}", file=sys.stderr)
                    continue
                out.write(f"{made.commit_hash} {name} {count}\n")
                tip = repo.resolve("main")
                if tip != made.commit_hash:  # the merge a rejected push made: pushed too
                    out.write(f"{tip} {name} merged\n")
                out.flush()
                break


def check(folder: Path, logs: list[Path]) -> dict[str, object]:
    """What the owner's main holds of every commit reported."""
    repo = Repository(folder)
    history = {c.commit_hash: c for c in repo.log("main")}
    reported: dict[str, tuple[str, str]] = {}
    for log in logs:
        for line in log.read_text().splitlines():
            commit, writer, count = line.split()
            reported[commit] = (writer, count)
    lost = {writer: 0 for writer, _ in reported.values()}
    wrong = 0
    for commit, (writer, count) in reported.items():
        if commit not in history:
            lost[writer] += 1
            continue
        if count != "merged":
            restored = repo.get_weight(writer, commit).data
            wrong += not np.array_equal(bit_view(restored), bit_view(value(writer, int(count))))
    by_writer: dict[str, int] = {}
    for writer, count in reported.values():
        if count != "merged":
            by_writer[writer] = by_writer.get(writer, 0) + 1
    return {
        "commits_in_main": len(history),
        "reported": by_writer,
        "lost": lost,
        "wrong_bits": wrong,
        "verify_ok": repo.verify().ok,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument(
        "--json", type=Path, default=Path(__file__).parent / "results" / "soak.json"
    )
    parser.add_argument("--role", choices=("owner", "pusher"), help=argparse.SUPPRESS)
    parser.add_argument("--args", nargs="*", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.role == "owner":
        owner(*map(Path, args.args))
        return
    if args.role == "pusher":
        name, *paths = args.args
        pusher(name, *map(Path, paths))
        return
    with tempfile.TemporaryDirectory(prefix="coral-soak-") as scratch:
        root = Path(scratch)
        folder, stop = root / "owner", root / "stop"
        repo = Repository(folder, init=True)
        repo.stage_weights({"owner": value("owner", 0)})
        repo.commit("start")
        logs = [root / "owner.log", root / "a.log", root / "b.log"]
        me = [sys.executable, __file__, "--role"]
        processes = [
            subprocess.Popen([*me, "owner", "--args", str(folder), str(stop), str(logs[0])])
        ]
        for name, log in (("a", logs[1]), ("b", logs[2])):
            work = root / f"clone-{name}"
            processes.append(
                subprocess.Popen(
                    [*me, "pusher", "--args", name, str(folder), str(work), str(stop), str(log)]
                )
            )
        time.sleep(args.seconds)
        stop.touch()
        codes = [p.wait(timeout=300) for p in processes]
        for log in logs:
            log.touch()
        result = check(folder, logs)
        result |= {"seconds": args.seconds, "exit_codes": codes}
    lost = sum(result["lost"].values())  # type: ignore[union-attr]
    print(
        f"{args.seconds:.0f} s: the owner committing and collecting, two clones pushing to main\n"
    )
    print("| writer | commits reported | lost |")
    print("| --- | ---: | ---: |")
    for writer, count in result["reported"].items():  # type: ignore[union-attr]
        print(f"| {writer} | {count} | **{result['lost'].get(writer, 0)}** |")  # type: ignore[union-attr]
    print(
        f"\nmain holds {result['commits_in_main']} commits; wrong bits: {result['wrong_bits']}; "
        f"verify: {'ok' if result['verify_ok'] else 'FAILED'}; exit codes {codes}"
    )
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps({"machine": platform.platform(), **result}, indent=2))
    if lost or result["wrong_bits"] or not result["verify_ok"] or any(codes):
        raise SystemExit(1)


if __name__ == "__main__":
    main()
