"""``flywheel manifests``: every object the cluster home would create for a commit, as YAML, offline.

For each model (``--model``) whose pipeline runs on Argo Workflows (the
environment its first stage names, or ``--env``), it writes what the argo
runner would send for a proposal at that commit: the image build (the
ConfigMap holding the build context and the BuildKit Job) and the Workflow,
both rendered by the functions the runner and the image builder use
(:func:`~controller.backends.pipelines.argo_workflow.render_workflow`,
:meth:`~controller.backends.images.buildkit.BuildKitImages.manifests`); and
for each of its stages served by KServe, the InferenceService the kserve
backend would apply for a first version there
(:func:`~controller.backends.serving.kserve_spec.inference_service`), the
version named like the run. No
cluster, registry or Argo Server is contacted, so the Workflow names its
image by tag (the runner pins the digest the registry answers) and takes the
run's id from its cache key (the controller uses the run's number): the same
inputs render the same files, which is what a GitOps diff wants.

Files go to ``OUT/<model>/<environment>/<Kind>-<name>.yaml``; each path is
printed. A model that trains on one machine and is served by no KServe stage
is listed as skipped.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import click
import yaml

from controller.backends import data as data_inputs
from controller.backends.git import GitError, Repository
from controller.backends.images import ImageError
from controller.backends.local.venvs import VenvBuildError
from controller.backends.pipelines import RunRequest
from controller.specs.types import Catalog, Environment, Model


@click.command()
@click.option(
    "--repo",
    default=".",
    show_default=True,
    help="The git repository whose commit to render (a path).",
)
@click.option("--ref", default="HEAD", show_default=True, help="The commit, branch or tag to render.")
@click.option("--model", "model_name", default=None, help="Only this model (default: every model).")
@click.option(
    "--env", "env_name", default=None, help="Render for this Environment (default: where each model trains)."
)
@click.option(
    "--repository-url",
    default=None,
    help="Where the step pods check the code out (default: the repository's origin remote, else --repo).",
)
@click.option(
    "--out",
    required=True,
    type=click.Path(file_okay=False, path_type=Path),
    help="The directory to write the YAML files into.",
)
def manifests(
    repo: str, ref: str, model_name: str | None, env_name: str | None, repository_url: str | None, out: Path
) -> None:
    """Write the Workflow and image build of each model at REF as YAML, without contacting any cluster."""
    with tempfile.TemporaryDirectory(prefix="flywheel-manifests-") as scratch:
        try:
            repository = Repository.open(repo, mirror_root=Path(scratch) / "mirrors")
            commit = repository.resolve(ref)
            catalog = repository.catalog(commit)
            written = _render_all(
                repository,
                commit,
                catalog,
                model_name=model_name,
                env_name=env_name,
                url=repository_url or repository.remote_url() or str(Path(repo).resolve()),
                out=out,
                scratch=Path(scratch),
            )
        except (GitError, ImageError, VenvBuildError, data_inputs.DataError, OSError) as error:
            raise click.ClickException(str(error)) from None
    if not written:
        raise click.ClickException(
            f"nothing to render at {commit[:10]}: no model trains on an Argo environment or is served by "
            "KServe (give one a stage whose environment has pipeline.runner: argo or serving.backend: "
            "kserve, or pass --env)"
        )


def _render_all(
    repository: Repository,
    commit: str,
    catalog: Catalog,
    *,
    model_name: str | None,
    env_name: str | None,
    url: str,
    out: Path,
    scratch: Path,
) -> list[Path]:
    from controller.engine.training import pipeline_environment

    if model_name is not None and model_name not in catalog.models:
        errors = [str(e) for e in catalog.errors if model_name in str(e)]
        detail = f": {errors[0]}" if errors else f" (models: {', '.join(sorted(catalog.models)) or 'none'})"
        raise GitError(f"no valid model {model_name!r} at {commit[:10]}{detail}")
    chosen: Environment | None = None
    if env_name is not None:
        chosen = catalog.environments.get(env_name)
        if chosen is None:
            raise GitError(f"no valid environment {env_name!r} at {commit[:10]}")
    for error in catalog.errors:
        click.echo(f"skipped: {error}", err=True)
    written: list[Path] = []
    for name in [model_name] if model_name is not None else sorted(catalog.models):
        model = catalog.models[name]
        environment = chosen or pipeline_environment(model, catalog)
        objects: list[tuple[str, dict[str, Any]]] = []
        run_id, image = f"preview-{commit[:12]}", None
        if environment is not None and environment.runner == "argo" and environment.images is not None:
            run_id, image, built = _objects(
                repository, commit, model, environment, url=url, scratch=scratch / name
            )
            objects += [(environment.name, obj) for obj in built]
        objects += _served(model, catalog, chosen, version=run_id, image=image)
        if not objects:
            where = f"environment {environment.name}" if environment is not None else "no environment"
            click.echo(
                f"skipped {name}: it trains on one machine ({where}) and no stage serves it on KServe",
                err=True,
            )
            continue
        for env_name_of, obj in objects:
            path = out / name / env_name_of / f"{obj['kind']}-{obj['metadata']['name']}.yaml"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(yaml.safe_dump(obj, sort_keys=False), encoding="utf-8")
            click.echo(str(path))
            written.append(path)
    return written


def _served(
    model: Model, catalog: Catalog, chosen: Environment | None, *, version: str, image: str | None
) -> list[tuple[str, dict[str, Any]]]:
    """The InferenceService of each stage served by KServe, as the first version there would be deployed."""
    from controller.backends.serving import ServedVersion, ServingError
    from controller.backends.serving.kserve_spec import inference_service, predictor, storage_uri

    objects = []
    for stage in model.rollout.stages:
        environment = catalog.environments.get(stage.environment)
        if environment is None or environment.serving_backend != "kserve":
            continue
        if chosen is not None and environment.name != chosen.name:
            continue
        served = ServedVersion(model=model.name, version=version, serving=model.serving, artifact_uri="")
        try:
            body = predictor(
                served,
                uri=storage_uri(environment, model.name, version),
                image=image,
                service_account=environment.serving_service_account,
            )
        except ServingError as error:
            click.echo(f"skipped {model.name} in {environment.name}: {error}", err=True)
            continue
        objects.append(
            (
                environment.name,
                inference_service(environment=environment, version=served, spec_predictor=body),
            )
        )
    return objects


def _objects(
    repository: Repository, commit: str, model: Model, environment: Environment, *, url: str, scratch: Path
) -> tuple[str, str, list[dict[str, Any]]]:
    """(run id, image, [the image build's ConfigMap and Job, then the Workflow]) of one run at ``commit``."""
    from controller.backends.images.buildkit import BuildKitImages
    from controller.backends.pipelines.argo_workflow import image_request, render_workflow, workflow_inputs
    from controller.clock import SYSTEM_CLOCK
    from controller.engine.training import read_run_inputs

    source_dir = scratch / "src"
    repository.export_tree(commit, model.source.path, source_dir)
    cache_key = read_run_inputs(repository, commit, model, work_dir=scratch).cache_key
    data = {}
    for item in model.data:
        path = data_inputs.local_path(item, base=source_dir)
        data[item.name] = str(path) if path is not None else item.uri
    request = RunRequest(
        run_id=f"preview-{cache_key[:12]}",
        model=model,
        source_dir=source_dir,
        run_dir=scratch / "run",
        params=dict(model.params),
        data=data,
        max_parallel=environment.max_parallel,
        environment=environment,
        cache_key=cache_key,
        commit=commit,
    )
    wanted = image_request(request, environment)
    builder = BuildKitImages(
        api=None,
        namespace=environment.pipeline_namespace or "default",
        clock=SYSTEM_CLOCK,
        logs_dir=scratch / "logs",
    )
    try:
        build = builder.manifests(wanted)
    finally:
        builder.close()
    workflow = render_workflow(workflow_inputs(request, environment, image=wanted.reference, repository=url))
    return request.run_id, wanted.reference, [*build, workflow]
