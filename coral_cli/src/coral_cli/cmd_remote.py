"""Remote commands: remote add|remove|list, push, fetch, pull, clone, sync, sync-status."""

from __future__ import annotations

import dataclasses
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import click

from coral_cli.main import Env, pass_env
from coral_cli.output import Output, human_bytes, table, user_errors
from coral_core import Repository, TransferResult
from coral_core import clone as clone_repository
from coral_core.remote import pull_every_branch


@contextmanager
def transfer_progress(output: Output, label: str) -> Iterator[Callable[[int], None] | None]:
    """A byte counter shown while objects move (on a terminal, not in json/quiet mode)."""
    if output.json or output.quiet or not sys.stderr.isatty():
        yield None
        return
    with click.progressbar(length=0, label=label, file=sys.stderr) as bar:

        def advance(size: int) -> None:
            bar.length = (bar.length or 0) + size
            bar.update(size)

        yield advance


def transfer_data(result: TransferResult) -> dict[str, Any]:
    return {
        "objects": result.objects,
        "bytes": result.bytes,
        "refs": {ref: {"old": old, "new": new} for ref, (old, new) in result.refs.items()},
    }


def render_transfer(verb: str) -> Callable[[dict[str, Any]], str]:
    def render(d: dict[str, Any]) -> str:
        lines = [f"{verb} {d['objects']} objects ({human_bytes(d['bytes'])})"]
        for ref, move in d["refs"].items():
            old = (move["old"] or "new")[:12]
            lines.append(f"  {ref}: {old} -> {(move['new'] or 'deleted')[:12]}")
        return "\n".join(lines)

    return render


@click.group()
def remote() -> None:
    """Remember where copies of this repository live (s3://bucket/prefix, folders)."""


@remote.command("add")
@click.argument("name")
@click.argument("url")
@pass_env
def remote_add(env: Env, name: str, url: str) -> None:
    """Add remote NAME at URL (s3://bucket/prefix, file:///path or a folder).

    For S3-compatible servers other than AWS, set CORAL_S3_ENDPOINT_URL.
    Example: coral-ml remote add origin s3://models/bert
    """
    with user_errors():
        env.repo().add_remote(name, url)
    env.output.emit({"name": name, "url": url}, lambda d: f"added remote {name}: {url}")


@remote.command("remove")
@click.argument("name")
@pass_env
def remote_remove(env: Env, name: str) -> None:
    """Forget remote NAME and its remote-tracking branches."""
    with user_errors():
        env.repo().remove_remote(name)
    env.output.emit({"removed": name}, lambda d: f"removed remote {name}")


@remote.command("list")
@pass_env
def remote_list(env: Env) -> None:
    """Every remote and its URL."""
    with user_errors():
        remotes = env.repo().list_remotes()
    env.output.emit(remotes, lambda d: "\n".join(f"{n}\t{u}" for n, u in d.items()) or "no remotes")


@click.command()
@click.argument("remote_name", default="origin")
@click.argument("branches", nargs=-1)
@click.option("--all", "all_branches", is_flag=True, help="Push every branch.")
@click.option("--tags", is_flag=True, help="Push every tag too (a changed tag needs --force).")
@click.option(
    "-f",
    "--force",
    is_flag=True,
    help="Replace remote branches and tags even if that drops commits there.",
)
@click.option(
    "--force-with-lease",
    is_flag=True,
    help="Replace a remote branch only if it is where the last fetch saw it.",
)
@click.option("-d", "--delete", "delete", multiple=True, metavar="BRANCH", help="Delete it there.")
@pass_env
def push(
    env: Env,
    remote_name: str,
    branches: tuple[str, ...],
    all_branches: bool,
    tags: bool,
    force: bool,
    force_with_lease: bool,
    delete: tuple[str, ...],
) -> None:
    """Send branches (the current one by default) to a remote; only missing objects travel.

    Their runs' pointers, pins and prune marks go along; pruned weights stay behind.
    Example: coral-ml push origin main --tags
    """
    with user_errors():
        repo = env.repo()
        names = [b.name for b in repo.list_branches() if b.commit] if all_branches else None
        chosen = names or list(branches) or (None if not delete else [])
        with transfer_progress(env.output, "pushing") as progress:
            result = repo.push(
                remote_name,
                chosen,
                tags=tags,
                force=force,
                force_with_lease=force_with_lease,
                delete=list(delete),
                progress=progress,
            )
    env.output.emit(transfer_data(result), render_transfer("sent"))


DEPTH = click.IntRange(min=1)


@click.command()
@click.argument("remote_name", default="origin")
@click.argument("ref", required=False)
@click.option("--depth", type=DEPTH, help="Weights of the newest N commits only (shallow).")
@click.option("--deepen", type=DEPTH, help="Weights of N more generations of shallow commits.")
@click.option("--unshallow", is_flag=True, help="Weights of every shallow commit.")
@pass_env
def fetch(
    env: Env,
    remote_name: str,
    ref: str | None,
    depth: int | None,
    deepen: int | None,
    unshallow: bool,
) -> None:
    """Bring a remote's branches (as REMOTE/BRANCH), tags, run pointers, pins and
    prune marks here, verified; REF fetches one branch or tag.

    Example: coral-ml fetch origin main --depth 1
    """
    with user_errors(), transfer_progress(env.output, "fetching") as progress:
        result = env.repo().fetch(
            remote_name, ref, depth=depth, deepen=deepen, unshallow=unshallow, progress=progress
        )
    env.output.emit(transfer_data(result), render_transfer("received"))


@click.command()
@click.argument("remote_name", default="origin")
@click.argument("branch", required=False)
@click.option("-s", "--strategy", default="fail", show_default=True, help="For conflicts.")
@click.option(
    "--all",
    "every",
    is_flag=True,
    help="Every branch: made here, moved forward, the current one merged; diverged ones stay.",
)
@pass_env
def pull(env: Env, remote_name: str, branch: str | None, strategy: str, every: bool) -> None:
    """Fetch, then merge the remote's branch into the current one (or, with
    ``--all``, bring every branch of the remote here).

    Example: coral-ml pull origin main --strategy average; coral-ml pull --all
    """
    if every:
        if branch is not None:
            raise click.UsageError("pull --all brings every branch; name none")
        with user_errors():
            outcome = pull_every_branch(env.repo(), remote_name, strategy)
        env.output.emit(
            outcome,
            lambda d: table(("branch", "pulled"), sorted(d.items())) if d else "no branches",
        )
        return
    with user_errors():
        repo = env.repo()
        with transfer_progress(env.output, "fetching") as progress:
            result = repo.pull(remote_name, branch, strategy, progress)
        head = repo.resolve("HEAD")
    data = {**transfer_data(result), "head": head}
    env.output.emit(data, lambda d: render_transfer("received")(d) + f"\nHEAD is {head[:12]}")


@click.command("clone")
@click.argument("url")
@click.argument("path", required=False, type=click.Path(file_okay=False, path_type=Path))
@click.option("--depth", type=DEPTH, help="Weights of the newest N commits of each branch only.")
@pass_env
def clone(env: Env, url: str, path: Path | None, depth: int | None) -> None:
    """Copy a remote repository into a new folder (PATH, or the URL's last part).

    Example: coral-ml clone --depth 1 s3://models/bert bert
    """
    target = path or Path(url.rstrip("/").rsplit("/", 1)[-1] or "repo")
    moved = {"objects": 0, "bytes": 0}
    with user_errors():
        with transfer_progress(env.output, "cloning") as progress:

            def received(size: int) -> None:
                moved["objects"] += 1
                moved["bytes"] += size
                if progress is not None:
                    progress(size)

            repo: Repository = clone_repository(url, target, received, depth=depth)
        branches = [b.name for b in repo.list_branches()]
    env.output.emit(
        {"path": str(repo.path), "branches": branches, **moved},
        lambda d: (
            f"cloned into {d['path']} ({len(branches)} branches; received {d['objects']} "
            f"objects, {human_bytes(d['bytes'])})"
        ),
    )


@click.command()
@click.argument("remote_name", default="origin")
@pass_env
def sync(env: Env, remote_name: str) -> None:
    """Fetch, then push every branch the remote is behind on, and every tag.

    Example: coral-ml sync
    """
    with user_errors(), transfer_progress(env.output, "syncing") as progress:
        result = env.repo().sync(remote_name, progress)
    env.output.emit(transfer_data(result), render_transfer("moved"))


@click.command("sync-status")
@click.argument("remote_name", default="origin")
@pass_env
def sync_status(env: Env, remote_name: str) -> None:
    """Per branch: commits only here (ahead) and only on the remote (behind).

    Counts need the remote's commits here: run fetch first for exact numbers.
    Example: coral-ml sync-status origin
    """
    with user_errors():
        rows = env.repo().sync_status(remote_name)
    data = [dataclasses.asdict(r) for r in rows]
    env.output.emit(
        data,
        lambda d: table(
            ("branch", "local", "remote", "ahead", "behind"),
            [
                (
                    r["branch"],
                    (r["local"] or "-")[:12],
                    (r["remote"] or "-")[:12],
                    "?" if r["ahead"] is None else r["ahead"],
                    "?" if r["behind"] is None else r["behind"],
                )
                for r in d
            ],
            right=(3, 4),
        ),
    )


COMMANDS = [remote, push, fetch, pull, clone, sync, sync_status]
