"""``experiment list|show|compare``: training runs, from the checkpoints they committed."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from coral_cli.main import Env, pass_env
from coral_cli.output import table, user_errors
from coral_cli.plots import plot_curves
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


def differing(rows: list[dict[str, Any]]) -> set[str]:
    """The hyperparameters whose values differ between the runs given."""
    values = [row["hyperparameters"] or {} for row in rows]
    keys = {key for found in values for key in found}
    return {key for key in keys if len({repr(found.get(key)) for found in values}) > 1}


def varying_first(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Each run's hyperparameters with those that differ between the runs of its
    experiment first (a sweep's learning rate before the settings all share)."""
    by_experiment: dict[str, list[dict[str, Any]]] = {}
    for row in rows:
        by_experiment.setdefault(row["experiment"], []).append(row)
    differ = {name: differing(group) for name, group in by_experiment.items()}
    ordered = []
    for row in rows:
        values = row["hyperparameters"] or {}
        first = differ[row["experiment"]]
        ordered.append({**{k: v for k, v in values.items() if k in first}, **values})
    return ordered


def varying_only(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Each run's hyperparameters that differ between the runs given."""
    differ = differing(rows)
    return [{k: v for k, v in (r["hyperparameters"] or {}).items() if k in differ} for r in rows]


def _chosen(repo: Repository, name: str) -> list[Run]:
    runs = find_run(repo, name)
    if not runs:
        known = ", ".join(sorted({r.experiment for r in list_runs(repo)})) or "none yet"
        raise RefNotFoundError(f"no run or experiment named {name!r}; experiments: {known}")
    return runs


@click.group(invoke_without_command=True)
@click.pass_context
def experiment(context: click.Context) -> None:
    """Training runs that committed checkpoints (CoralTrainer, the callbacks);
    alone, it lists them (``experiment list``)."""
    if context.invoked_subcommand is None:
        context.invoke(list_experiments)


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
                        settings(values),
                    )
                    for r, values in zip(rows, varying_first(rows), strict=True)
                ],
                right=(3, 5),
            )
            if rows
            else "no experiments"
        ),
    )


@experiment.command("show")
@click.argument("run")
@click.option(
    "--plot",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Draw the metrics over steps to a PNG, kept, pruned and best marked.",
)
@pass_env
def show_experiment(env: Env, run: str, plot: Path | None) -> None:
    """A run's checkpoints (RUN: a run id, EXPERIMENT/RUN, or an experiment's
    name for all its runs): kept or pruned, each run's best marked, with
    metrics; a run and a branch column where they differ.

    Example: coral-ml experiment show resnet50_imagenet --plot curves.png
    """
    with user_errors():
        runs = _chosen(env.repo(), run)
    labels = short_run_ids([r.run_id for r in runs])
    items: list[dict[str, Any]] = [
        {
            "commit": c.commit.commit_hash,
            "run": r.run_id,
            "branch": c.record.branch,
            "epoch": c.record.epoch,
            "step": c.record.step,
            "weights": c.status,
            "best": c.commit.commit_hash == r.best,
            "metrics": c.commit.metrics,
        }
        for r in runs
        for c in r.checkpoints
    ]
    extra = [k for k in ("run", "branch") if len({c[k] for c in items}) > 1]
    fixed = (*extra, "epoch", "step", "weights")
    # a metric named like a column (the Trainer logs "epoch") is that column
    metrics = sorted({m for c in items for m in c["metrics"]} - set(fixed))
    newest = runs[-1]
    data: dict[str, Any] = {
        **run_data(newest),
        "other_runs": [r.run_id for r in runs[:-1]],
        "runs": [run_data(r) for r in runs],
        "items": items,
    }
    if len(runs) > 1:  # the experiment's best over its runs, as <experiment>/best says
        best = _experiment_best(env.repo(), newest.experiment)
        data["best"] = best
        data["best_value"] = next(
            (
                c["metrics"].get(newest.monitor)
                for c in items
                if c["commit"] == best and newest.monitor is not None
            ),
            None,
        )
    with user_errors():
        title = newest.experiment if len(runs) > 1 else f"{newest.experiment} run {newest.run_id}"
        legend = {
            r.run_id: " ".join([labels[r.run_id], settings(values, 40)])
            if values
            else labels[r.run_id]
            for r, values in zip(runs, varying_only(data["runs"]), strict=True)
        }
        chart = plot_curves(items, metrics, legend, title, plot) if plot is not None else None

    def render(d: dict[str, Any]) -> str:
        rows = [
            (
                c["commit"][:12] + (" *" if c["best"] else ""),
                *(labels[c["run"]] if k == "run" else c[k] or "-" for k in extra),
                c["epoch"],
                c["step"],
                c["weights"],
                *(c["metrics"].get(m) for m in metrics),
            )
            for c in d["items"]
        ]
        first = 1 + len(extra)  # epoch, step, weights, then the metrics
        numbers = (first, first + 1, *range(first + 3, first + 3 + len(metrics)))
        body = table(("commit (* best)", *fixed, *metrics), rows, right=numbers)
        best = d["best"] if len(d["runs"]) > 1 else None
        return _run_heading(d["runs"], best) + "\n" + body

    env.output.emit(data, render)
    if chart is not None:
        env.output.note(f"wrote {plot}: {chart.summary()}")


def _experiment_best(repo: Repository, experiment: str) -> str | None:
    try:
        return repo.resolve(f"{experiment}/best")
    except RefNotFoundError:
        return None


def _run_heading(runs: list[dict[str, Any]], best: str | None = None) -> str:
    """Which runs ``experiment show`` lists: the run, or the experiment and a line per run."""
    kept = sum(r["kept"] for r in runs)
    total = sum(r["checkpoints"] for r in runs)
    if len(runs) == 1:
        (r,) = runs
        head = f"{r['experiment']} run {r['run']} on {r['branch'] or '-'}: "
        head += f"{kept} of {total} checkpoints kept"
        if r["hyperparameters"]:
            head += "\nhyperparameters: " + settings(r["hyperparameters"], 200)
        return head
    head = f"{runs[0]['experiment']}: {len(runs)} runs, {kept} of {total} checkpoints kept"
    if best is not None:
        head += f"; the experiment's best: {best[:12]}"
    lines = [head]
    for r, values in zip(runs, varying_first(runs), strict=True):
        line = f"  run {r['run']} on {r['branch'] or '-'}: {r['kept']} of {r['checkpoints']} kept"
        lines.append(line + (f"; {settings(values, 80)}" if values else ""))
    return "\n".join(lines)


def short_run_ids(run_ids: list[str]) -> dict[str, str]:
    """Run id -> its last 6 characters (the random part), or the whole id where
    those are not unique."""
    short = {run: run[-6:] for run in run_ids}
    return short if len(set(short.values())) == len(short) else {run: run for run in run_ids}


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
    labels = short_run_ids([run.run_id for run in runs])
    for run in runs:
        chosen = run.best or run.last or run.checkpoints[-1].commit.commit_hash
        commit = next(c.commit for c in run.checkpoints if c.commit.commit_hash == chosen)
        label = f"{run.experiment}/{labels[run.run_id]}" if len(runs) > 1 else name
        columns.append((label, commit, run.hyperparameters))
    return columns


def _step(commit: Commit) -> int | None:
    record = CheckpointRecord.of(commit)
    return record.step if record else None


COMMANDS = [experiment]
