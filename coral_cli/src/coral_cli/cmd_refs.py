"""Branch and tag commands: branch, checkout, tag."""

from __future__ import annotations

from typing import Any

import click

from coral_cli.main import Env, pass_env
from coral_cli.output import table, user_errors
from coral_cli.parsing import metric_pairs


@click.command()
@click.argument("name", required=False)
@click.argument("start", required=False)
@click.option("-d", "--delete", "delete", metavar="NAME", help="Delete this branch.")
@click.option("--list", "list_all", is_flag=True, help="List branches (the default).")
@pass_env
def branch(
    env: Env, name: str | None, start: str | None, delete: str | None, list_all: bool
) -> None:
    """List branches, create NAME at START (HEAD by default), or delete one.

    Example: coral-ml branch fine_tune_lr_0.001
    """
    with user_errors():
        repo = env.repo()
        if delete:
            repo.delete_branch(delete)
            env.output.emit({"deleted": delete}, lambda d: f"deleted branch {delete}")
            return
        if name and not list_all:
            made = repo.create_branch(name, start)
            env.output.emit(
                {"name": made.name, "commit": made.commit},
                lambda d: f"created branch {made.name} at {str(made.commit)[:12]}",
            )
            return
        branches = repo.list_branches()
    data = [{"name": b.name, "commit": b.commit, "current": b.current} for b in branches]
    env.output.emit(
        data,
        lambda rows: "\n".join(
            f"{'*' if r['current'] else ' '} {r['name']}  {(r['commit'] or 'no commits')[:12]}"
            for r in rows
        ),
    )


@click.command()
@click.argument("ref")
@click.option("-b", "new_branch", metavar="NEW", help="Create branch NEW at REF and switch to it.")
@click.option("-f", "--force", is_flag=True, help="Drop staged changes.")
@pass_env
def checkout(env: Env, ref: str, new_branch: str | None, force: bool) -> None:
    """Switch HEAD to a branch, or detach it at a tag or commit.

    Example: coral-ml checkout -b experiment v1.0
    """
    with user_errors():
        repo = env.repo()
        if new_branch:
            repo.create_branch(new_branch, ref)
        target = new_branch or ref
        commit = repo.checkout(target, force=force)
        branch_name = repo.current_branch
    where = f"branch {branch_name}" if branch_name else f"{commit.short_hash} (detached HEAD)"
    env.output.emit(
        {"branch": branch_name, "commit": commit.commit_hash},
        lambda d: f"switched to {where}",
    )


@click.command()
@click.argument("name", required=False)
@click.argument("ref", required=False)
@click.option("-d", "--description", help="What this version is.")
@click.option("--metric", "metrics", multiple=True, metavar="KEY=VALUE", help="Repeatable.")
@click.option("-f", "--force", is_flag=True, help="Move the tag if it exists.")
@click.option(
    "--list", "pattern", is_flag=False, flag_value="*", help="List tags [matching a glob]."
)
@click.option("--delete", "delete", metavar="NAME", help="Delete this tag.")
@pass_env
def tag(
    env: Env,
    name: str | None,
    ref: str | None,
    description: str | None,
    metrics: tuple[str, ...],
    force: bool,
    pattern: str | None,
    delete: str | None,
) -> None:
    """Tag REF (HEAD by default) as NAME, with a description and metrics; or list tags.

    Example: coral-ml tag v1.0 -d "production model" --metric val_accuracy=0.94
    """
    values = metric_pairs(metrics)
    with user_errors():
        repo = env.repo()
        if delete:
            repo.delete_tag(delete)
            env.output.emit({"deleted": delete}, lambda d: f"deleted tag {delete}")
            return
        if name is not None and pattern is None:
            made = repo.tag_version(name, description, values, ref=ref, force=force)
            env.output.emit(
                {"name": made.name, "commit": made.commit, "metrics": made.metrics},
                lambda d: f"tagged {made.commit[:12]} as {made.name}",
            )
            return
        tags = repo.list_tags(None if pattern in (None, "*") else pattern)
    data: list[dict[str, Any]] = [
        {
            "name": t.name,
            "commit": t.commit,
            "description": t.description,
            "metrics": t.metrics,
        }
        for t in tags
    ]

    def render(rows: list[dict[str, Any]]) -> str:
        if not rows:
            return "no tags"
        return table(
            ("tag", "commit", "description", "metrics"),
            [
                (
                    r["name"],
                    r["commit"][:12],
                    r["description"],
                    " ".join(f"{k}={v}" for k, v in r["metrics"].items()),
                )
                for r in rows
            ],
        )

    env.output.emit(data, render)


COMMANDS = [branch, checkout, tag]
