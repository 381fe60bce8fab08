"""``publish``: a commit as a registered MLflow model version or a Hugging Face Hub revision."""

from __future__ import annotations

import dataclasses
from typing import Any

import click

from coral_cli.main import Env, pass_env
from coral_cli.output import user_errors
from coral_cli.plugins import cli_plugin


@click.command()
@click.argument("ref", default="HEAD")
@click.option("--to", "target", type=click.Choice(["mlflow", "hf"]), required=True)
@click.option("--name", help="mlflow: the registered model's name.")
@click.option("--tracking-uri", help="mlflow: where runs and models live (default: MLflow's own).")
@click.option("--artifact-location", help="mlflow: artifact folder for a new experiment.")
@click.option("--experiment", default="coral", show_default=True, help="mlflow: the experiment.")
@click.option("--repo-id", help="hf: the Hub model repo (org/name).")
@click.option("--revision", default="main", show_default=True, help="hf: the branch to commit to.")
@click.option("--endpoint", help="hf: a Hub other than huggingface.co.")
@click.option("--token", envvar="HF_TOKEN", help="hf: access token (default: HF_TOKEN).")
@pass_env
def publish(env: Env, /, ref: str, target: str, **options: Any) -> None:
    """Publish a commit as an MLflow model version or a Hub revision.

    MLflow gets the tensors as safetensors, tagged with the commit id, parents,
    tags and metrics; the Hub gets safetensors, the commit's config and
    tokenizer files, and a model card with the lineage.

    Example: coral-ml publish v1.0 --to mlflow --name bert-tiny --tracking-uri sqlite:///mlflow.db
    """
    with user_errors():
        repo = env.repo()
        if target == "mlflow":
            from coral_core.mlflow_registry import publish_to_mlflow

            if not options["name"]:
                raise click.UsageError("--to mlflow needs --name")
            version = publish_to_mlflow(
                repo,
                options["name"],
                ref,
                tracking_uri=options["tracking_uri"],
                artifact_location=options["artifact_location"],
                experiment=options["experiment"],
            )
            env.output.emit(
                {"to": "mlflow", **dataclasses.asdict(version)},
                lambda d: f"registered {d['name']} version {d['version']} ({d['commit'][:12]})",
            )
            return
        if not options["repo_id"]:
            raise click.UsageError("--to hf needs --repo-id")
        published = cli_plugin("hub").publish_to_hub(
            repo,
            ref,
            options["repo_id"],
            revision=options["revision"],
            token=options["token"],
            endpoint=options["endpoint"],
        )
    env.output.emit(
        {"to": "hf", **dataclasses.asdict(published)},
        lambda d: f"published {d['commit'][:12]} to {d['repo_id']}@{d['revision']}",
    )


COMMANDS = [publish]
