"""``experiment list|show|compare``: training runs, from the checkpoints they committed."""

from __future__ import annotations

from typing import Any

import click

from coral_cli.main import Env, pass_env
from coral_cli.output import table, user_errors
from coral_core import Commit, Repository
from coral_core.errors import RefNotFoundError
from coral_core.runs import CheckpointRecord, Run, find_run, list_runs


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


def settings(values: dict[str, Any], width: int = 48) -> str:
    """Hyperparameters as ``lr=0.001 seed=1``, cut to ``width`` characters."""
    text = " ".join(f"{k}={v}" for k, v in values.items()) or "-"
    return text if len(text) <= width else text[: width - 3] + "..."


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
                (
                    "experiment",
                    "run",
                    "branch",
                    "kept/total",
                    "best",
                    "last step",
                    "hyperparameters",
                ),
                [
                    (
                        r["experiment"],
                        r["run"],
                        r["branch"] or "-",
                        f"{r['kept']}/{r['checkpoints']}",
                        best(r),
                        r["last_step"],
                        settings(r["hyperparameters"]),
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
    # a metric named like a column of its own (the Trainer logs "epoch") is that column
    metrics = sorted({m for c in items for m in c["metrics"]} - {"epoch", "step", "weights"})
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
        if d["hyperparameters"]:
            head += "\nhyperparameters: " + settings(d["hyperparameters"], 200)
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
    """Runs side by side: hyperparameters, and the metrics of each run's best
    checkpoint (its newest when it ranks none). NAMES are run ids, experiments
    (all their runs: a sweep) or refs (``sweep/last``, a commit).

    Example: coral-ml experiment compare sweep
    """
    with user_errors():
        repo = env.repo()
        columns = [column for name in names for column in _columns(repo, name)]
    labels = [label for label, _, _ in columns]
    settings_names = sorted({k for _, _, values in columns for k in values})
    metrics = sorted({m for _, commit, _ in columns for m in commit.metrics})
    data = {
        "columns": labels,
        "commits": {label: commit.commit_hash for label, commit, _ in columns},
        "steps": {label: _step(commit) for label, commit, _ in columns},
        "hyperparameters": {
            k: {label: values.get(k) for label, _, values in columns} for k in settings_names
        },
        "metrics": {
            m: {label: commit.metrics.get(m) for label, commit, _ in columns} for m in metrics
        },
    }
    env.output.emit(
        data,
        lambda d: table(
            ("", *labels),
            [("step", *d["steps"].values())]
            + [(k, *values.values()) for k, values in d["hyperparameters"].items()]
            + [(m, *values.values()) for m, values in d["metrics"].items()],
            right=tuple(range(1, 1 + len(labels))),
        ),
    )


def _columns(repo: Repository, name: str) -> list[tuple[str, Commit, dict[str, Any]]]:
    """(label, commit, hyperparameters) of each run ``name`` names (its best
    checkpoint, else its newest), or of the commit it resolves to."""
    runs = find_run(repo, name)
    if not runs:
        try:
            commit = repo.show(name)
        except RefNotFoundError:
            _chosen(repo, name)  # raises, naming the experiments there are
            raise
        record = CheckpointRecord.of(commit)
        return [(name, commit, record.hyperparameters if record else {})]
    columns = []
    for run in runs:
        chosen = run.best or run.last or run.checkpoints[-1].commit.commit_hash
        commit = next(c.commit for c in run.checkpoints if c.commit.commit_hash == chosen)
        label = f"{run.experiment}/{run.run_id[-6:]}" if len(runs) > 1 else name
        columns.append((label, commit, run.hyperparameters))
    return columns


def _step(commit: Commit) -> int | None:
    record = CheckpointRecord.of(commit)
    return record.step if record else None


COMMANDS = [experiment]
