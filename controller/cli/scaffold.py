"""``flywheel init DIR``: scaffold a new GitOps repository."""

from __future__ import annotations

from pathlib import Path

import click

from controller.scaffold import EXAMPLES, HOMES, Home, ScaffoldError, scaffold


@click.command()
@click.argument("directory", type=click.Path(file_okay=False, path_type=Path))
@click.option("--no-git", is_flag=True, help="Write the files only; do not make a git repository.")
@click.option("--branch", default="main", show_default=True, help="Name of the release branch.")
@click.option(
    "--home",
    type=click.Choice(HOMES),
    default="embedded",
    show_default=True,
    help="Where the environments train and serve: this machine, or a Kubernetes cluster (Argo Workflows).",
)
@click.option(
    "--example",
    "examples",
    multiple=True,
    type=click.Choice(EXAMPLES),
    help="Add another example model beside iris (repeatable).",
)
def init(directory: Path, no_git: bool, branch: str, home: Home, examples: tuple[str, ...]) -> None:
    """Scaffold a new Flywheel repository in DIRECTORY.

    One example model (more with --example), a policy with an approval rule for production, staging
    and production environments, and a .gitignore for Flywheel's state. With
    --home cluster the environments run pipelines on Argo Workflows: replace
    their placeholders (Argo Server, namespace, token variable, registry).
    """
    try:
        written = scaffold(directory, git=not no_git, branch=branch, home=home, examples=examples)
    except ScaffoldError as exc:
        raise click.ClickException(str(exc)) from exc
    where = "" if no_git else f" (git, branch {branch})"
    click.echo(f"Created {len(written)} files in {directory}{where}")
    if home == "cluster":
        click.echo("Replace the placeholders in environments/*.yaml with your cluster's addresses")
    click.echo(f"Next: cd {directory} && flywheel validate")
