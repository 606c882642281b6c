"""The dashboard's actions: cancel a run, retry it, send a payload to a hook;
pause, resume, trigger or delete a schedule.

Each one is a POST, allowed only with the access token (see
:mod:`~werkfluss.cli.dashboard.guard`). An allowed action is recorded in
``werkfluss.audit`` (when, what, which run, the outcome, the client's
address; for a schedule its name in ``detail``) and logged as
``dashboard.action``; a refused one is logged as ``dashboard.action_refused``
(level warning) and changes nothing.

The page's JavaScript posts JSON with the token in a header and gets JSON
back; a plain HTML form (``access_token`` field) gets a redirect to the run's
page (the schedules page for a schedule action that started no run), or an
error page.
"""

from __future__ import annotations

import json
import urllib.parse
from typing import TYPE_CHECKING, Any

from starlette.requests import Request
from starlette.responses import JSONResponse, RedirectResponse, Response

from werkfluss import limits, serializer, telemetry
from werkfluss.cli.dashboard.guard import FORM_FIELD, Guard
from werkfluss.engine import Engine
from werkfluss.errors import (
    DatabaseUnavailable,
    HookRefused,
    InvalidArgument,
    RunNotFound,
    ScheduleNotFound,
    WerkflussError,
)
from werkfluss.store import dashboard as store

if TYPE_CHECKING:
    from werkfluss.cli.dashboard.app import Dashboard

MAX_BODY = 1 << 20  # bytes: a hook payload typed into a form is small
AUDITED_PAYLOAD = 2000  # characters of a payload kept in the audit record (beyond that, its size)

#: What a plain form's redirect tells the run page (``?done=<code>``): fixed texts only.
DONE = {
    "cancel:cancelled": "Cancelled.",
    "cancel:already_finished": "The run had already finished; nothing to cancel.",
    "retry:retried": "Retrying: the run resumes from where it failed.",
    "retry:not_retryable": "Only a failed or cancelled run can be retried.",
    "send:delivered": "Payload delivered.",
    "send:stored": "Payload stored; no hook with this token yet.",
    "pause:paused": "Paused: the schedule starts no run until it is resumed.",
    "pause:already_paused": "The schedule was paused already.",
    "resume:resumed": "Resumed: the schedule runs from its next tick on.",
    "resume:not_paused": "The schedule was not paused; nothing to resume.",
    "trigger:triggered": "Triggered: a run of the schedule started now.",
    "delete:deleted": "Schedule deleted; the runs it started are kept.",
}


class BodyTooLarge(InvalidArgument):
    """A request body over :data:`MAX_BODY` (answered with 413)."""


async def read_fields(request: Request) -> dict[str, str]:
    """The request's fields, from a JSON object or a form (``application/x-www-form-urlencoded``)."""
    chunks = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > MAX_BODY:
            raise BodyTooLarge(f"the request is larger than {MAX_BODY} bytes")
        chunks.append(chunk)
    body = b"".join(chunks).decode("utf-8", "replace")
    if request.headers.get("content-type", "").startswith("application/json"):
        try:
            data = json.loads(body) if body.strip() else {}
        except ValueError as err:
            raise InvalidArgument(f"the request body is not JSON: {err}") from None
        if not isinstance(data, dict):
            raise InvalidArgument("the request body must be a JSON object")
        return {str(k): v if isinstance(v, str) else json.dumps(v) for k, v in data.items()}
    return {k: v[-1] for k, v in urllib.parse.parse_qs(body, keep_blank_values=True).items()}


def _status_of(err: WerkflussError) -> int:
    if isinstance(err, (RunNotFound, ScheduleNotFound)):
        return 404
    if isinstance(err, InvalidArgument):
        return 400
    if isinstance(err, DatabaseUnavailable):
        return 503
    return 500


class Actions:
    """The POST handlers."""

    def __init__(self, engine: Engine, guard: Guard, dashboard: Dashboard) -> None:
        self.engine = engine
        self.guard = guard
        self.dashboard = dashboard

    async def cancel(self, request: Request) -> Response:
        return await self._act(request, "cancel", self._cancel)

    async def retry(self, request: Request) -> Response:
        return await self._act(request, "retry", self._retry)

    async def send(self, request: Request) -> Response:
        return await self._act(request, "send", self._send)

    async def pause(self, request: Request) -> Response:
        return await self._act(request, "pause", self._pause)

    async def resume(self, request: Request) -> Response:
        return await self._act(request, "resume", self._resume)

    async def trigger(self, request: Request) -> Response:
        return await self._act(request, "trigger", self._trigger)

    async def delete(self, request: Request) -> Response:
        return await self._act(request, "delete", self._delete)

    # --- the actions themselves --------------------------------------------------------

    async def _cancel(self, fields: dict[str, str]) -> tuple[str | None, str, dict[str, Any]]:
        run_id = limits.check_existing_run_id(fields.get("run_id"))
        cancelled = await self.engine.cancel(run_id)
        return run_id, "cancelled" if cancelled else "already_finished", {}

    async def _retry(self, fields: dict[str, str]) -> tuple[str | None, str, dict[str, Any]]:
        run_id = limits.check_existing_run_id(fields.get("run_id"))
        retried = await self.engine.retry(run_id)
        return run_id, "retried" if retried else "not_retryable", {}

    async def _send(self, fields: dict[str, str]) -> tuple[str | None, str, dict[str, Any]]:
        token = limits.check_token(fields.get("token"))
        text = fields.get("payload", "").strip() or "null"
        try:
            value = json.loads(text)
        except ValueError as err:
            raise InvalidArgument(
                f"the payload must be JSON, e.g. {{\"approved\": true}}; it is not: {err}"
            ) from None
        payload = serializer.dumps(value, what="the hook payload")
        sent = await store.send(self.engine.connector, token=token, payload=payload)
        detail: dict[str, Any] = {"token": token}
        if len(payload) <= AUDITED_PAYLOAD:
            detail["payload"] = value
        else:
            detail["payload_bytes"] = len(payload.encode())
        run_id = sent.run_id or fields.get("run_id") or None
        return run_id, sent.outcome, detail

    async def _pause(self, fields: dict[str, str]) -> tuple[str | None, str, dict[str, Any]]:
        name = limits.check_schedule_name(fields.get("schedule"))
        paused = await self.engine.pause_schedule(name)
        return None, "paused" if paused else "already_paused", {"schedule": name}

    async def _resume(self, fields: dict[str, str]) -> tuple[str | None, str, dict[str, Any]]:
        name = limits.check_schedule_name(fields.get("schedule"))
        resumed = await self.engine.resume_schedule(name)
        return None, "resumed" if resumed else "not_paused", {"schedule": name}

    async def _trigger(self, fields: dict[str, str]) -> tuple[str | None, str, dict[str, Any]]:
        name = limits.check_schedule_name(fields.get("schedule"))
        handle = await self.engine.trigger_schedule(name)
        return handle.run_id, "triggered", {"schedule": name}

    async def _delete(self, fields: dict[str, str]) -> tuple[str | None, str, dict[str, Any]]:
        name = limits.check_schedule_name(fields.get("schedule"))
        await self.engine.delete_schedule(name)
        return None, "deleted", {"schedule": name}

    # --- the common path ---------------------------------------------------------------

    async def _act(self, request: Request, action: str, perform: Any) -> Response:
        client = request.client.host if request.client else None
        log = telemetry.logger()
        try:
            fields = await read_fields(request)
        except BodyTooLarge as err:
            return self._answer(request, 413, str(err))
        except InvalidArgument as err:
            return self._answer(request, 400, str(err))
        refusal = self.guard.check(request.headers, host=request.headers.get("host"),
                                   given=fields.get(FORM_FIELD))
        if refusal is not None:
            log.warning("dashboard.action_refused", action=action, reason=refusal.reason, client=client)
            return self._answer(request, 403, refusal.message, reason=refusal.reason)
        try:
            run_id, outcome, detail = await perform(fields)
        except WerkflussError as err:
            status = _status_of(err)
            log.warning("dashboard.action_failed", action=action, error=str(err), client=client)
            return self._answer(request, status, str(err))
        detail = {"outcome": outcome, **detail}
        try:
            await store.record_action(self.engine.connector, action=action, run_id=run_id, detail=detail,
                                      client=client)
        except WerkflussError as err:
            # The action happened; say so rather than hide it.
            log.error("dashboard.audit_failed", action=action, run_id=run_id, outcome=outcome, error=str(err))
            return self._answer(request, 500, f"{action} done ({outcome}) but not recorded in "
                                f"werkfluss.audit: {err}", run_id=run_id, outcome=outcome)
        log.info("dashboard.action", action=action, run_id=run_id, outcome=outcome, client=client)
        if action == "send" and outcome not in ("delivered", "stored"):
            return self._answer(request, 409, str(HookRefused(detail["token"], outcome)),
                                run_id=run_id, outcome=outcome)
        return self._answer(request, 200, DONE[f"{action}:{outcome}"], run_id=run_id, outcome=outcome,
                            done=f"{action}:{outcome}", schedule=detail.get("schedule"))

    def _answer(self, request: Request, status: int, message: str, *, run_id: str | None = None,
                outcome: str | None = None, reason: str | None = None, done: str | None = None,
                schedule: str | None = None) -> Response:
        ok = status == 200
        if "application/json" in request.headers.get("accept", ""):
            body: dict[str, Any] = {"ok": ok, "message": message}
            if outcome is not None:
                body["outcome"] = outcome
            if reason is not None:
                body["reason"] = reason
            if run_id is not None:
                body["run_id"] = run_id
            if schedule is not None:
                body["schedule"] = schedule
            return JSONResponse(body, status_code=status)
        if ok and done is not None:
            query = urllib.parse.urlencode({"done": done})
            if run_id is not None:
                return RedirectResponse(f"{self.dashboard.run_url(request, run_id)}?{query}", status_code=303)
            if schedule is not None:
                schedules = f"{request.scope.get('root_path', '')}/schedules"
                return RedirectResponse(f"{schedules}?{query}", status_code=303)
        return self.dashboard.error_page(request, status, message)
