"""Repository commands: init, status, config, stats, verify, gc, repack."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import click

from coral_cli.main import Env, pass_env
from coral_cli.output import USER_ERROR, human_bytes, table, user_errors
from coral_core import Repository
from coral_core.delta import MAX_CHAIN_LENGTH
from coral_core.refs import HEADS, TAGS


@click.command()
@click.argument("path", default=".", type=click.Path(file_okay=False, path_type=Path))
@pass_env
def init(env: Env, path: Path) -> None:
    """Create a repository (a .coral folder) in PATH.

    Example: coral-ml init my_project
    """
    if env.repo_dir is not None and not path.is_absolute():
        path = env.repo_dir / path  # -C DIR init: in DIR, as git
    with user_errors():
        existed = (path / ".coral" / "config").is_file()
        repo = Repository(path, init=True)
    env.output.emit(
        {"path": str(repo.path), "created": not existed},
        lambda d: (
            f"{'Reinitialized' if existed else 'Initialized'} Coral repository in "
            f"{d['path']}/.coral"
        ),
    )


@click.command()
@pass_env
def status(env: Env) -> None:
    """Current branch, HEAD, and what the next commit will change.

    Example: coral-ml status --json
    """
    with user_errors():
        repo = env.repo()
        head = repo.head
        staged = repo.staged()
        parent = repo.ls_tree(head.commit) if head.commit else {}
    added = sorted(n for n in staged.entries if n not in parent)
    modified = sorted(
        n for n, e in staged.entries.items() if n in parent and parent[n].tensor != e.tensor
    )
    data = {
        "branch": head.branch,
        "head": head.commit,
        "staged": {"added": added, "modified": modified, "removed": sorted(staged.removed)},
        "replace": staged.replace,
    }

    def render(d: dict[str, Any]) -> str:
        where = f"On branch {d['branch']}" if d["branch"] else f"HEAD detached at {d['head']}"
        lines = [where, f"HEAD: {d['head'] or 'no commits yet'}"]
        changes = [(k, n) for k in ("added", "modified", "removed") for n in d["staged"][k]]
        if not changes:
            lines.append("nothing staged")
        else:
            lines.append("Staged for the next commit:")
            lines += [f"  {kind:9} {name}" for kind, name in changes]
        return "\n".join(lines)

    env.output.emit(data, render)


@click.command()
@click.option("--list", "list_all", is_flag=True, help="Print every setting.")
@click.argument("key", required=False)
@click.argument("value", required=False)
@pass_env
def config(env: Env, list_all: bool, key: str | None, value: str | None) -> None:
    """Read or change a setting (values are JSON: 3, true, "text").

    Example: coral-ml config user.name ada
    """
    with user_errors():
        settings = env.config()  # not the repository: a bad setting can be repaired
        if list_all or key is None:
            items = settings.items()
            env.output.emit(
                items, lambda d: "\n".join(f"{k} = {json.dumps(v)}" for k, v in d.items())
            )
            return
        if value is None:
            current = settings.get(key)
            env.output.emit({key: current}, lambda d: json.dumps(current))
            return
        try:
            parsed = json.loads(value)
        except json.JSONDecodeError:
            parsed = value  # a bare word is a string
        settings.set(key, parsed)
    env.output.emit({key: parsed}, lambda d: f"{key} = {json.dumps(parsed)}")


@click.command()
@pass_env
def stats(env: Env) -> None:
    """How much the repository holds and how much it saves.

    logical_bytes is what the commits whose weights are here would take as
    files: every tensor of every one of them, training state (optimizer
    moments) included, as a checkpoint file holds it; pruned and shallow
    commits have none. stored_bytes is what the object store holds; saved is
    their ratio. Example: coral-ml stats --json
    """
    with user_errors():
        repo = env.repo()
        commits = list(repo.iter_commits(repo.ref_commits()))
        view = repo.weights_view()
        logical = 0
        tensors: set[str] = set()
        without: dict[str, int] = {"pruned": 0, "shallow": 0}
        for commit in commits:
            status = view.status(commit.commit_hash, list(commit.trees.values()))
            if status != "kept":
                without[status] += 1
                continue
            for tree in commit.trees.values():  # the model and its training state
                for entry in repo.read_tree(tree).values():
                    logical += entry.nbytes
                    tensors.add(entry.tensor)
        ids = list(repo.objects.iter_ids())
        stored = sum(repo.objects.stored_size(i) for i in ids)
    data = {
        "commits": len(commits),
        "pruned_commits": without["pruned"],
        "shallow_commits": without["shallow"],
        "branches": len(repo.refs.list_refs(HEADS)),
        "tags": len(repo.refs.list_refs(TAGS)),
        "tensors": len(tensors),
        "objects": len(ids),
        "logical_bytes": logical,
        "stored_bytes": stored,
        "ratio": logical / stored if stored else None,
    }

    def render(d: dict[str, Any]) -> str:
        ratio = f"{d['ratio']:.2f}x" if d["ratio"] else "-"
        rows = [
            ("commits", d["commits"]),
            ("  weights pruned", d["pruned_commits"]),
            ("  weights not fetched (shallow)", d["shallow_commits"]),
            ("branches", d["branches"]),
            ("tags", d["tags"]),
            ("distinct tensors", d["tensors"]),
            ("objects", d["objects"]),
            ("as checkpoint files", human_bytes(d["logical_bytes"])),
            ("stored", human_bytes(d["stored_bytes"])),
            ("saved", ratio),
        ]
        return table(("", "value"), rows, right=(1,))

    env.output.emit(data, render)


@click.command()
@pass_env
def verify(env: Env) -> None:
    """Check every object against its id (fsck); exit 1 if anything is damaged.

    Example: coral-ml verify
    """
    with user_errors(), env.output.counter("commits checked") as progress:
        report = env.repo().verify(progress)
    data = {
        "ok": report.ok,
        "objects_checked": report.objects_checked,
        "commits_checked": report.commits_checked,
        "tensors_checked": report.tensors_checked,
        "problems": [dataclasses.asdict(p) for p in report.problems],
        "affected_commits": report.affected_commits,
    }

    def render(d: dict[str, Any]) -> str:
        head = (
            f"{d['objects_checked']} objects, {d['commits_checked']} commits, "
            f"{d['tensors_checked']} tensors checked"
        )
        if d["ok"]:
            return f"{head}: all sound"
        lines = [f"{head}: {len(d['problems'])} problem(s)"]
        for problem in d["problems"]:
            lines.append(f"  {problem['object_id'][:12]}: {problem['message']}")
            lines += [f"    used by {user}" for user in problem["used_by"][:5]]
        return "\n".join(lines)

    env.output.emit(data, render)
    if not report.ok:
        raise SystemExit(USER_ERROR)


@click.command()
@click.option("--dry-run", is_flag=True, help="Show what would be deleted.")
@click.option(
    "--remote",
    metavar="NAME",
    help="Collect on this remote instead (safe while others push: pushes wait for it).",
)
@pass_env
def gc(env: Env, dry_run: bool, remote: str | None) -> None:
    """Delete objects no branch, tag, run pointer, pin, HEAD or staged tensor
    uses, and the weights of pruned checkpoints.

    Example: coral-ml gc --dry-run; coral-ml gc --remote origin
    """
    with user_errors(), env.output.counter("objects deleted") as progress:
        result = env.repo().gc(dry_run=dry_run, progress=progress, remote=remote)
    verb = "would remove" if dry_run else "removed"
    env.output.emit(
        dataclasses.asdict(result),
        lambda d: (
            f"{verb} {d['removed_objects']} objects ({human_bytes(d['freed_bytes'])}), "
            f"kept {d['kept_objects']}"
        ),
    )


@click.command()
@click.option(
    "--max-chain-length",
    type=click.IntRange(min=1, max=MAX_CHAIN_LENGTH),
    help="A new bound on chains.",
)
@pass_env
def repack(env: Env, max_chain_length: int | None) -> None:
    """Re-choose every chunk's delta base along history (and bound chains anew).

    Example: coral-ml repack --max-chain-length 4
    """
    _repack(env, max_chain_length, "commits repacked")


@click.command()
@pass_env
def deduplicate(env: Env) -> None:
    """Deduplicate by hand: every commit stores an identical tensor once and
    a near-identical one as a delta already; this goes over the whole history
    again (``repack``), storing each chunk as the smallest of a delta against
    the same chunk of its parent commit, byte planes and raw bytes.

    Example: coral-ml deduplicate
    """
    _repack(env, None, "commits deduplicated")


def _repack(env: Env, max_chain_length: int | None, counting: str) -> None:
    with user_errors(), env.output.counter(counting) as progress:
        result = env.repo().repack(max_chain_length, progress)
    env.output.emit(
        dataclasses.asdict(result),
        lambda d: (
            f"rewrote {d['chunks_rewritten']} chunks: "
            f"{human_bytes(d['bytes_before'])} -> {human_bytes(d['bytes_after'])}"
        ),
    )


COMMANDS = [init, status, config, stats, verify, gc, repack, deduplicate]
