"""``experiment list|show|compare``: training runs, from the checkpoints they committed."""

from __future__ import annotations

from typing import Any

import click

from coral_cli.main import Env, pass_env
from coral_cli.output import table, user_errors
from coral_core import Repository
from coral_core.errors import RefNotFoundError
from coral_core.runs import Run, find_run, list_runs


def run_data(run: Run) -> dict[str, Any]:
    """A run as ``experiment list --json`` prints it."""
    last = run.checkpoints[-1]
    return {
        "experiment": run.experiment,
        "run": run.run_id,
        "branch": run.branch,
        "checkpoints": len(run.checkpoints),
        "kept": run.kept,
        "monitor": run.monitor,
        "best": run.best,
        "best_value": run.best_value(),
        "last": run.last,
        "last_step": last.record.step,
        "last_epoch": last.record.epoch,
        "started": run.checkpoints[0].commit.timestamp,
        "hyperparameters": run.hyperparameters,
    }


def _chosen(repo: Repository, name: str) -> list[Run]:
    runs = find_run(repo, name)
    if not runs:
        known = ", ".join(sorted({r.experiment for r in list_runs(repo)})) or "none yet"
        raise RefNotFoundError(f"no run or experiment named {name!r}; experiments: {known}")
    return runs


@click.group()
def experiment() -> None:
    """Training runs that committed checkpoints (CoralTrainer, the callbacks)."""


@experiment.command("list")
@pass_env
def list_experiments(env: Env) -> None:
    """Each run: experiment, run id, branch, checkpoints kept/total, best metric.

    Example: coral-ml experiment list
    """
    with user_errors():
        data = [run_data(run) for run in list_runs(env.repo())]

    def best(row: dict[str, Any]) -> str:
        if row["monitor"] is None or row["best_value"] is None:
            return "-"
        return f"{row['monitor']}={row['best_value']:.4g}"

    env.output.emit(
        data,
        lambda rows: (
            table(
                ("experiment", "run", "branch", "kept/total", "best", "last step"),
                [
                    (
                        r["experiment"],
                        r["run"],
                        r["branch"] or "-",
                        f"{r['kept']}/{r['checkpoints']}",
                        best(r),
                        r["last_step"],
                    )
                    for r in rows
                ],
                right=(3, 5),
            )
            if rows
            else "no experiments"
        ),
    )


@experiment.command("show")
@click.argument("run")
@pass_env
def show_experiment(env: Env, run: str) -> None:
    """One run's checkpoints (RUN: a run id, EXPERIMENT/RUN, or an experiment's
    name for its newest run): kept or pruned, the best marked, with metrics.

    Example: coral-ml experiment show resnet50_imagenet
    """
    with user_errors():
        runs = _chosen(env.repo(), run)
    chosen = runs[-1]
    items: list[dict[str, Any]] = [
        {
            "commit": c.commit.commit_hash,
            "epoch": c.record.epoch,
            "step": c.record.step,
            "weights": c.status,
            "best": c.commit.commit_hash == chosen.best,
            "metrics": c.commit.metrics,
        }
        for c in chosen.checkpoints
    ]
    metrics = sorted({m for c in items for m in c["metrics"]})
    data: dict[str, Any] = {
        **run_data(chosen),
        "other_runs": [r.run_id for r in runs[:-1]],
        "items": items,
    }

    def render(d: dict[str, Any]) -> str:
        head = f"{d['experiment']} run {d['run']} on {d['branch'] or '-'}: "
        head += f"{d['kept']} of {d['checkpoints']} checkpoints kept"
        if d["other_runs"]:
            head += f" (newest of {len(d['other_runs']) + 1} runs; others: "
            head += ", ".join(d["other_runs"]) + ")"
        rows = [
            (
                c["commit"][:12] + (" *" if c["best"] else ""),
                c["epoch"],
                c["step"],
                c["weights"],
                *(c["metrics"].get(m) for m in metrics),
            )
            for c in d["items"]
        ]
        columns = ("commit (* best)", "epoch", "step", "weights", *metrics)
        return head + "\n" + table(columns, rows, right=(1, 2, *range(4, 4 + len(metrics))))

    env.output.emit(data, render)


@experiment.command("compare")
@click.argument("names", nargs=-1, required=True)
@pass_env
def compare_experiments(env: Env, names: tuple[str, ...]) -> None:
    """The newest checkpoint of each run (or of each experiment's newest run),
    metrics side by side.

    Example: coral-ml experiment compare lr-1e-3 lr-3e-4
    """
    with user_errors():
        repo = env.repo()
        last = {name: _chosen(repo, name)[-1].checkpoints[-1] for name in names}
    metrics = sorted({m for c in last.values() for m in c.commit.metrics})
    data = {
        "experiments": list(names),
        "commits": {n: c.commit.commit_hash for n, c in last.items()},
        "steps": {n: c.record.step for n, c in last.items()},
        "metrics": {m: {n: c.commit.metrics.get(m) for n, c in last.items()} for m in metrics},
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
