"""The dashboard's web application: pages, JSON endpoints and actions.

A Starlette app with server-rendered Jinja2 templates and a little vanilla
JavaScript (``static/dashboard.js``): no build step. It reads through the
engine (``handle.info()``, ``handle.log()``, ``engine.workers()``,
``engine.queues()``, ``engine.schedules()``) and the
dashboard's store verbs (:mod:`werkfluss.store.dashboard`), and acts through
``engine.cancel``/``engine.retry`` and the public ``werkfluss.send()``.

    app = create_app(Engine("postgresql://localhost/app"), token=None)   # read-only
    # serve it with uvicorn, or `werkfluss dashboard`

Routes:

    GET  /runs                 the run list (filters: status, workflow, age, prefix, limit)
    GET  /api/runs             the same as JSON (with the rendered rows, for the page's polling)
    GET  /runs/{run_id}        one run: timeline, waits, log, inputs, outputs, errors
    GET  /api/runs/{run_id}    the run's state as JSON (the page reloads when it changes)
    GET  /workers, /api/workers
    GET  /queues, /api/queues        every queue: its limits, runs holding a worker, depth
    GET  /schedules, /api/schedules  every schedule: next tick, last run, paused or broken
    GET  /audit                the actions taken through the dashboard
    POST /actions/cancel, /actions/retry, /actions/send   (token required; see guard.py)
    POST /actions/schedule/pause, .../resume, .../trigger, .../delete   (the same; field ``schedule``)
"""

from __future__ import annotations

import asyncio
import datetime as dt
import urllib.parse
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import jinja2
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, RedirectResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.templating import Jinja2Templates
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from werkfluss import telemetry
from werkfluss.cli.dashboard import views
from werkfluss.cli.dashboard.actions import DONE, Actions
from werkfluss.cli.dashboard.filters import AGES, LIMITS, RunFilters
from werkfluss.cli.dashboard.guard import Guard
from werkfluss.engine import Engine
from werkfluss.errors import (
    ConfigurationError,
    DatabaseUnavailable,
    InvalidArgument,
    RunNotFound,
    WerkflussError,
)
from werkfluss.runs import STATUSES, TERMINAL
from werkfluss.store import dashboard as store

HERE = Path(__file__).resolve().parent
POLL_INTERVAL_MS = 2000
LOG_LIMIT = 1000  # records listed on a run's page (the CLI's `show --json` has them all)

# Sent with every response: no framing (the action buttons cannot be
# clickjacked), scripts and styles from this origin only.
SECURITY_HEADERS = [
    (b"content-security-policy",
     b"default-src 'self'; img-src 'self' data:; frame-ancestors 'none'; form-action 'self'; "
     b"base-uri 'none'"),
    (b"x-frame-options", b"DENY"),
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"same-origin"),
]


class SecurityHeaders:
    """ASGI middleware adding :data:`SECURITY_HEADERS` to every HTTP response."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", []), *SECURITY_HEADERS]
            await send(message)

        await self.app(scope, receive, send_with_headers)


@jinja2.pass_context
def _url_for(context: Mapping[str, Any], name: str, /, **params: Any) -> str:
    request: Request = context["request"]
    return request.url_for(name, **params).path


def _environment() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(HERE / "templates"),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.globals["url_for"] = _url_for  # paths, not absolute URLs: right behind any proxy
    env.filters["duration"] = views.format_duration
    env.filters["time"] = views.format_time
    env.filters["pretty"] = views.pretty_json
    env.filters["short"] = views.short_name
    return env


class Dashboard:
    """The request handlers, around one open :class:`Engine`."""

    def __init__(self, engine: Engine, *, token: str | None, owns_engine: bool) -> None:
        self.engine = engine
        self.guard = Guard(token)
        self.owns_engine = owns_engine
        self.templates = Jinja2Templates(env=_environment())
        self.actions = Actions(engine, self.guard, self)

    # --- lifecycle -------------------------------------------------------------------

    @asynccontextmanager
    async def lifespan(self, app: Starlette) -> AsyncIterator[None]:
        await self.engine.open()
        try:
            await self.check_grants()
            yield
        finally:
            if self.owns_engine:
                await self.engine.close()

    async def check_grants(self) -> None:
        """Refuse to start when the role cannot read what the pages show (or, with a
        token, do what the buttons offer), naming the missing grants."""
        role, missing = await store.missing_grants(self.engine.connector, actions=not self.guard.read_only)
        if missing:
            raise ConfigurationError(
                f"the role {role!r} lacks {', '.join(missing)}, which the dashboard needs; "
                "see the Dashboard section of docs/operations.md for the GRANTs"
            )

    # --- rendering helpers -----------------------------------------------------------

    def now(self) -> dt.datetime:
        return dt.datetime.now(dt.UTC)

    def run_url(self, request: Request, run_id: str) -> str:
        return f"{request.scope.get('root_path', '')}/runs/{urllib.parse.quote(run_id, safe=':@')}"

    def api_url(self, request: Request, run_id: str) -> str:
        return f"{request.scope.get('root_path', '')}/api/runs/{urllib.parse.quote(run_id, safe=':@')}"

    def _context(self, request: Request) -> dict[str, Any]:
        now = self.now()
        return {
            "request": request,
            "read_only": self.guard.read_only,
            "now": now,
            "relative": lambda value: views.relative(value, now),
            "run_url": lambda run_id: self.run_url(request, run_id),
            "poll_ms": POLL_INTERVAL_MS,
        }

    def render(self, request: Request, name: str, status_code: int = 200, **context: Any) -> Response:
        context.setdefault("page", name.removesuffix(".html"))
        return self.templates.TemplateResponse(
            request, name, {**self._context(request), **context}, status_code=status_code,
        )

    def fragment(self, request: Request, name: str, **context: Any) -> str:
        """A partial template (``_<name>.html``) rendered alone, for the pages' polling."""
        template = self.templates.get_template(f"_{name}.html")
        return template.render({**self._context(request), **context})

    def error_page(self, request: Request, status_code: int, message: str) -> Response:
        if _wants_json(request):
            return JSONResponse({"ok": False, "error": message}, status_code=status_code)
        return self.render(request, "error.html", status_code=status_code, message=message, title="Error")

    # --- the run list ----------------------------------------------------------------

    async def _run_list(self, filters: RunFilters) -> dict[str, Any]:
        connector = self.engine.connector
        runs, counts, workers = await asyncio.gather(
            store.list_runs(connector, status=filters.status or None, workflow=filters.workflow or None,
                            id_prefix=filters.prefix or None, since_seconds=filters.since_seconds,
                            limit=filters.limit),
            store.count_runs(connector, workflow=filters.workflow or None, id_prefix=filters.prefix or None,
                             since_seconds=filters.since_seconds),
            self.engine.workers(),
        )
        served = {name for w in workers if w.alive for name in w.workflows}
        total = sum(counts.values())
        return {
            "runs": runs, "counts": counts, "total": total, "capped": total >= store.COUNT_CAP,
            "served": served, "workflows": sorted({*served, *(r.workflow for r in runs)}),
            "cap": store.COUNT_CAP,
        }

    async def runs_page(self, request: Request) -> Response:
        filters = RunFilters.parse(request.query_params)
        data = await self._run_list(filters)
        return self.render(request, "runs.html", filters=filters, statuses=STATUSES, ages=AGES,
                           limits=LIMITS, title="Runs", **data)

    async def runs_api(self, request: Request) -> Response:
        filters = RunFilters.parse(request.query_params)
        data = await self._run_list(filters)
        fragments = {name: self.fragment(request, name, filters=filters, statuses=STATUSES, **data)
                     for name in ("run_rows", "counts")}
        return JSONResponse({
            "runs": [_summary_json(r, served=data["served"]) for r in data["runs"]],
            "counts": data["counts"], "total": data["total"], "capped": data["capped"],
            "html": fragments,
        })

    # --- one run -----------------------------------------------------------------------

    async def run_page(self, request: Request) -> Response:
        run_id = request.path_params["run_id"]
        handle = self.engine.handle(run_id)
        info = await handle.info()
        connector = self.engine.connector
        # The version first: a change after it is read makes the page reload once more, never miss it.
        version = await store.run_version(connector, run_id=run_id)
        log, children, hooks, holder, actions, workers = await asyncio.gather(
            handle.log(),
            store.run_children(connector, run_id=run_id),
            store.run_hooks(connector, run_id=run_id),
            store.run_holder(connector, run_id=run_id),
            store.list_actions(connector, run_id=run_id, limit=50),
            self.engine.workers(),
        )
        now = self.now()
        served = {name for w in workers if w.alive for name in w.workflows}
        return self.render(
            request, "run.html", title=f"Run {run_id}",
            info=info, log=log, children=children, hooks=hooks, holder=holder, audit=actions,
            waits=views.waits_of(info, hooks, children),
            timeline=views.build_timeline(info, log, children, hooks, now=now),
            finished=info.status in TERMINAL, unserved=info.workflow not in served,
            version=version, can_retry=info.status in ("failed", "cancelled"),
            version_url=self.api_url(request, run_id), log_limit=LOG_LIMIT,
            done_message=DONE.get(request.query_params.get("done", "")),
        )

    async def run_api(self, request: Request) -> Response:
        run_id = request.path_params["run_id"]
        info = await self.engine.handle(run_id).info()
        version = await store.run_version(self.engine.connector, run_id=run_id)
        return JSONResponse({
            "run_id": info.run_id, "workflow": info.workflow, "status": info.status,
            "created_at": _iso(info.created_at), "started_at": _iso(info.started_at),
            "finished_at": _iso(info.finished_at), "wake_at": _iso(info.wake_at),
            "waiting_on": info.waiting_on, "parent_id": info.parent_id, "error": info.error,
            "version": version,
        })

    # --- workers and audit -------------------------------------------------------------

    async def workers_page(self, request: Request) -> Response:
        workers = await self.engine.workers(recent="24h")
        return self.render(request, "workers.html", workers=workers, title="Workers")

    async def workers_api(self, request: Request) -> Response:
        workers = await self.engine.workers(recent="24h")
        return JSONResponse({
            "workers": [_plain(w) for w in workers],
            "html": {"worker_rows": self.fragment(request, "worker_rows", workers=workers)},
        })

    # --- queues and schedules ---------------------------------------------------------

    async def queues_page(self, request: Request) -> Response:
        queues = await self.engine.queues()
        return self.render(request, "queues.html", queues=queues, title="Queues")

    async def queues_api(self, request: Request) -> Response:
        queues = await self.engine.queues()
        return JSONResponse({
            "queues": [{**_plain(q), "depth": q.depth} for q in queues],
            "html": {"queue_rows": self.fragment(request, "queue_rows", queues=queues)},
        })

    async def schedules_page(self, request: Request) -> Response:
        found = await self.engine.schedules()
        return self.render(request, "schedules.html", schedules=found, title="Schedules",
                           done_message=DONE.get(request.query_params.get("done", "")))

    async def schedules_api(self, request: Request) -> Response:
        found = await self.engine.schedules()
        return JSONResponse({
            "schedules": [_plain(s) for s in found],
            "html": {"schedule_rows": self.fragment(request, "schedule_rows", schedules=found)},
        })

    async def audit_page(self, request: Request) -> Response:
        records = await store.list_actions(self.engine.connector, limit=200)
        return self.render(request, "audit.html", records=records, title="Audit")

    async def home(self, request: Request) -> Response:
        return RedirectResponse(f"{request.scope.get('root_path', '')}/runs", status_code=307)


# --- JSON helpers ------------------------------------------------------------------------------


def _iso(value: dt.datetime | None) -> str | None:
    return value.isoformat() if value is not None else None


def _plain(value: Any) -> dict[str, Any]:
    """A dataclass instance's fields as JSON-ready values (timestamps as ISO 8601)."""
    return {k: (_iso(v) if isinstance(v, dt.datetime) else v) for k, v in value.__dict__.items()}


def _summary_json(run: store.RunSummary, *, served: set[str]) -> dict[str, Any]:
    out = _plain(run)
    out["unserved"] = run.status == "pending" and run.workflow not in served
    return out


def _wants_json(request: Request) -> bool:
    return request.url.path.startswith(f"{request.scope.get('root_path', '')}/api/") or \
        "application/json" in request.headers.get("accept", "")


# --- errors ------------------------------------------------------------------------------------


def _error_handlers(dashboard: Dashboard) -> dict[Any, Callable[..., Any]]:
    async def not_found(request: Request, exc: Exception) -> Response:
        message = str(exc) if isinstance(exc, RunNotFound) else "no such page"
        return dashboard.error_page(request, 404, message)

    async def bad_request(request: Request, exc: Exception) -> Response:
        return dashboard.error_page(request, 400, str(exc))

    async def unavailable(request: Request, exc: Exception) -> Response:
        return dashboard.error_page(request, 503, str(exc))

    async def failed(request: Request, exc: Exception) -> Response:
        telemetry.logger().error("dashboard.request_failed", path=request.url.path, error=str(exc))
        return dashboard.error_page(request, 500, str(exc))

    async def http_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        if exc.status_code == 404:
            return await not_found(request, exc)
        return dashboard.error_page(request, exc.status_code, str(exc.detail))

    return {
        RunNotFound: not_found,
        InvalidArgument: bad_request,
        DatabaseUnavailable: unavailable,
        WerkflussError: failed,
        HTTPException: http_error,
    }


def create_app(engine: Engine, *, token: str | None = None, owns_engine: bool = False) -> Starlette:
    """The dashboard as an ASGI app.

    ``token`` enables the actions (``None``: read-only). The engine is opened
    when the app starts; it is closed when the app stops only if
    ``owns_engine``. Starting fails with :class:`ConfigurationError` when the
    engine's role lacks a grant the dashboard needs.

        app = create_app(Engine(dsn), token=os.environ.get("WERKFLUSS_DASHBOARD_TOKEN"), owns_engine=True)
    """
    dashboard = Dashboard(engine, token=token, owns_engine=owns_engine)
    routes = [
        Route("/", dashboard.home, name="home"),
        Route("/runs", dashboard.runs_page, name="runs"),
        Route("/api/runs", dashboard.runs_api, name="runs_api"),
        Route("/runs/{run_id:path}", dashboard.run_page, name="run"),
        Route("/api/runs/{run_id:path}", dashboard.run_api, name="run_api"),
        Route("/workers", dashboard.workers_page, name="workers"),
        Route("/api/workers", dashboard.workers_api, name="workers_api"),
        Route("/queues", dashboard.queues_page, name="queues"),
        Route("/api/queues", dashboard.queues_api, name="queues_api"),
        Route("/schedules", dashboard.schedules_page, name="schedules"),
        Route("/api/schedules", dashboard.schedules_api, name="schedules_api"),
        Route("/audit", dashboard.audit_page, name="audit"),
        Route("/actions/cancel", dashboard.actions.cancel, methods=["POST"], name="cancel"),
        Route("/actions/retry", dashboard.actions.retry, methods=["POST"], name="retry"),
        Route("/actions/send", dashboard.actions.send, methods=["POST"], name="send"),
        *(Route(f"/actions/schedule/{action}", getattr(dashboard.actions, action), methods=["POST"],
                name=f"{action}_schedule") for action in ("pause", "resume", "trigger", "delete")),
        Mount("/static", StaticFiles(directory=HERE / "static"), name="static"),
    ]
    app = Starlette(
        routes=routes,
        middleware=[Middleware(SecurityHeaders)],
        exception_handlers=_error_handlers(dashboard),
        lifespan=dashboard.lifespan,
    )
    app.state.dashboard = dashboard
    return app
