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
@click.argument("ref", required=False)
@click.option(
    "-b", "new_branch", metavar="NEW", help="Create branch NEW at REF (HEAD) and switch to it."
)
@click.option("-f", "--force", is_flag=True, help="Drop staged changes.")
@pass_env
def checkout(env: Env, ref: str | None, new_branch: str | None, force: bool) -> None:
    """Switch HEAD to a branch, or detach it at a tag or commit.

    Example: coral-ml checkout -b experiment v1.0
    """
    if ref is None and new_branch is None:
        raise click.UsageError("name a branch, tag or commit to check out (or -b NEW)")
    with user_errors():
        repo = env.repo()
        if new_branch:
            repo.create_branch(new_branch, ref)
        commit = repo.checkout(new_branch or str(ref), force=force)
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
@click.option(
    "-f", "--force", is_flag=True, help="Replace the tag if it exists (tags do not move otherwise)."
)
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


@click.command()
@click.argument("refs", nargs=-1, required=True)
@click.option(
    "-s",
    "--strategy",
    default="fail",
    show_default=True,
    help="ours, theirs, fail, average, weighted, task_arithmetic, ties, dare, slerp, or a plugin.",
)
@click.option("-m", "--message", help="The merge commit's message.")
@click.option("--alpha", type=float, help="weighted: alpha * ours + (1 - alpha) * theirs.")
@click.option("--weights", help="One weight per version, current branch first: 0.5,0.3,0.2.")
@click.option("--scaling", type=float, help="task_arithmetic/ties/dare: scale of the task vector.")
@click.option("--density", type=float, help="ties: fraction of each task vector kept.")
@click.option("--drop-rate", type=float, help="dare: fraction of each task vector dropped.")
@click.option("--seed", type=int, help="dare: random seed.")
@click.option("--t", "t", type=float, help="slerp: 0 is ours, 1 theirs.")
@click.option(
    "--no-ff", is_flag=True, help="Make a merge commit even when a fast-forward would do."
)
@pass_env
def merge(
    env: Env, /, refs: tuple[str, ...], strategy: str, message: str | None, **options: Any
) -> None:
    """Merge branches into the current one (several at once: a model soup).

    Tensors changed on one side only are taken; tensors changed on several
    sides are resolved by the strategy (fail: list them and change nothing).

    Example: coral-ml merge experiment --strategy ties --density 0.3
    """
    no_ff = options.pop("no_ff")
    chosen = {k: v for k, v in options.items() if v is not None}
    if "weights" in chosen:
        try:
            chosen["weights"] = [float(w) for w in chosen["weights"].split(",")]
        except ValueError:
            raise click.BadParameter(
                "a comma-separated list of numbers", param_hint="--weights"
            ) from None
    with user_errors():
        repo = env.repo()
        before = repo.resolve("HEAD")
        made = repo.merge(list(refs), strategy, message, no_ff=no_ff, **chosen)
    is_merge = len(made.parent_hashes) > 1 and made.parent_hashes[0] == before
    data = {
        "commit": made.commit_hash,
        "up_to_date": made.commit_hash == before,
        "fast_forward": made.commit_hash != before and not is_merge,
        "merge": made.metadata.metadata.get("coral.merge") if is_merge else None,
    }

    def render(d: dict[str, Any]) -> str:
        if d["up_to_date"]:
            return "already up to date"
        if d["fast_forward"]:
            return f"fast-forward to {d['commit'][:12]}"
        record = d["merge"]
        resolved = record["resolved"]
        text = f"[{d['commit'][:12]}] merged"
        if resolved:
            text += f" ({record['strategy']}): {len(resolved)} conflicting tensor(s) resolved"
        else:
            text += ": no tensor changed on both sides"
        kept = record["kept_ours"]
        return text + (f"; integer tensors kept from ours: {', '.join(kept)}" if kept else "")

    env.output.emit(data, render)


@click.command()
@click.argument("ref", required=False)
@pass_env
def pin(env: Env, ref: str | None) -> None:
    """Keep REF's weights whatever retention decides (pins push and fetch); list pins.

    Example: coral-ml pin exp/best
    """
    with user_errors():
        repo = env.repo()
        if ref is not None:
            commit = repo.pin(ref)
            env.output.emit({"pinned": commit}, lambda d: f"pinned {commit[:12]} ({ref})")
            return
        pins = [repo.show(c) for c in repo.pins()]
    data = [{"commit": c.commit_hash, "message": c.message} for c in pins]
    env.output.emit(
        data,
        lambda rows: "\n".join(f"{r['commit'][:12]}  {r['message']}" for r in rows) or "no pins",
    )


@click.command()
@click.argument("ref")
@click.option("--remote", metavar="NAME", help="Unpin it on this remote too.")
@pass_env
def unpin(env: Env, ref: str, remote: str | None) -> None:
    """Let retention decide about REF's weights again (here, and on --remote).

    Example: coral-ml unpin exp/best --remote origin
    """
    with user_errors():
        commit = env.repo().unpin(ref, remote=remote)
    env.output.emit({"unpinned": commit}, lambda d: f"unpinned {commit[:12]} ({ref})")


COMMANDS = [branch, checkout, tag, merge, pin, unpin]
