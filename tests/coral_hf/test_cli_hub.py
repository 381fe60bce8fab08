"""coral-ml publish --to hf and coral-ml import hf://, against the local Hub server."""

from __future__ import annotations

import json
from pathlib import Path

from click.testing import CliRunner

from coral_cli.main import cli
from coral_core import Repository
from coral_hf import save_pretrained

from .hub_server import LocalHub
from .tiny import masked_lm


def test_publish_then_import_through_the_cli(tmp_path: Path, hub: LocalHub) -> None:
    repo = Repository(tmp_path / "repo", init=True)
    made = save_pretrained(masked_lm(), repo, "tiny masked LM")
    runner = CliRunner()
    base = ["--json", "-C", str(repo.path)]
    published = runner.invoke(
        cli,
        [
            *base,
            "publish",
            "HEAD",
            "--to",
            "hf",
            "--repo-id",
            "org/tiny",
            "--endpoint",
            hub.endpoint,
        ],
        env={"HF_TOKEN": "hf_test"},
        catch_exceptions=False,
    )
    assert published.exit_code == 0, published.output
    assert json.loads(published.stdout)["commit"] == made.commit_hash
    assert "model.safetensors" in hub.repos["org/tiny"].resolve("main").files  # type: ignore[union-attr]
    other = Repository(tmp_path / "other", init=True)
    imported = runner.invoke(
        cli,
        [
            "--json",
            "-C",
            str(other.path),
            "import",
            "hf://org/tiny@main",
            "--endpoint",
            hub.endpoint,
        ],
        env={"HF_HOME": str(tmp_path / "hf-home")},
        catch_exceptions=False,
    )
    assert imported.exit_code == 0, imported.output
    assert set(other.ls_tree()) == set(repo.ls_tree())
    missing = runner.invoke(cli, [*base, "publish", "--to", "hf"])
    assert missing.exit_code == 2
