"""``flywheel build MODEL``: a model's image built on this machine with buildah, as the cluster would.

The same Dockerfile, the same tag (the environment hash) and the same skip
as the cluster's BuildKit builds: the image is built only when the registry
(or, without ``--push``, buildah's storage) does not have the tag yet. The
Environment's ``images`` say where the image goes; by default the one the
model trains in (its first stage's), else ``--env``.
"""

from __future__ import annotations

from pathlib import Path

import click

from controller.backends.images import ImageError, ImageRequest
from controller.backends.pipelines import environment_hash
from controller.backends.python_env import PythonEnvironment
from controller.specs import Catalog, load_tree


def image_request(catalog: Catalog, root: Path, model_name: str, env_name: str | None) -> ImageRequest:
    """The image request for ``model_name`` in the working tree at ``root``; :class:`ImageError` if none."""
    from controller.engine.training import pipeline_environment

    model = catalog.models.get(model_name)
    if model is None:
        errors = [str(e) for e in catalog.errors if model_name in str(e)]
        detail = f": {errors[0]}" if errors else f" (models: {', '.join(sorted(catalog.models)) or 'none'})"
        raise ImageError(f"no valid model {model_name!r} in {root}{detail}")
    if env_name is not None:
        environment = catalog.environments.get(env_name)
        if environment is None:
            raise ImageError(f"no valid environment {env_name!r} in {root}")
    else:
        environment = pipeline_environment(model, catalog)
        if environment is None:
            raise ImageError(f"model {model_name}: none of its stages names an environment; pass --env")
    if environment.images is None:
        raise ImageError(
            f"environment {environment.name}: no images section (registry, repository, baseImage); "
            "pass --env naming a cluster environment"
        )
    source = root / model.source.path
    requirements_file = root / model.source.requirements
    try:
        requirements = requirements_file.read_text(encoding="utf-8")
    except OSError as error:
        raise ImageError(f"model {model_name}: requirements {requirements_file}: {error.strerror}") from None
    dockerfile = None
    if model.source.dockerfile is not None:
        dockerfile = (root / model.source.dockerfile).relative_to(source).as_posix()
    python = model.source.python
    return ImageRequest(
        model=model.name,
        environment_hash=environment_hash(requirements=requirements, python=python),
        source_dir=source,
        python=PythonEnvironment(requirements=requirements, python=python),
        dockerfile=dockerfile,
        images=environment.images,
    )


@click.command()
@click.argument("model")
@click.option("--env", "env_name", default=None, help="The Environment whose images section to use.")
@click.option("--push", is_flag=True, help="Push the image to the registry after building it.")
@click.option(
    "--repo",
    type=click.Path(file_okay=False, exists=True, path_type=Path),
    default=Path("."),
    show_default=True,
    help="The repository's working tree.",
)
@click.option(
    "--auth-file",
    type=click.Path(dir_okay=False, exists=True, path_type=Path),
    default=None,
    help="A docker config (dockerconfigjson) with the registry's credentials.",
)
def build(model: str, env_name: str | None, push: bool, repo: Path, auth_file: Path | None) -> None:
    """Build MODEL's image with buildah unless the registry already has its tag."""
    from controller.backends.images.buildah import BuildahImages

    try:
        request = image_request(load_tree(repo), repo, model, env_name)
        builder = BuildahImages(push=push, auth_file=auth_file)
        try:
            built = builder.ensure(request)
        finally:
            builder.close()
    except ImageError as error:
        raise click.ClickException(str(error)) from None
    if built.built:
        click.echo(f"built {built.pinned}" + ("" if push else " (not pushed)"))
    else:
        click.echo(f"up to date: {built.pinned}")
