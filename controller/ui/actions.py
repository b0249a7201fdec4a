"""What people do on the dashboard: approve, reject, pause, resume, promote, abort, roll back.

:func:`controller.ui.app.create_app` adds these routes when it is given the
store to write to. Every request goes to
:class:`~controller.engine.commands.Commands` as the person
:class:`~controller.ui.access.Access` knows, on the channel ``dashboard``:
the engine maps them through main's policy, checks them as on every other
channel and writes the audit log; nothing here decides who may do what.
Before each, the state is checked as ``flywheel approve`` checks it (``verify``:
:func:`~controller.backends.store.integrity.verify_state`): a store the
controller would refuse records nothing, and the answer says why.

Two doors, each with its own proof:

``POST /models/{model}/actions``          a page's form: the session's person, and the form's CSRF token
``POST /api/v1/models/{model}/actions``   the CLI's ``--server``: a bearer token only, JSON in and out

A form post whose CSRF token is missing or wrong is answered 403 and changes
nothing; so is a form post from nobody signed in. The API door takes no
session and no proxy header (a browser sends those to any site's form), only
``Authorization: Bearer``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Literal, get_args

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, RedirectResponse, Response

from controller.backends.store.integrity import StateRefused
from controller.clock import Clock
from controller.engine.commands import Actor, CommandOutcome, CommandRecords, Commands
from controller.specs.types import Catalog
from controller.ui.access import Access, Person, csrf_ok

__all__ = ["ACTIONS", "Action", "Actions"]

Action = Literal["approve", "reject", "pause", "resume", "promote", "abort", "rollback"]
ACTIONS: tuple[Action, ...] = get_args(Action)
_NO_SPECS = "main's specs cannot be read just now, so nobody's request can be judged; nothing was recorded."
_STALE_FORM = (
    "this form did not come from this dashboard session (its CSRF token is missing or wrong); "
    "nothing changed. Reload the page and try again."
)


class _BadAction(ValueError):
    """A request that cannot be read (answered 400)."""


class Actions:
    """Runs people's requests through :class:`Commands` over ``records``, under main's specs (``catalog``)."""

    def __init__(
        self,
        *,
        records: CommandRecords,
        catalog: Callable[[], Catalog | None],
        clock: Clock,
        access: Access,
        verify: Callable[[], object] = lambda: None,
    ) -> None:
        self._records = records
        self._catalog = catalog
        self._clock = clock
        self._access = access
        self._verify = verify

    def run(self, person: Person, fields: dict[str, str]) -> CommandOutcome:
        """Do as ``person`` what ``fields`` ask: command, model, version, environment, reason."""
        command, model = fields.get("command", ""), fields.get("model", "")
        if command not in ACTIONS:
            raise _BadAction(f"{command!r} is not one of {', '.join(ACTIONS)}")
        try:
            self._verify()
        except StateRefused as exc:  # nothing may be written, not even the refusal's audit entry
            why = f"the state store must not be acted on as it is, so nothing was recorded: {exc}"
            return CommandOutcome(ok=False, message=why, refusal="state_refused")
        actor = Actor("dashboard", person.name)
        main = self._catalog()
        commands = Commands(store=self._records, catalog=lambda: main or Catalog(), clock=self._clock)
        if main is None:
            return commands.refuse(actor, command=command, model=model, refusal="no_specs", why=_NO_SPECS)
        claimed = fields.get("as")
        if claimed and claimed != person.name:
            why = f"--as {claimed} is not you: this token acts as {person.name}."
            return commands.refuse(actor, command=command, model=model, refusal="not_you", why=why)
        reason = fields.get("reason", "")[:1000]
        if command in ("approve", "reject"):
            return commands.decide(
                actor,
                decision="approve" if command == "approve" else "reject",
                model=model,
                version=_version(fields.get("version", "")),
                environment=fields.get("environment") or None,
                comment=reason,
            )
        control: Any = command  # one of the control commands: checked against ACTIONS above
        return commands.control(actor, command=control, model=model, reason=reason)

    # --------------------------------------------------------------- doors

    async def form(self, request: Request) -> Response | tuple[int, str]:
        """A page's form post: redirect back to where it came from, the outcome shown there."""
        form = await request.form()
        fields = {k: v for k, v in form.items() if isinstance(v, str)}
        if not csrf_ok(request, fields.get("csrf")):
            return 403, _STALE_FORM
        person = self._access.person(request)
        if person is None or person.via == "token":
            return 403, "sign in first: only a signed-in person may approve, reject or steer a rollout."
        fields["model"] = request.path_params["model"]
        fields.pop("as", None)  # only the API's callers claim a name; a form's person is who signed in
        try:
            outcome = await run_in_threadpool(self.run, person, fields)
        except _BadAction as exc:
            return 400, str(exc)
        request.session["flash"] = {"ok": outcome.ok, "message": outcome.message}
        back = fields.get("next", "")
        if not back.startswith("/") or back.startswith("//") or "\\" in back:
            back = str(request.url_for("models").path)
        return RedirectResponse(back, status_code=303)

    async def api(self, request: Request) -> Response:
        """The API's door: a bearer token's person, JSON in, the outcome out (200, or 403 refused)."""
        authorization = request.headers.get("authorization", "")
        person = self._access.person(request) if authorization.lower().startswith("bearer ") else None
        if person is None:
            return JSONResponse({"error": "a valid bearer token is needed to act"}, status_code=401)
        try:
            body = await request.json()
        except ValueError:
            return JSONResponse({"error": "the body is not JSON"}, status_code=400)
        if not isinstance(body, dict):
            return JSONResponse({"error": "the body is not a JSON object"}, status_code=400)
        fields = {k: str(v) for k, v in body.items() if v is not None}
        fields["model"] = request.path_params["model"]
        try:
            outcome = await run_in_threadpool(self.run, person, fields)
        except _BadAction as exc:
            return JSONResponse({"error": str(exc)}, status_code=400)
        answer = {
            "ok": outcome.ok,
            "message": outcome.message,
            "refusal": outcome.refusal,
            "user": outcome.user,
            "rollout": outcome.rollout_id,
            "duplicate": outcome.duplicate,
        }
        return JSONResponse(answer, status_code=200 if outcome.ok else 403)


def _version(text: str) -> int | None:
    if not text:
        return None
    if not text.isascii() or not text.isdigit() or len(text) > 9:
        raise _BadAction(f"version={text!r} is not a version number")
    return int(text)
