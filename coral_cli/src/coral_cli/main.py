"""``coral-ml``: git for neural-network weights, on the command line.

Every command calls the same :class:`coral_core.Repository` methods as the
Python API; none writes an object itself. Framework formats (``.pt``,
``.keras``) come in through the ``coral.formats`` plugins, so nothing here
imports torch or TensorFlow until a file needs them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import click

from coral_cli import __version__
from coral_cli.output import Output
from coral_core import RepoConfig, Repository, RepositoryNotFoundError, find_repository
from coral_core.repository import CORAL_DIR


@dataclass
class Env:
    """What every command gets: how to print, and where the repository is."""

    output: Output
    repo_dir: Path | None = None
    _repo: Repository | None = field(default=None, repr=False)

    def repo(self) -> Repository:
        """The repository (``--repo``, else found from the current folder upwards)."""
        if self._repo is None:
            self._repo = Repository(self.folder())
        return self._repo

    def folder(self) -> Path:
        """The repository's folder, without opening it: ``-C``'s folder or the
        current one, or the nearest above it holding ``.coral`` (as git)."""
        return find_repository(self.repo_dir if self.repo_dir is not None else Path.cwd())

    def config(self) -> RepoConfig:
        """The repository's settings, read without opening the repository: a
        setting that keeps it from opening can still be repaired."""
        path = self.folder() / CORAL_DIR / "config"
        if not path.is_file():
            raise RepositoryNotFoundError(f"no Coral repository at {path.parent.parent}")
        return RepoConfig.load(path)


pass_env = click.make_pass_decorator(Env)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="coral-ml")
@click.option(
    "-C",
    "--repo",
    "repo_dir",
    type=click.Path(file_okay=False, path_type=Path),
    envvar="CORAL_REPO",
    help="The repository's folder (default: found from the current folder upwards).",
)
@click.option("--json", "as_json", is_flag=True, help="Print JSON for scripts.")
@click.option("-q", "--quiet", is_flag=True, help="Print nothing but errors.")
@click.pass_context
def cli(ctx: click.Context, repo_dir: Path | None, as_json: bool, quiet: bool) -> None:
    """Coral: git for neural-network weights.

    \b
    Quick start:
      coral-ml init
      coral-ml add model.safetensors
      coral-ml commit -m "first version" --metric val_accuracy=0.91
      coral-ml log
    """
    ctx.obj = Env(Output(json=as_json, quiet=quiet), repo_dir)


def _register() -> None:
    from coral_cli import (
        cmd_experiment,
        cmd_history,
        cmd_publish,
        cmd_refs,
        cmd_remote,
        cmd_repo,
        cmd_weights,
    )

    modules = (
        cmd_repo,
        cmd_weights,
        cmd_history,
        cmd_refs,
        cmd_remote,
        cmd_experiment,
        cmd_publish,
    )
    for module in modules:
        for command in module.COMMANDS:
            accept_global_options(command)
            cli.add_command(command)


def _set_json(ctx: click.Context, param: click.Parameter, value: bool) -> None:
    if value:
        ctx.find_object(Env).output.json = True  # type: ignore[union-attr]


def _set_quiet(ctx: click.Context, param: click.Parameter, value: bool) -> None:
    if value:
        ctx.find_object(Env).output.quiet = True  # type: ignore[union-attr]


def _set_repo(ctx: click.Context, param: click.Parameter, value: Path | None) -> None:
    if value is not None:
        ctx.find_object(Env).repo_dir = value  # type: ignore[union-attr]


def accept_global_options(command: click.Command) -> None:
    """Let ``--json``, ``-q`` and ``-C`` come after the command too, where git,
    gh and hf users put them (``coral-ml log --json``, ``coral-ml log -C dir``)."""
    if isinstance(command, click.Group):
        for sub in command.commands.values():
            accept_global_options(sub)
        return
    command.params += [
        click.Option(
            ["--json"],
            is_flag=True,
            expose_value=False,
            callback=_set_json,
            help="Print JSON for scripts.",
        ),
        click.Option(
            ["-q", "--quiet"],
            is_flag=True,
            expose_value=False,
            callback=_set_quiet,
            help="Print nothing but errors.",
        ),
        click.Option(
            ["-C", "--repo"],
            type=click.Path(file_okay=False, path_type=Path),
            expose_value=False,
            callback=_set_repo,
            help="The repository's folder.",
        ),
    ]


_register()


def main() -> None:
    """The ``coral-ml`` entry point."""
    cli(prog_name="coral-ml", auto_envvar_prefix=None, windows_expand_args=False)


if __name__ == "__main__":
    main()
