"""The web dashboard: a Starlette app of server-rendered pages and the small JSON API they stand on.

``flywheel ui`` serves it on its own (:mod:`controller.cli.ui`) and
``flywheel serve`` mounts it at ``/ui`` beside the webhooks
(:mod:`controller.cli.serve`); tests build it with :func:`create_app` around a
store of their own. Every page and every API answer is one read of
:class:`~controller.ui.facts.Facts` at the clock's "now"; the pages render the
same objects the API returns as JSON (its OpenAPI document is at
``/api/v1/openapi.json``). Given the store to write to (``records``), it
also takes people's requests (:mod:`controller.ui.actions`), as the person
:class:`~controller.ui.access.Access` knows; reading is open, or only for
those signed in. Nothing secret (tokens, webhook secrets, the session key)
is ever rendered.

Routes (relative to where the app is mounted):

``/``                        models: search (``q``), sort, pages (``offset``, ``limit``)
``/models/{model}``          versions with lineage, serving per environment (``at``: at that time), timeline
``/models/{model}/drift``    drift per feature of each served version (asked of the routers)
``/rollouts/{id}``           analysis rounds against thresholds, weights over time, decision, approvals
``/proposals``               proposals with their reports
``/approvals``               rollouts waiting at an approval gate
``/audit``                   the audit log by model, person, action and time
``/api/v1/...``              the same facts as JSON
``/api/v1/status``, ``/api/v1/models/{model}/status|versions|history``, ``/api/v1/audit/entries``:
                             the documents ``flywheel models``, ``status``, ``versions``, ``history`` and
                             ``audit`` print with ``--json`` (:mod:`controller.engine.documents`), which
                             those commands read with ``--server``
``/signin?token=...``        the one-time local sign-in ``flywheel ui`` prints; ``POST /signout``
``POST /models/{model}/actions`` and ``POST /api/v1/models/{model}/actions``: see :mod:`controller.ui.actions`
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlencode

import jinja2
from pydantic import BaseModel
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.middleware.sessions import SessionMiddleware
from starlette.requests import Request
from starlette.responses import JSONResponse, RedirectResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.templating import Jinja2Templates

from controller.backends.store import ModelQuery
from controller.backends.store.registry import MODEL_SORTS
from controller.clock import Clock
from controller.engine.commands import CommandRecords
from controller.engine.documents import (
    Missing,
    audit_document,
    history_document,
    models_document,
    status_document,
    versions_document,
)
from controller.specs.types import Catalog
from controller.ui.access import Access, csrf_ok, csrf_token, session_secret
from controller.ui.actions import Actions
from controller.ui.charts import check_charts, metric_charts, weight_chart
from controller.ui.facts import DriftSource, Facts, HistoryReads, LinkMaker, ModelReads, Unknown
from controller.ui.schemas import ModelList, openapi_document

__all__ = ["API_PREFIX", "PAGE_SIZE", "create_app"]

API_PREFIX = "/api/v1"
PAGE_SIZE = 50
_MAX_PAGE = 200
_MAX_AUDIT = 1000


_SORT_WORDS = {
    "name": "name, A to Z",
    "-name": "name, Z to A",
    "latest": "registered, oldest first",
    "-latest": "registered, newest first",
    "versions": "fewest versions first",
    "-versions": "most versions first",
}


_SIGN_IN_TO_READ = (
    "sign in to read this dashboard: open the sign-in address `flywheel ui` printed, "
    "or come through the proxy."
)
_SIGN_IN_USED = (
    "this sign-in address is wrong or was used already; each works once. Restart `flywheel ui` for a new one."
)


class _BadQuery(ValueError):
    """A query parameter that cannot be read (answered 400)."""


def _int(params: Mapping[str, str], name: str, default: int, *, low: int, high: int) -> int:
    text = params.get(name)
    if text is None or text == "":
        return default
    try:
        value = int(text)
    except ValueError:
        raise _BadQuery(f"{name}={text!r} is not a whole number") from None
    if not low <= value <= high:
        raise _BadQuery(f"{name}={value} is not between {low} and {high}")
    return value


def _time(params: Mapping[str, str], name: str) -> datetime | None:
    text = params.get(name)
    if not text:
        return None
    try:
        value = datetime.fromisoformat(text)
        return (value if value.tzinfo else value.replace(tzinfo=UTC)).astimezone(UTC)
    except (ValueError, OverflowError):
        raise _BadQuery(f"{name}={text!r} is not an ISO 8601 time (UTC if it names no zone)") from None


def _text(params: Mapping[str, str], name: str) -> str | None:
    text = params.get(name)
    if text is None or text == "":
        return None
    if len(text) > 255:
        raise _BadQuery(f"{name} is longer than 255 characters")
    return text


def _model_query(params: Mapping[str, str]) -> ModelQuery:
    sort = params.get("sort") or "name"
    if sort not in MODEL_SORTS:
        raise _BadQuery(f"sort={sort!r} is not one of {', '.join(MODEL_SORTS)}")
    return ModelQuery(
        search=_text(params, "q"),
        sort=sort,  # narrowed to a ModelSort by the `in` above
        offset=_int(params, "offset", 0, low=0, high=10**9),
        limit=_int(params, "limit", PAGE_SIZE, low=1, high=_MAX_PAGE),
    )


def _audit_query(params: Mapping[str, str]) -> dict[str, Any]:
    return {
        "model": _text(params, "model"),
        "actor": _text(params, "actor"),
        "action": _text(params, "action"),
        "since": _time(params, "since"),
        "until": _time(params, "until"),
        "limit": _int(params, "limit", 200, low=1, high=_MAX_AUDIT),
    }


def _rollout_id(text: str) -> int:
    if not text.isascii() or not text.isdigit() or len(text) > 18 or int(text) < 1:
        raise Unknown(f"no rollout {text!r}")
    return int(text)


def _when(value: datetime | None) -> str:
    return value.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC") if value else "-"


def _page_query(data: ModelList, offset: int) -> str:
    """The model list's query string for another page, keeping its search and sort."""
    query = {"q": data.search or "", "sort": data.sort, "offset": max(offset, 0), "limit": data.limit}
    return urlencode({k: v for k, v in query.items() if v != ""})


def _older_query(query: Mapping[str, Any], until: datetime) -> str:
    """The audit log's query string for the entries older than ``until``, keeping the other filters."""
    kept = {k: v.isoformat() if isinstance(v, datetime) else v for k, v in query.items() if v}
    return urlencode({**kept, "until": until.isoformat()})


def create_app(
    *,
    models: ModelReads,
    history: HistoryReads,
    clock: Clock,
    catalog: Callable[[], Catalog | None] = lambda: None,
    links: LinkMaker | None = None,
    pull_number: Callable[[str], int | None] | None = None,
    drift: DriftSource | None = None,
    slack_thread: Callable[[str, int], str | None] | None = None,
    records: CommandRecords | None = None,
    access: Access | None = None,
    secret: str | None = None,
    secure_cookies: bool = False,
    verify: Callable[[], object] = lambda: None,
) -> Starlette:
    """The dashboard's app over the store (``models`` and ``history``: one store, or two views of it).

    ``catalog`` gives main's specs when they can be read (canary steps, bounds,
    who may approve); ``links`` makes the forge's addresses of commits and pull
    requests, ``pull_number`` finds a proposal branch's pull request and
    ``slack_thread`` the address of a version's rollout thread in Slack;
    ``drift`` asks the routers serving a model for its drift tables. The store
    is called from worker threads, so it must be usable from any thread. Read at ``clock``'s now.

    With ``records`` (the same store, written to) people may act; ``access``
    says who may read and how people prove who they are (default: open
    reading, no way to sign in). ``secret`` signs the session cookie (default:
    a key for this app only); ``secure_cookies`` sends it over HTTPS only.
    ``verify`` refuses, before each request people make, a store the
    controller would refuse (it raises ``StateRefused``).
    """
    gate = access or Access()
    actions = (
        Actions(records=records, catalog=catalog, clock=clock, access=gate, verify=verify)
        if records is not None
        else None
    )
    env = jinja2.Environment(
        loader=jinja2.PackageLoader("controller.ui", "templates"),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
    )
    env.filters["when"] = _when
    env.filters["words"] = lambda condition: str(condition or "").replace("_", " ")
    env.globals["page_query"] = _page_query
    env.globals["older_query"] = _older_query
    templates = Jinja2Templates(env=env)
    maker = links or LinkMaker()

    def facts() -> Facts:
        return Facts(
            models_store=models,
            history=history,
            now=clock.now(),
            catalog=catalog(),
            links=maker,
            pull_number=pull_number or (lambda branch: None),
            drift_source=drift,
            slack_thread=slack_thread or (lambda model, version: None),
        )

    def api(
        read: Callable[[Request], BaseModel | list[Any] | Mapping[str, Any]],
    ) -> Callable[[Request], Response]:
        def endpoint(request: Request) -> Response:
            if gate.refused_token(request):
                return JSONResponse({"error": "this bearer token is unknown or revoked"}, status_code=401)
            if not gate.may_read(request):
                return JSONResponse({"error": "sign in, or send a bearer token, to read"}, status_code=401)
            try:
                answer = read(request)
            except _BadQuery as exc:
                return JSONResponse({"error": str(exc)}, status_code=400)
            except (Unknown, Missing) as exc:
                return JSONResponse({"error": str(exc)}, status_code=404)
            return JSONResponse(answer.model_dump(mode="json") if isinstance(answer, BaseModel) else answer)

        return endpoint

    def page(name: str, read: Callable[[Request], dict[str, Any]]) -> Callable[[Request], Response]:
        def endpoint(request: Request) -> Response:
            if not gate.may_read(request):
                return _error_page(request, 401, _SIGN_IN_TO_READ)
            try:
                context = read(request)
            except _BadQuery as exc:
                return _error_page(request, 400, str(exc))
            except Unknown as exc:
                return _error_page(request, 404, str(exc))
            return templates.TemplateResponse(request, name, {**_common(request), **context})

        return endpoint

    def _common(request: Request) -> dict[str, Any]:
        """What every page shows: who is signed in, the outcome of their last request, the form token."""
        return {
            "now": clock.now(),
            "person": gate.person(request),
            "flash": request.session.pop("flash", None),
            "csrf": csrf_token(request),
            "can_act": actions is not None,
            "here": request.url.path + (f"?{request.url.query}" if request.url.query else ""),
        }

    def _error_page(request: Request, status: int, message: str) -> Response:
        return templates.TemplateResponse(
            request,
            "error.html",
            {**_common(request), "status": status, "message": message},
            status_code=status,
        )

    # ------------------------------------------------------------ people

    def sign_in(request: Request) -> Response:
        user = gate.sign_in_as(request, request.query_params.get("token", ""))
        if user is None:
            return _error_page(request, 403, _SIGN_IN_USED)
        request.session["flash"] = {"ok": True, "message": f"signed in as {user}"}
        return RedirectResponse(request.url_for("models").path, status_code=303)

    async def sign_out(request: Request) -> Response:
        form = await request.form()
        if not csrf_ok(request, form.get("csrf")):
            return _error_page(
                request, 403, "this form did not come from this dashboard session; nothing changed."
            )
        request.session.clear()
        return RedirectResponse(request.url_for("models").path, status_code=303)

    async def act(request: Request) -> Response:
        if actions is None:
            return _error_page(request, 403, "this dashboard only reads; nothing can be done here.")
        answer = await actions.form(request)
        if isinstance(answer, tuple):
            return _error_page(request, *answer)
        return answer

    async def act_api(request: Request) -> Response:
        if actions is None:
            return JSONResponse({"error": "this dashboard only reads"}, status_code=403)
        return await actions.api(request)

    # ------------------------------------------------------------ readers

    def model_list(request: Request) -> dict[str, Any]:
        return {
            "data": facts().models(**_model_query(request.query_params)),
            "sorts": MODEL_SORTS,
            "sort_words": _SORT_WORDS,
        }

    def model(request: Request) -> dict[str, Any]:
        at = _time(request.query_params, "at")
        data = facts().model(request.path_params["model"], at=at)
        return {"data": data, "metrics": metric_charts(data.versions)}

    def drift_page(request: Request) -> dict[str, Any]:
        return {"data": facts().drift(request.path_params["model"]), "watched": drift is not None}

    def rollout(request: Request) -> dict[str, Any]:
        data = facts().rollout(_rollout_id(request.path_params["rollout"]))
        return {"data": data, "charts": check_charts(data.rounds), "weights": weight_chart(data.weights)}

    def proposals(request: Request) -> dict[str, Any]:
        return {"data": facts().proposals(branch=_text(request.query_params, "branch"))}

    def approvals(request: Request) -> dict[str, Any]:
        return {"data": facts().pending()}

    def audit(request: Request) -> dict[str, Any]:
        query = _audit_query(request.query_params)
        return {"data": facts().audit(**query), "query": query}

    # ------------------------------------------- the read commands' documents

    def statuses(request: Request) -> list[dict[str, Any]]:
        return models_document(models, history, now=clock.now(), catalog=catalog())

    def status(request: Request) -> dict[str, Any]:
        name = request.path_params["model"]
        return status_document(models, history, name, now=clock.now(), catalog=catalog())

    def versions(request: Request) -> list[Any]:
        return list(versions_document(models, request.path_params["model"]))

    def served(request: Request) -> Mapping[str, Any]:
        params = request.query_params
        return history_document(
            models,
            history,
            request.path_params["model"],
            environment=_text(params, "environment"),
            at=_time(params, "at"),
        )

    def entries(request: Request) -> list[dict[str, Any]]:
        params = request.query_params
        limit = _int(params, "limit", 0, low=1, high=10**9) or None
        return audit_document(history, model=_text(params, "model"), limit=limit)

    document = openapi_document(sorts=MODEL_SORTS)

    def openapi(request: Request) -> Response:
        return JSONResponse(document)

    async def not_found(request: Request, exc: Exception) -> Response:
        status = exc.status_code if isinstance(exc, HTTPException) else 500
        message = exc.detail if isinstance(exc, HTTPException) else "internal error"
        if request.url.path.startswith(str(request.scope.get("root_path", "")) + API_PREFIX):
            return JSONResponse({"error": message}, status_code=status)
        return _error_page(request, status, message)

    routes = [
        Route("/", page("models.html", model_list), name="models"),
        Route("/models/{model}", page("model.html", model), name="model"),
        Route("/models/{model}/drift", page("drift.html", drift_page), name="drift"),
        Route("/rollouts/{rollout}", page("rollout.html", rollout), name="rollout"),
        Route("/proposals", page("proposals.html", proposals), name="proposals"),
        Route("/approvals", page("approvals.html", approvals), name="approvals"),
        Route("/audit", page("audit.html", audit), name="audit"),
        Route("/signin", sign_in, name="signin"),
        Route("/signout", sign_out, methods=["POST"], name="signout"),
        Route("/models/{model}/actions", act, methods=["POST"], name="act"),
        Route(f"{API_PREFIX}/models/{{model}}/actions", act_api, methods=["POST"], name="api_act"),
        Route(f"{API_PREFIX}/openapi.json", openapi, name="openapi"),
        Route(f"{API_PREFIX}/models", api(lambda r: model_list(r)["data"]), name="api_models"),
        Route(f"{API_PREFIX}/models/{{model}}", api(lambda r: model(r)["data"]), name="api_model"),
        Route(f"{API_PREFIX}/models/{{model}}/drift", api(lambda r: drift_page(r)["data"]), name="api_drift"),
        Route(
            f"{API_PREFIX}/rollouts/{{rollout}}",
            api(lambda r: facts().rollout(_rollout_id(r.path_params["rollout"]))),
            name="api_rollout",
        ),
        Route(f"{API_PREFIX}/proposals", api(lambda r: proposals(r)["data"]), name="api_proposals"),
        Route(f"{API_PREFIX}/approvals/pending", api(lambda r: facts().pending()), name="api_pending"),
        Route(f"{API_PREFIX}/audit", api(lambda r: audit(r)["data"]), name="api_audit"),
        Route(f"{API_PREFIX}/status", api(statuses), name="api_statuses"),
        Route(f"{API_PREFIX}/models/{{model}}/status", api(status), name="api_status"),
        Route(f"{API_PREFIX}/models/{{model}}/versions", api(versions), name="api_versions"),
        Route(f"{API_PREFIX}/models/{{model}}/history", api(served), name="api_history"),
        Route(f"{API_PREFIX}/audit/entries", api(entries), name="api_audit_entries"),
        Mount("/static", StaticFiles(packages=[("controller.ui", "static")]), name="static"),
    ]
    session = Middleware(
        SessionMiddleware,
        secret_key=session_secret(secret, None),
        session_cookie="flywheel_session",
        max_age=12 * 3600,
        same_site="lax",
        https_only=secure_cookies,
    )
    app = Starlette(routes=routes, exception_handlers={HTTPException: not_found}, middleware=[session])
    return app
