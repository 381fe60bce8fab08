"""History commands: log, diff, compare, reflog."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from coral_cli.graph import draw, shown_parents, topo_order
from coral_cli.main import Env, pass_env
from coral_cli.output import table, user_errors
from coral_cli.parsing import metric_filters
from coral_cli.plots import plot_changes
from coral_cli.views import (
    branches_by_commit,
    commit_data,
    decoration,
    pointers_by_commit,
    tags_by_commit,
    when,
)
from coral_core import CommitDiff


@click.command()
@click.argument("ref", required=False)
@click.option("-n", "--max-count", type=click.IntRange(min=1), help="Show at most N commits.")
@click.option("--oneline", is_flag=True, help="One line per commit.")
@click.option(
    "--graph", is_flag=True, help="Draw branches and merges in lanes, as git log --graph."
)
@click.option("--all", "all_refs", is_flag=True, help="Every branch and tag, not just REF.")
@click.option(
    "--filter", "filters", multiple=True, metavar="EXPR", help='A metric test: "val_accuracy>0.9".'
)
@pass_env
def log(
    env: Env,
    ref: str | None,
    max_count: int | None,
    oneline: bool,
    graph: bool,
    all_refs: bool,
    filters: tuple[str, ...],
) -> None:
    """History, newest first.

    Example: coral-ml log -n 5 --filter "val_accuracy>=0.9"
    """
    tests = metric_filters(filters)
    with user_errors():
        repo = env.repo()
        commits = repo.log(ref, all_refs=all_refs)
        parents = {c.commit_hash: c.parent_hashes for c in commits}
        if tests:
            passing = {c.commit_hash for c in repo.find_commits(metric_filter=tests, ref=ref)}
            commits = [c for c in commits if c.commit_hash in passing]
        links: dict[str, list[str]] = {}
        if graph:  # as git's --graph: topological order, lines joined across what is hidden
            links = shown_parents(parents, [c.commit_hash for c in commits])
            by_id = {c.commit_hash: c for c in commits}
            commits = [by_id[c] for c in topo_order({c: links[c] for c in by_id})]
        commits = commits[:max_count] if max_count else commits
        tags, pointers = tags_by_commit(repo), pointers_by_commit(repo)
        branches = branches_by_commit(repo)
        view = repo.weights_view()
    data = [
        commit_data(c, tags, view.status(c.commit_hash, list(c.trees.values())), pointers, branches)
        for c in commits
    ]

    def render(rows: list[dict[str, Any]]) -> str:
        if not rows:
            return "no commits"
        texts = [_commit_text(row, oneline) for row in rows]
        if graph:
            drawn = [
                (r["commit"], links[r["commit"]], text) for r, text in zip(rows, texts, strict=True)
            ]
            return "\n".join(draw(drawn, separated=not oneline))
        return ("\n" if oneline else "\n\n").join("\n".join(text) for text in texts)

    env.output.emit(data, render)


def _commit_text(row: dict[str, Any], oneline: bool) -> list[str]:
    """A commit's lines in ``log``: one with ``--oneline`` (the message's first
    line), else git's medium format with each line of the message indented."""
    decorated = decoration(row)
    message = row["message"].splitlines() or [""]
    if oneline:
        return [f"{row['commit'][:12]}{decorated} {message[0]}"]
    lines = [f"commit {row['commit']}{decorated}"]
    if len(row["parents"]) > 1:
        lines.append("Merge: " + " ".join(p[:12] for p in row["parents"]))
    lines += [f"Author: {row['author']}", f"Date:   {when(row['timestamp'])}", ""]
    lines += [f"    {line}" for line in message]
    if row["metrics"]:
        shown = " ".join(f"{k}={_short(v)}" for k, v in row["metrics"].items())
        lines.append(f"    metrics: {shown}")
    return lines


def _short(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def _diff_data(diff: CommitDiff) -> dict[str, Any]:
    tensors = []
    for name, item in diff.tensors.items():
        stats = item.stats
        tensors.append(
            {
                "name": name,
                "status": item.status,
                "shape_before": list(item.before.shape) if item.before else None,
                "shape_after": list(item.after.shape) if item.after else None,
                "changed_elements": stats.changed_elements if stats else None,
                "relative_l2": stats.relative_l2 if stats else None,
                "max_abs_change": stats.max_abs_change if stats else None,
                "cosine_similarity": stats.cosine_similarity if stats else None,
            }
        )
    return {
        "from": diff.commit_a,
        "to": diff.commit_b,
        "tensors": tensors,
        "metrics": {m: list(values) for m, values in diff.metrics.items()},
        "weights_gone": list(diff.weights_gone),
    }


def _gone(d: dict[str, Any]) -> str:
    """The line saying a compared commit's weights are gone (pruned or shallow)."""
    shown = ", ".join(c[:12] for c in d["weights_gone"])
    return f"the weights of {shown} are gone (pruned or not fetched): only metrics are compared"


@click.command()
@click.argument("ref_a")
@click.argument("ref_b", required=False)
@click.option("--all", "show_all", is_flag=True, help="List unchanged tensors too.")
@click.option(
    "--plot",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Draw each tensor's relative change (log scale) to a PNG.",
)
@pass_env
def diff(env: Env, ref_a: str, ref_b: str | None, show_all: bool, plot: Path | None) -> None:
    """Per-tensor change from REF_A to REF_B (HEAD by default).

    Example: coral-ml diff v1.0 main --plot change.png
    """
    with user_errors():
        data = _diff_data(env.repo().diff(ref_a, ref_b))
        title = f"{data['from'][:12]} -> {data['to'][:12]}"
        drawable = any(t["relative_l2"] is not None for t in data["tensors"])
        chart = plot_changes(data["tensors"], title, plot) if plot and drawable else None

    def render(d: dict[str, Any]) -> str:
        rows = [
            (
                t["name"],
                t["status"],
                "x".join(map(str, t["shape_after"] or t["shape_before"] or [])) or "scalar",
                t["relative_l2"],
                t["max_abs_change"],
                t["cosine_similarity"],
            )
            for t in d["tensors"]
            if show_all or t["status"] != "unchanged"
        ]
        counts: dict[str, int] = {}
        for t in d["tensors"]:
            counts[t["status"]] = counts.get(t["status"], 0) + 1
        summary = ", ".join(f"{n} {status}" for status, n in sorted(counts.items()))
        head = f"{d['from'][:12]}..{d['to'][:12]}: {summary or 'no tensors'}"
        if d["weights_gone"]:
            metrics = [(m, *values) for m, values in d["metrics"].items()]
            text = f"{d['from'][:12]}..{d['to'][:12]}: {_gone(d)}"
            return text + ("\n" + table(("metric", "from", "to"), metrics) if metrics else "")
        if not rows:
            return head
        columns = ("name", "status", "shape", "rel. L2", "max |change|", "cosine")
        return head + "\n" + table(columns, rows, right=(3, 4, 5))

    env.output.emit(data, render)
    if chart is not None:
        env.output.note(f"wrote {plot}: {chart.summary()}")
    elif plot is not None:
        gone = " (their weights are gone)" if data.get("weights_gone") else ""
        env.output.note(f"no chart written to {plot}: no tensor changed{gone}")


@click.command()
@click.argument("ref_a")
@click.argument("ref_b", default="HEAD")
@pass_env
def compare(env: Env, ref_a: str, ref_b: str) -> None:
    """Two commits side by side (REF_B is HEAD by default): metrics, and how
    much the weights changed.

    Example: coral-ml compare experiment-a experiment-b
    """
    with user_errors():
        repo = env.repo()
        a, b = repo.show(ref_a), repo.show(ref_b)
        changes = _diff_data(repo.diff(a.commit_hash, b.commit_hash))
    modified = [t for t in changes["tensors"] if t["status"] == "modified"]
    data = {
        "a": a.commit_hash,
        "b": b.commit_hash,
        "metrics": changes["metrics"],
        "weights_gone": changes["weights_gone"],
        "tensors": {
            status: sum(1 for t in changes["tensors"] if t["status"] == status)
            for status in ("added", "removed", "modified", "unchanged")
        },
        "max_relative_l2": max((t["relative_l2"] or 0.0 for t in modified), default=0.0),
    }

    def render(d: dict[str, Any]) -> str:
        rows = [(m, *values) for m, values in d["metrics"].items()]
        text = table(("metric", ref_a, ref_b), rows, right=(1, 2)) if rows else "no metrics"
        if d["weights_gone"]:
            return f"{text}\n\n{_gone({'weights_gone': d['weights_gone']})}"
        counts = ", ".join(f"{n} {s}" for s, n in d["tensors"].items())
        return f"{text}\n\ntensors: {counts}; largest relative L2 change {d['max_relative_l2']:.4g}"

    env.output.emit(data, render)


@click.command()
@click.argument("ref", default="HEAD")
@pass_env
def reflog(env: Env, ref: str) -> None:
    """Every move of HEAD or a branch, newest first.

    Example: coral-ml reflog main
    """
    with user_errors():
        entries = env.repo().reflog(ref)
    data = [
        {
            "old": e.old,
            "new": e.new,
            "author": e.author,
            "timestamp": e.timestamp,
            "message": e.message,
        }
        for e in entries
    ]
    env.output.emit(
        data,
        lambda rows: (
            "\n".join(
                f"{(r['new'] or '0' * 12)[:12]} {ref}@{{{i}}}: {r['message']}"
                for i, r in enumerate(rows)
            )
            or "no moves recorded"
        ),
    )


COMMANDS = [log, diff, compare, reflog]
