"""``experiment list|show|compare``: training runs, from the checkpoints they committed."""

from __future__ import annotations

from typing import Any

import click

from coral_cli.main import Env, pass_env
from coral_cli.output import table, user_errors
from coral_core import Repository
from coral_core.checkpoint import CHECKPOINT_KEY
from coral_core.errors import RefNotFoundError


def checkpoints_by_experiment(repo: Repository) -> dict[str, list[dict[str, Any]]]:
    """Every checkpoint commit reachable from a branch or tag, by experiment, oldest first."""
    runs: dict[str, list[dict[str, Any]]] = {}
    starts = repo.ref_commits()
    for commit in repo.iter_commits(starts) if starts else []:
        info = commit.metadata.metadata.get(CHECKPOINT_KEY)
        if not isinstance(info, dict) or not isinstance(info.get("experiment"), str):
            continue
        runs.setdefault(info["experiment"], []).append(
            {
                "commit": commit.commit_hash,
                "epoch": info.get("epoch"),
                "step": info.get("step"),
                "timestamp": commit.timestamp,
                "metrics": commit.metrics,
            }
        )
    for checkpoints in runs.values():
        checkpoints.sort(key=lambda c: (c["step"] or 0, c["timestamp"]))
    return dict(sorted(runs.items()))


def _run(repo: Repository, name: str) -> list[dict[str, Any]]:
    runs = checkpoints_by_experiment(repo)
    if name not in runs:
        known = ", ".join(runs) or "none yet"
        raise RefNotFoundError(f"no experiment named {name!r}; experiments: {known}")
    return runs[name]


@click.group()
def experiment() -> None:
    """Training runs that committed checkpoints (CoralTrainer, the callbacks)."""


@experiment.command("list")
@pass_env
def list_experiments(env: Env) -> None:
    """Each experiment: checkpoints, last epoch and step, last metrics.

    Example: coral-ml experiment list
    """
    with user_errors():
        runs = checkpoints_by_experiment(env.repo())
    data = [
        {
            "name": name,
            "checkpoints": len(items),
            "last_commit": items[-1]["commit"],
            "last_epoch": items[-1]["epoch"],
            "last_step": items[-1]["step"],
            "last_metrics": items[-1]["metrics"],
        }
        for name, items in runs.items()
    ]
    env.output.emit(
        data,
        lambda rows: (
            table(
                ("experiment", "checkpoints", "epoch", "step", "last commit"),
                [
                    (
                        r["name"],
                        r["checkpoints"],
                        r["last_epoch"],
                        r["last_step"],
                        r["last_commit"][:12],
                    )
                    for r in rows
                ],
                right=(1, 2, 3),
            )
            if rows
            else "no experiments"
        ),
    )


@experiment.command("show")
@click.argument("name")
@pass_env
def show_experiment(env: Env, name: str) -> None:
    """An experiment's checkpoints with their metrics.

    Example: coral-ml experiment show resnet50_imagenet
    """
    with user_errors():
        items = _run(env.repo(), name)
    metrics = sorted({m for c in items for m in c["metrics"]})
    env.output.emit(
        {"name": name, "checkpoints": items},
        lambda d: table(
            ("commit", "epoch", "step", *metrics),
            [
                (c["commit"][:12], c["epoch"], c["step"], *(c["metrics"].get(m) for m in metrics))
                for c in d["checkpoints"]
            ],
            right=tuple(range(1, 3 + len(metrics))),
        ),
    )


@experiment.command("compare")
@click.argument("names", nargs=-1, required=True)
@pass_env
def compare_experiments(env: Env, names: tuple[str, ...]) -> None:
    """The newest checkpoint of each experiment, metrics side by side.

    Example: coral-ml experiment compare lr-1e-3 lr-3e-4
    """
    with user_errors():
        repo = env.repo()
        last = {name: _run(repo, name)[-1] for name in names}
    metrics = sorted({m for c in last.values() for m in c["metrics"]})
    data = {
        "experiments": list(names),
        "commits": {n: c["commit"] for n, c in last.items()},
        "steps": {n: c["step"] for n, c in last.items()},
        "metrics": {m: {n: c["metrics"].get(m) for n, c in last.items()} for m in metrics},
    }
    env.output.emit(
        data,
        lambda d: table(
            ("metric", *names),
            [("step", *d["steps"].values())]
            + [(m, *values.values()) for m, values in d["metrics"].items()],
            right=tuple(range(1, 1 + len(names))),
        ),
    )


COMMANDS = [experiment]
