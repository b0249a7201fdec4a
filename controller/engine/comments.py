"""Comment commands: ``/flywheel <command> [args]`` on GitHub issues and pull requests.

:func:`parse_commands` is pure: it finds every line of a comment that starts
with ``/flywheel`` (outside fenced code blocks) and checks the command and
its arguments. :func:`handle_comment` is called by the inbox consumer
(:mod:`controller.engine.github_events`) for each new comment: it
acknowledges the comment at once with a reaction, runs each command and
queues one reply with the results, all through the outbox (a
:class:`CommentReplies`: the GitHub forge). Each command runs once, there and
then: ``retrain`` starts the run itself (a :data:`Retrain`, the proposal
reconciler's), and the reply says which run it started or why none.

Rights always come from the policy on main (Invariant 1), never from the pull
request the comment is on: approve, reject and the rollout controls go
through :class:`~controller.engine.commands.Commands`, which checks and
audits them; ``help``, ``status``, ``retrain`` and ``ok-to-test`` are checked
with :func:`~controller.engine.approvals.may_run` here and audited here, so
every command, allowed or refused, is in the audit log (Invariant 6).
``ok-to-test`` covers only the head commit the pull request has when it is
recorded (:mod:`controller.engine.trust`, Invariant 2).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol, cast

from controller.backends.store import (
    AuditEntry,
    JSONObject,
    ModelVersion,
    PullRequest,
    PullRequestRecords,
    RolloutRecord,
    Run,
    RunStatus,
)
from controller.engine.approvals import may_run, resolve_user
from controller.engine.commands import CONTROL_COMMANDS, Actor, CommandOutcome, Commands
from controller.engine.commands import main_policy as _main_policy
from controller.engine.trust import TrustGate, record_ok_to_test
from controller.specs.types import Catalog, Policy

__all__ = [
    "COMMANDS",
    "HELP",
    "CommandResult",
    "CommentOutcome",
    "CommentRecords",
    "CommentReplies",
    "ParsedCommand",
    "Retrain",
    "handle_comment",
    "parse_commands",
]

log = logging.getLogger("flywheel.comments")

PREFIX = "/flywheel"
MAX_COMMANDS = 10  # per comment; the rest are ignored

_NAME = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?")
_SHA = re.compile(r"[0-9a-f]{7,40}")
_FENCE = re.compile(r"\s*(```|~~~)")

# command -> (argument names, each optional)
COMMANDS: dict[str, tuple[str, ...]] = {
    "help": (),
    "status": ("MODEL",),
    "retrain": ("MODEL",),
    "approve": ("MODEL", "ENV"),
    "reject": ("MODEL", "ENV"),
    **{command: ("MODEL",) for command in CONTROL_COMMANDS},
    "ok-to-test": ("SHA",),
}

HELP = """Flywheel commands (one per line, at the start of the line):

| command | what it does |
|---|---|
| `/flywheel help` | this text |
| `/flywheel status [MODEL]` | the model's rollout and latest run |
| `/flywheel retrain [MODEL]` | train the model again |
| `/flywheel approve [MODEL] [ENV]` | approve the version awaiting approval (for ENV) |
| `/flywheel reject [MODEL] [ENV]` | reject it |
| `/flywheel promote [MODEL]` | skip the rest of the current canary step |
| `/flywheel pause [MODEL]` / `resume [MODEL]` | hold or continue the rollout |
| `/flywheel abort [MODEL]` | stop the rollout and go back |
| `/flywheel rollback [MODEL]` | go back to the previous version |
| `/flywheel ok-to-test [SHA]` | let this pull request's head commit run |

MODEL may be left out when the pull request changes exactly one model.
Who may run what is set by the policy on main."""


@dataclass(frozen=True)
class ParsedCommand:
    """One ``/flywheel`` line: a known command with valid arguments, or ``error`` saying what is wrong."""

    line: str
    name: str
    args: tuple[str, ...] = ()
    error: str | None = None

    def arg(self, index: int) -> str | None:
        return self.args[index] if index < len(self.args) else None


@dataclass(frozen=True)
class CommandResult:
    command: str
    ok: bool
    message: str


@dataclass(frozen=True)
class CommentOutcome:
    """What a comment asked and what came of it; ``refs`` are proposals to reconcile now."""

    results: tuple[CommandResult, ...] = ()
    refs: frozenset[str] = field(default_factory=frozenset)


def parse_commands(body: str) -> list[ParsedCommand]:
    """Every ``/flywheel`` command line of ``body`` (at most :data:`MAX_COMMANDS`), checked."""
    found: list[ParsedCommand] = []
    fenced = False
    for raw in body.splitlines():
        if _FENCE.match(raw):
            fenced = not fenced
            continue
        if fenced or not raw.startswith(PREFIX):
            continue
        words = raw.split()
        if words[0] != PREFIX:  # "/flywheeling" is not a command
            continue
        found.append(_check(raw.strip(), words[1:]))
        if len(found) == MAX_COMMANDS:
            break
    return found


def _check(line: str, words: list[str]) -> ParsedCommand:
    if not words:
        return ParsedCommand(line, "help", error="no command given")
    name, args = words[0].lower(), tuple(words[1:])
    spec = COMMANDS.get(name)
    if spec is None:
        return ParsedCommand(line, name, args, error=f"unknown command {name!r}")
    if len(args) > len(spec):
        usage = " ".join(f"[{a}]" for a in spec)
        return ParsedCommand(line, name, args, error=f"too many arguments; usage: {PREFIX} {name} {usage}")
    for value, kind in zip(args, spec, strict=False):
        pattern = _SHA if kind == "SHA" else _NAME
        if pattern.fullmatch(value) is None:
            return ParsedCommand(line, name, args, error=f"{value!r} is not a valid {kind}")
    return ParsedCommand(line, name, args)


# ------------------------------------------------------------------ handling


class CommentReplies(Protocol):
    """Where the answers to a comment go (the GitHub forge queues them in the outbox)."""

    def react(self, comment_id: int, content: str) -> None:
        """React to the comment (``eyes``, ``+1``, ``-1``, ...)."""

    def reply(self, issue: int, body: str, *, in_reply_to: int) -> None:
        """Answer comment ``in_reply_to`` on ``issue``, once."""


class CommentRecords(Protocol):
    """What the commands read and write besides pull requests: runs, rollouts, versions and the audit log."""

    def list_runs(
        self,
        *,
        model: str | None = None,
        ref: str | None = None,
        status: RunStatus | None = None,
        limit: int = 100,
    ) -> list[Run]: ...

    def rollouts_for(self, model: str) -> list[RolloutRecord]: ...

    def latest_version(self, model: str) -> ModelVersion | None: ...

    def append_audit(
        self,
        *,
        actor: str,
        action: str,
        model: str | None = None,
        version: int | None = None,
        environment: str | None = None,
        detail: JSONObject | None = None,
    ) -> AuditEntry: ...


Retrain = Callable[[str, str | None], int]
"""Train a model again at the head of a ref (``None``: the release branch), cache or not; the run's id.

Raises :class:`ValueError` saying why when it cannot (no such branch or
model, or the head waits for ok-to-test).
"""


@dataclass(frozen=True)
class _Context:
    pulls: PullRequestRecords
    records: CommentRecords
    catalog: Catalog
    commands: Commands
    retrain: Retrain
    login: str
    issue: int
    is_pull: bool
    pull: PullRequest | None
    changed_models: Callable[[PullRequest], Sequence[str]] | None
    comment_id: int
    url: str

    @property
    def actor(self) -> Actor:
        return Actor("github", self.login)


def handle_comment(
    payload: Mapping[str, Any],
    *,
    pulls: PullRequestRecords,
    records: CommentRecords,
    catalog: Callable[[], Catalog],
    commands: Commands,
    forge: CommentReplies,
    retrain: Retrain,
    changed_models: Callable[[PullRequest], Sequence[str]] | None = None,
) -> CommentOutcome:
    """Acknowledge, run and answer the commands of an ``issue_comment`` ``created`` payload.

    ``catalog`` returns main's catalog; ``retrain`` starts a run of a model
    again; ``changed_models`` (optional) names the models a pull request
    changes, otherwise the models with runs on its branch stand for them.
    """
    comment = payload.get("comment")
    issue = payload.get("issue")
    if not isinstance(comment, Mapping) or not isinstance(issue, Mapping):
        return CommentOutcome()
    parsed = parse_commands(str(comment.get("body") or ""))
    user = comment.get("user")
    comment_id, number = comment.get("id"), issue.get("number")
    if not parsed or not isinstance(user, Mapping) or not isinstance(comment_id, int):
        return CommentOutcome()
    if not isinstance(number, int) or str(user.get("type")) == "Bot":
        return CommentOutcome()
    forge.react(comment_id, "eyes")  # acknowledged: the reply follows once the commands ran
    is_pull = "pull_request" in issue
    context = _Context(
        pulls=pulls,
        records=records,
        catalog=catalog(),
        commands=commands,
        retrain=retrain,
        login=str(user.get("login") or ""),
        issue=number,
        is_pull=is_pull,
        pull=pulls.pull_request(number) if is_pull else None,
        changed_models=changed_models,
        comment_id=comment_id,
        url=str(comment.get("html_url") or ""),
    )
    results: list[CommandResult] = []
    refs: set[str] = set()
    for command in parsed:
        result, ref = _run(context, command)
        results.append(result)
        if ref:
            refs.add(ref)
    forge.reply(number, _reply_text(context.login, parsed, results), in_reply_to=comment_id)
    forge.react(comment_id, "+1" if all(r.ok for r in results) else "-1")
    return CommentOutcome(tuple(results), frozenset(refs))


def _run(ctx: _Context, command: ParsedCommand) -> tuple[CommandResult, str | None]:
    policy = _main_policy(ctx.catalog)
    user = resolve_user(policy, channel="github", name=ctx.login) if policy else None
    if command.error is not None:
        _audit(ctx, user, "command.invalid", None, {"line": command.line, "error": command.error})
        return CommandResult(command.name, False, f"{command.error}.\n\n{HELP}"), None
    if command.name == "help":
        _audit(ctx, user, "command.help", None, {})
        return CommandResult("help", True, HELP), None
    if command.name == "ok-to-test":
        return _ok_to_test(ctx, policy, user, command)
    model, why = _model(ctx, command.arg(0))
    if model is None:
        refusal = {"command": command.name, "refusal": "no_model", "why": why}
        _audit(ctx, user, "command.refused", None, refusal)
        return CommandResult(command.name, False, why), None
    if command.name in ("approve", "reject"):
        decision = cast(Literal["approve", "reject"], command.name)
        outcome = ctx.commands.decide(
            ctx.actor,
            decision=decision,
            model=model,
            environment=command.arg(1),
            comment=f"/flywheel {command.name} on #{ctx.issue} {ctx.url}".strip(),
        )
        return _from_outcome(command.name, outcome), None
    if command.name in CONTROL_COMMANDS:
        outcome = ctx.commands.control(
            ctx.actor,
            command=command.name,
            model=model,
            reason=f"/flywheel {command.name} on #{ctx.issue} {ctx.url}".strip(),
        )
        return _from_outcome(command.name, outcome), None
    if policy is None or not may_run(policy, user=user, command=command.name):
        why = _not_allowed(ctx, user, command.name, policy)
        _audit(ctx, user, "command.refused", model, {"command": command.name, "refusal": "not_allowed"})
        return CommandResult(command.name, False, why), None
    if command.name == "status":
        text = _status(ctx, model)
        _audit(ctx, user, "command.status", model, {})
        return CommandResult("status", True, text), None
    return _retrain(ctx, user, model), None


def _retrain(ctx: _Context, user: str | None, model: str) -> CommandResult:
    """Start the run at once: on the pull request's head, or on the release branch from an issue."""
    ref = ctx.pull.ref if ctx.pull is not None else None
    if ctx.pull is not None:
        admitted, why = TrustGate(ctx.pulls, lambda: ctx.catalog).admits(ctx.pull.ref, ctx.pull.head_sha)
        if not admitted:  # a retrain is no way around ok-to-test (Invariant 2)
            _audit(ctx, user, "command.refused", model, {"command": "retrain", "refusal": "untrusted_head"})
            return CommandResult("retrain", False, f"Not retraining: {why}.")
    try:
        run_id = ctx.retrain(model, ref)
    except Exception as exc:
        if not isinstance(exc, ValueError):
            log.exception("retraining %s on %s failed", model, ref or "the release branch")
        why = str(exc) if isinstance(exc, ValueError) else f"{type(exc).__name__}: {exc}"
        _audit(ctx, user, "command.retrain", model, {"ref": ref, "result": "failed", "error": why})
        return CommandResult("retrain", False, f"Could not retrain {model}: {why}.")
    _audit(ctx, user, "command.retrain", model, {"ref": ref, "result": "started", "run": run_id})
    where = f" on {ref}" if ref else ""
    return CommandResult("retrain", True, f"{user} asked to retrain {model}{where}: run #{run_id} started.")


def _ok_to_test(
    ctx: _Context, policy: Policy | None, user: str | None, command: ParsedCommand
) -> tuple[CommandResult, str | None]:
    def refuse(refusal: str, why: str) -> tuple[CommandResult, str | None]:
        _audit(ctx, user, "command.refused", None, {"command": "ok-to-test", "refusal": refusal, "why": why})
        return CommandResult("ok-to-test", False, why), None

    if policy is None or not may_run(policy, user=user, command="ok-to-test"):
        return refuse("not_allowed", _not_allowed(ctx, user, "ok-to-test", policy))
    if not ctx.is_pull:
        return refuse("not_a_pull_request", "ok-to-test only applies to a pull request.")
    pull = ctx.pull
    if pull is None or not pull.head_sha:
        return refuse("unknown_pull_request", f"Flywheel has no record of #{ctx.issue}'s head commit yet.")
    wanted = command.arg(0)
    if wanted is not None and not pull.head_sha.startswith(wanted):
        return refuse(
            "head_moved",
            f"#{ctx.issue}'s head is now {pull.head_sha[:12]}, not {wanted}; "
            "look at it and say ok-to-test again.",
        )
    record_ok_to_test(ctx.pulls, pull.number, pull.head_sha)
    _audit(ctx, user, "command.ok-to-test", None, {"sha": pull.head_sha, "ref": pull.ref})
    message = (
        f"{user} said ok-to-test for {pull.head_sha[:12]}: it will run. A new push needs a new ok-to-test."
    )
    return CommandResult("ok-to-test", True, message), pull.ref


def _model(ctx: _Context, named: str | None) -> tuple[str | None, str]:
    if named is not None:
        return named, ""
    candidates: list[str] = []
    if ctx.pull is not None and ctx.changed_models is not None:
        candidates = sorted(set(ctx.changed_models(ctx.pull)))
    elif ctx.pull is not None:
        candidates = sorted({run.model for run in ctx.records.list_runs(ref=ctx.pull.ref, limit=100)})
    if not candidates and len(ctx.catalog.models) == 1:
        candidates = list(ctx.catalog.models)
    if len(candidates) == 1:
        return candidates[0], ""
    if candidates:
        return None, f"this pull request changes several models ({', '.join(candidates)}); name one."
    return None, "name a model, e.g. `/flywheel status MODEL`."


def _status(ctx: _Context, model: str) -> str:
    lines = [f"**{model}**"]
    rollouts = ctx.records.rollouts_for(model)
    active = next((r for r in rollouts if r.active), None)
    if active is not None:
        held = ", paused" if active.paused else ""
        lines.append(
            f"- rollout of v{active.version}: {active.state} in {active.environment or '-'} "
            f"at {active.weight}% (stage {active.stage_index + 1}/{len(active.stages)}{held})"
        )
    elif rollouts:
        last = rollouts[0]
        lines.append(f"- no rollout in progress; the last one (v{last.version}) ended {last.state}")
    else:
        lines.append("- no rollout yet")
    ref = ctx.pull.ref if ctx.pull is not None else None
    runs = ctx.records.list_runs(model=model, ref=ref, limit=1) if ref else []
    runs = runs or ctx.records.list_runs(model=model, limit=1)
    if runs:
        run = runs[0]
        metrics = ", ".join(f"{k}={v:.4g}" for k, v in sorted(run.metrics.items())[:6])
        lines.append(
            f"- latest run #{run.id} on {run.ref} at {run.commit[:12]}: {run.status}"
            + (f" ({metrics})" if metrics else "")
        )
    else:
        lines.append("- no run yet")
    latest = ctx.records.latest_version(model)
    if latest is not None:
        lines.append(f"- latest version: v{latest.number} from {latest.commit[:12]}")
    return "\n".join(lines)


def _from_outcome(command: str, outcome: CommandOutcome) -> CommandResult:
    return CommandResult(command, outcome.ok, outcome.message)


def _not_allowed(ctx: _Context, user: str | None, command: str, policy: Policy | None) -> str:
    if policy is None:
        return "main has no policy; commands are refused."
    if user is None:
        return f"{ctx.login} is not a known Flywheel user on github; ask to be added to the policy."
    return f"{user} may not {command}: the policy on main does not allow it."


def _audit(ctx: _Context, user: str | None, action: str, model: str | None, detail: dict[str, Any]) -> None:
    ctx.records.append_audit(
        actor=user or f"github:{ctx.login}",
        action=action,
        model=model,
        detail={"channel": "github", "as": ctx.login, "issue": ctx.issue, "comment": ctx.comment_id} | detail,
    )


def _reply_text(login: str, parsed: Sequence[ParsedCommand], results: Sequence[CommandResult]) -> str:
    parts = []
    for command, result in zip(parsed, results, strict=True):
        mark = "✅" if result.ok else "⛔"
        parts.append(f"{mark} `{command.line}`\n\n{result.message}")
    return f"@{login}\n\n" + "\n\n---\n\n".join(parts)
