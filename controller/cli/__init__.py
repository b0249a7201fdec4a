"""The ``flywheel`` command line.

Each command lives in its own module under ``controller.cli`` and is loaded
only when it is run, so ``flywheel validate`` does not pay for the imports of
``flywheel run``. Commands parse arguments and call one library function.
"""

from __future__ import annotations

import importlib

import click

from controller import __version__

# command name -> "module:attribute"; each attribute is a click.Command.
_COMMANDS: dict[str, str] = {
    "validate": "controller.cli.specs:validate",
    "schema": "controller.cli.specs:schema",
    "init": "controller.cli.scaffold:init",
    "run": "controller.cli.run:run",
    "review": "controller.cli.review:review",
    "cache": "controller.cli.cache:cache",
    "models": "controller.cli.status:models",
    "status": "controller.cli.status:status",
    "versions": "controller.cli.registry:versions",
    "history": "controller.cli.registry:history",
    "audit": "controller.cli.registry:audit",
    "approve": "controller.cli.rollouts:approve",
    "reject": "controller.cli.rollouts:reject",
    "promote": "controller.cli.rollouts:promote",
    "pause": "controller.cli.rollouts:pause",
    "resume": "controller.cli.rollouts:resume",
    "abort": "controller.cli.rollouts:abort",
    "rollback": "controller.cli.rollouts:rollback",
    "demo": "controller.cli.demo:demo",
    "serve": "controller.cli.serve:serve",
    "serving": "controller.cli.serving:serving",
    "state": "controller.cli.state:state",
    "build": "controller.cli.build:build",
    "manifests": "controller.cli.manifests:manifests",
    "drift": "controller.cli.drift:drift",
    "triggers": "controller.cli.triggers:triggers",
    "ui": "controller.cli.ui:ui",
}


class _LazyGroup(click.Group):
    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(_COMMANDS)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        target = _COMMANDS.get(cmd_name)
        if target is None:
            return None
        module_name, attribute = target.split(":")
        command = getattr(importlib.import_module(module_name), attribute)
        assert isinstance(command, click.Command)
        return command


@click.group(cls=_LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="flywheel")
def main() -> None:
    """Flywheel: GitOps continuous training for ML models."""
