"""``flywheel validate`` and ``flywheel schema``: the spec language on the command line.

``validate`` is what pre-commit hooks and CI run; ``schema`` writes the JSON
Schemas for editors. Both parse arguments and call one library function in
:mod:`controller.specs`.
"""

from __future__ import annotations

import json
from pathlib import Path

import click

from controller.specs import SpecError, schemas
from controller.specs.tree import PathsReport, validate_paths

_SCHEMA_FILES = {"model": "Model", "policy": "Policy", "environment": "Environment"}


@click.command()
@click.argument("paths", nargs=-1, type=click.Path(exists=True, path_type=Path))
@click.option(
    "--format",
    "output_format",
    type=click.Choice(["text", "json", "github"]),
    default="text",
    show_default=True,
    help="text for people, json for tools, github for workflow annotations.",
)
def validate(paths: tuple[Path, ...], output_format: str) -> None:
    """Check spec files: each PATH is a repository root (default .) or a spec file.

    A file is checked together with the rest of its repository, and only its
    own errors are reported. Exits 0 when everything is valid, 1 when a spec
    has an error.
    """
    report = validate_paths(paths or (Path("."),))
    for root in report.empty_roots:
        click.echo(f"warning: no spec files under {root}", err=True)
    if output_format == "json":
        click.echo(json.dumps(_as_json(report), indent=2))
    else:
        for error in report.errors:
            click.echo(_github(error) if output_format == "github" else str(error))
        if report.errors:
            failed = len({e.location.file for e in report.errors})
            n = len(report.errors)
            click.echo(f"{n} error{'s' if n != 1 else ''} in {failed} file{'s' if failed != 1 else ''}")
        else:
            click.echo(f"ok: {report.summary()}")
    raise SystemExit(1 if report.errors else 0)


def _as_json(report: PathsReport) -> dict[str, object]:
    return {
        "ok": not report.errors,
        "models": report.models,
        "policies": report.policies,
        "environments": report.environments,
        "errors": [
            {
                "file": e.location.file,
                "line": e.location.line,
                "column": e.location.column,
                "path": e.path,
                "message": e.message,
                "kind": e.kind,
                "name": e.name,
            }
            for e in report.errors
        ],
    }


def _escape(text: str, *, prop: bool = False) -> str:
    text = text.replace("%", "%25").replace("\r", "%0D").replace("\n", "%0A")
    if prop:
        text = text.replace(":", "%3A").replace(",", "%2C")
    return text


def _github(error: SpecError) -> str:
    """A GitHub Actions ``::error`` workflow command for one error."""
    where = [f"file={_escape(error.location.file, prop=True)}"]
    if error.location.line:
        where += [f"line={error.location.line}", f"col={error.location.column}"]
    where.append("title=flywheel")
    text = f"{error.path}: {error.message}" if error.path else error.message
    return f"::error {','.join(where)}::{_escape(text)}"


@click.command()
@click.option(
    "--out",
    type=click.Path(file_okay=False, path_type=Path),
    help="Directory to write model/policy/environment.schema.json into.",
)
@click.argument("kind", required=False, type=click.Choice(sorted(_SCHEMA_FILES)))
def schema(out: Path | None, kind: str | None) -> None:
    """Write the JSON Schemas of the spec language for editors (or print one KIND)."""
    documents = schemas()
    chosen = [kind] if kind else sorted(_SCHEMA_FILES)
    if out is None:
        if kind is None:
            raise click.UsageError("give --out DIR, or a KIND to print")
        click.echo(json.dumps(documents[_SCHEMA_FILES[kind]], indent=2))
        return
    out.mkdir(parents=True, exist_ok=True)
    for name in chosen:
        target = out / f"{name}.schema.json"
        target.write_text(json.dumps(documents[_SCHEMA_FILES[name]], indent=2) + "\n", encoding="utf-8")
        click.echo(f"wrote {target}")
