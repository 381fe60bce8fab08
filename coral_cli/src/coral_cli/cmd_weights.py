"""Weights commands: add, commit, show, ls-tree, export, import, rm, reset."""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import click
import numpy as np

from coral_cli.main import Env, pass_env
from coral_cli.output import Output, human_bytes, table, user_errors
from coral_cli.parsing import metric_pairs
from coral_cli.plugins import cli_plugin
from coral_cli.views import (
    commit_data,
    pointers_by_commit,
    tags_by_commit,
    tree_data,
    weights_marker,
    when,
)
from coral_core import (
    Commit,
    CoralError,
    RefNotFoundError,
    Repository,
    TensorMismatchError,
    TensorNotFoundError,
    format_for,
)
from coral_core.exports import exporter_for, with_aliases
from coral_core.files import confined_path
from coral_core.formats import regular_file

metric_option = click.option(
    "--metric", "metrics", multiple=True, metavar="KEY=VALUE", help="A metric (repeatable)."
)


def read_model_files(paths: Sequence[Path], prefix: str, output: Output) -> dict[str, np.ndarray]:
    """Every tensor of ``paths`` by name (each format's plugin reads its files).

    Raises:
        TensorMismatchError: when two files hold a tensor of the same name.
    """
    arrays: dict[str, np.ndarray] = {}
    source: dict[str, Path] = {}
    for path in output.progress(list(paths), "reading"):
        regular_file(path)  # a FIFO would block the read forever
        for name, array in format_for(path).read(path).items():
            full = f"{prefix}{name}"
            if full in arrays:
                raise TensorMismatchError(
                    f"tensor {full!r} is in both {source[full]} and {path}; add them one at "
                    "a time or give --prefix"
                )
            arrays[full], source[full] = array, path
    return arrays


def model_files(paths: Sequence[Path]) -> list[Path]:
    """Files as given; a folder stands for the model files directly inside it, by name."""
    found = []
    for path in paths:
        if path.is_dir():
            found += sorted(p for p in path.iterdir() if p.is_file() and not p.name.startswith("."))
        else:
            found.append(path)
    return found


@click.command()
@click.argument("files", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--prefix", default="", help="Put this before every tensor name ('encoder.').")
@pass_env
def add(env: Env, files: tuple[Path, ...], prefix: str) -> None:
    """Stage the tensors of model files for the next commit.

    .safetensors, .npz and .npy are read natively (memory-mapped); .pt/.pth/.bin
    need coral-torch, .keras/.h5 coral-tf.

    Example: coral-ml add model.safetensors
    """
    with user_errors():
        repo = env.repo()
        arrays = read_model_files(files, prefix, env.output)
        staged = repo.stage_weights(arrays)
    env.output.emit(
        {"staged": staged},
        lambda d: f"staged {len(d['staged'])} tensors from {len(files)} file(s)",
    )


@click.command()
@click.option("-m", "--message", required=True, help="What this version is.")
@click.option("--author", help="Who made it (default: user.name, then the login).")
@metric_option
@click.option("--allow-empty", is_flag=True, help="Commit even when nothing is staged.")
@pass_env
def commit(
    env: Env, message: str, author: str | None, metrics: tuple[str, ...], allow_empty: bool
) -> None:
    """Record what is staged as a new commit.

    Example: coral-ml commit -m "fine-tuned" --metric val_accuracy=0.93
    """
    values = metric_pairs(metrics)
    with user_errors():
        made = env.repo().commit(message, author=author, metrics=values, allow_empty=allow_empty)
    env.output.emit(
        commit_data(made, {}),
        lambda d: f"[{made.short_hash}] {message}",
    )


@click.command()
@click.argument("ref", default="HEAD")
@click.option(
    "-c",
    "--commit",
    "commit_ref",
    metavar="COMMIT",
    help="Show the weight named REF in COMMIT instead (the book's `show <weight> -c COMMIT`).",
)
@pass_env
def show(env: Env, ref: str, commit_ref: str | None) -> None:
    """A commit's details: message, metrics, tags, tensor count and size; or,
    for a weight's name (of HEAD, or of ``-c COMMIT``), that weight's.

    Example: coral-ml show v1.0; coral-ml show encoder.weight -c HEAD~1
    """
    with user_errors():
        repo = env.repo()
        if commit_ref is not None or not _names_commit(repo, ref):
            show_weight(env, repo, ref, commit_ref or "HEAD")
            return
        found = repo.show(ref)
        weights = repo.weights_status(found.commit_hash)
        rows = tree_data(repo, found) if weights == "kept" else []
        data = commit_data(found, tags_by_commit(repo), weights, pointers_by_commit(repo))
    data.update(
        metadata=found.metadata.metadata,
        tensors=len(rows),
        bytes=sum(r["bytes"] for r in rows),
        new_stored_bytes=sum(r["stored_bytes"] for r in rows if r["storage"] != "dedup"),
    )

    def render(d: dict[str, Any]) -> str:
        lines = [
            f"commit {d['commit']}",
            f"Author: {d['author']}",
            f"Date:   {when(d['timestamp'])}",
        ]
        if d["parents"]:
            lines.append(f"Parents: {' '.join(p[:12] for p in d['parents'])}")
        if d["tags"]:
            lines.append(f"Tags:   {', '.join(d['tags'])}")
        if d["pointers"]:
            lines.append(f"Runs:   {', '.join(d['pointers'])}")
        lines += ["", f"    {d['message']}", ""]
        if d["metrics"]:
            lines.append("Metrics: " + ", ".join(f"{k}={v}" for k, v in d["metrics"].items()))
        if d["weights"] != "kept":
            lines.append(f"Tensors:{weights_marker(d['weights'])}")
        else:
            lines.append(
                f"Tensors: {d['tensors']} ({human_bytes(d['bytes'])}; "
                f"new in this commit: {human_bytes(d['new_stored_bytes'])} stored)"
            )
        if d["lossy"]:
            lines.append(
                f"Lossy: {d['lossy']['type']} (max error {d['lossy']['max_abs_error']:.3g})"
            )
        return "\n".join(lines)

    env.output.emit(data, render)


def _names_commit(repo: Repository, ref: str) -> bool:
    """Whether ``ref`` names a commit; else it may be a weight of HEAD."""
    try:
        repo.resolve(ref)
    except RefNotFoundError:
        with contextlib.suppress(CoralError):  # no HEAD commit, or its weights pruned
            if ref in repo.tree_at("HEAD"):
                return False
        raise
    return True


def show_weight(env: Env, repo: Repository, name: str, ref: str) -> None:
    """One weight of a commit: shape, dtype, size, stored size and how, its id."""
    found = repo.show(ref)
    rows = {row["name"]: row for row in tree_data(repo, found)}
    if name not in rows:
        raise TensorNotFoundError(
            f"commit {found.short_hash} has no weight {name!r}; `coral-ml ls-tree "
            f"{ref}` lists its weights"
        )
    data = {**rows[name], "commit": found.commit_hash}

    def render(d: dict[str, Any]) -> str:
        return table(
            ("weight", d["name"]),
            [
                ("commit", d["commit"][:12]),
                ("shape", "x".join(map(str, d["shape"])) or "scalar"),
                ("dtype", d["dtype"]),
                ("size", human_bytes(d["bytes"])),
                ("stored", human_bytes(d["stored_bytes"])),
                ("how", d["storage"]),
                ("tensor id", d["tensor"]),
            ],
        )

    env.output.emit(data, render)


@click.command("ls-tree")
@click.argument("ref", default="HEAD")
@pass_env
def ls_tree(env: Env, ref: str) -> None:
    """Every tensor of a commit: shape, dtype, size, stored size, how stored.

    Example: coral-ml ls-tree main~1
    """
    with user_errors():
        repo = env.repo()
        rows = tree_data(repo, repo.show(ref))

    def render(data: list[dict[str, Any]]) -> str:
        return table(
            ("name", "shape", "dtype", "size", "stored", "how"),
            [
                (
                    r["name"],
                    "x".join(map(str, r["shape"])) or "scalar",
                    r["dtype"],
                    human_bytes(r["bytes"]),
                    human_bytes(r["stored_bytes"]),
                    r["storage"],
                )
                for r in data
            ],
            right=(3, 4),
        )

    env.output.emit(rows, render)


@click.command()
@click.argument("ref")
@click.argument("path", type=click.Path(path_type=Path))
@pass_env
def export(env: Env, ref: str, path: Path) -> None:
    """Write a commit as files its framework loads, or its tensors to a model file.

    A commit a framework made goes out as that framework writes it: Keras'
    to .weights.h5 / .keras (load_weights, load_model; with coral-tf), a
    Hugging Face model's to a folder with its config and tokenizer files
    (from_pretrained; with coral-hf). Otherwise the file's suffix picks the
    format (.safetensors, .npz, .pt with coral-torch, ...), tied tensors under
    each of their names; a path without a suffix is a folder with one
    .safetensors file per model name the tensors carry (model.safetensors
    when they carry none). A format that cannot hold the commit is an error.

    Example: coral-ml export v1.0 model.safetensors
    """
    with user_errors():
        repo = env.repo()
        commit = repo.show(ref)
        exporter = exporter_for(commit, path)
        if exporter is not None:
            written = [str(file) for file in exporter.write(repo, commit, path)]
        else:
            written = [str(file) for file in write_tensors(repo, commit, path, env.output)]
    env.output.emit(
        {"commit": commit.commit_hash, "files": written},
        lambda d: "\n".join(f"wrote {f}" for f in d["files"]),
    )


def write_tensors(repo: Repository, commit: Commit, path: Path, output: Output) -> list[Path]:
    """A commit's tensors (tied ones under each name) in the format ``path``'s
    suffix names, or as one ``.safetensors`` file per model in folder ``path``."""
    groups: dict[str, dict[str, np.ndarray]] = {}
    for weight in repo.iter_weights(commit.commit_hash):
        groups.setdefault(weight.metadata.model_name or "model", {})[weight.name] = weight.data
    if path.suffix:
        everything = {n: a for group in groups.values() for n, a in group.items()}
        format_for(path).write(path, with_aliases(everything, commit))
        return [path]
    writer = format_for("x.safetensors")
    targets = {model: confined_path(path, f"{model}.safetensors") for model in groups}
    path.mkdir(parents=True, exist_ok=True)  # after every name from the commit was confined
    for model, arrays in output.progress(list(groups.items()), "exporting"):
        targets[model].parent.mkdir(parents=True, exist_ok=True)
        writer.write(targets[model], with_aliases(arrays, commit))
    return list(targets.values())


@click.command("import")
@click.argument("sources", nargs=-1, required=True)
@click.option("-m", "--message", default="import", help="Message prefix of each commit.")
@click.option("--branch", help="Commit onto this branch (created from HEAD if new).")
@click.option("--endpoint", envvar="HF_ENDPOINT", help="hf://: a Hub other than huggingface.co.")
@pass_env
def import_(
    env: Env, sources: tuple[str, ...], message: str, branch: str | None, endpoint: str | None
) -> None:
    """Commit each model file as a version of its own, in the order given.

    A folder stands for its model files, by name (a run's checkpoint-*.safetensors);
    hf://org/model@revision imports a Hugging Face Hub revision (needs coral-hf).

    Example: coral-ml import checkpoints/
    """
    with user_errors():
        repo = env.repo()
        made = []
        hub = [s for s in sources if s.startswith("hf://")]
        for source in hub:
            repo_id, _, revision = source.removeprefix("hf://").partition("@")
            made.append(
                cli_plugin("hub").import_from_hub(
                    repo,
                    repo_id,
                    revision or "main",
                    message=f"{message} {source}",
                    branch=branch,
                    endpoint=endpoint,
                )
            )
        files = model_files([Path(s) for s in sources if not s.startswith("hf://")])
        for path in env.output.progress(files, "importing"):
            regular_file(path)
            arrays = format_for(path).read(path)
            made.append(repo.commit(f"{message} {path.name}", weights=arrays, branch=branch))
    env.output.emit(
        [commit_data(c, {}) for c in made],
        lambda d: "\n".join(f"[{c['commit'][:12]}] {c['message']}" for c in d),
    )


@click.command()
@click.argument("names", nargs=-1, required=True)
@pass_env
def rm(env: Env, names: tuple[str, ...]) -> None:
    """Stage the removal of tensors from the next commit.

    Example: coral-ml rm classifier.weight classifier.bias
    """
    with user_errors():
        env.repo().remove_weights(list(names))
    env.output.emit({"removed": list(names)}, lambda d: f"staged removal of {len(names)} tensors")


@click.command()
@pass_env
def reset(env: Env) -> None:
    """Drop everything staged (stored objects stay until gc).

    Example: coral-ml reset
    """
    with user_errors():
        env.repo().reset()
    env.output.emit({"reset": True}, lambda d: "staging cleared")


COMMANDS = [add, commit, show, ls_tree, export, import_, rm, reset]
