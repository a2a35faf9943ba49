"""The HTTP API of ``reconciler run`` (SPEC section 5), a FastAPI application.

Top layer beside the agent: it never imports the agent, it is handed an ``AgentView`` (the
``Agent`` satisfies it). Handlers only read the agent's published state or queue a trigger; no
request ever plans or applies in the API thread. The OpenAPI document is served at
``/openapi.json``. Request bodies are limited to ``MAX_BODY`` bytes (413 beyond). ``GET /`` is the
status page for people (``reconciler.api.page``), with its script and style sheet under
``/static/`` and the part it refreshes at ``/ui/live``.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any, Protocol

import structlog
from fastapi import FastAPI, Header, HTTPException, Request, Response
from fastapi.responses import HTMLResponse
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from pydantic import BaseModel, Field
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from reconciler import __version__
from reconciler.api.auth import bearer_ok, webhook_ok
from reconciler.api.page import HEADERS, DiffCache, FleetCache, FleetSource, PageInput, Renderer
from reconciler.api.page import etag as page_etag
from reconciler.status import Fleet, Status

MAX_BODY = 1024 * 1024
log = structlog.get_logger("reconciler.api")


class AgentView(Protocol):
    """What the API needs of the running agent."""

    @property
    def registry(self) -> CollectorRegistry: ...

    def status(self) -> Status: ...

    def pending_plan_json(self) -> str | None: ...

    def plan_error(self) -> str | None: ...

    def alive(self) -> bool: ...

    def fleet(self) -> Fleet: ...

    def request(self, reason: str) -> None: ...


class Health(BaseModel):
    """``GET /healthz``."""

    alive: bool
    state: str


class Accepted(BaseModel):
    """``POST /sync`` and ``POST /hooks/git``: the request was taken (202)."""

    queued: bool = Field(description="whether a reconcile was queued (coalesced with any pending one)")
    reason: str = ""


class PlanDocument(BaseModel):
    """``GET /diff``: the pending plan, exactly as ``reconciler diff --format json`` prints it."""

    revision: str | None
    changes: list[dict[str, Any]]


class _TooLarge(Exception):
    pass


class BodyLimit:
    """ASGI middleware: 413 for a request body over ``limit`` bytes, declared or streamed."""

    def __init__(self, app: ASGIApp, limit: int = MAX_BODY) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        for name, value in scope.get("headers", []):
            if name == b"content-length" and (not value.isdigit() or int(value) > self.limit):
                await _plain(send, 413, b"request body too large\n")
                return
        received = 0
        started = False

        async def limited() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.limit:
                    raise _TooLarge
            return message

        async def tracking_send(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, limited, tracking_send)
        except _TooLarge:
            if not started:
                await _plain(send, 413, b"request body too large\n")


async def _plain(send: Send, status: int, body: bytes) -> None:
    await send({"type": "http.response.start", "status": status, "headers": [(b"content-type", b"text/plain")]})
    await send({"type": "http.response.body", "body": body})


def create_app(
    view: AgentView,
    *,
    token: str | None,
    webhook_secret: str | None,
    branch: str,
    fleet: FleetSource | None = None,
) -> FastAPI:
    """The application; ``token`` guards ``POST /sync``, ``webhook_secret`` guards ``POST /hooks/git``.

    ``fleet`` returns the document ``GET /fleet`` serves (``{"hosts": [...]}``; default: the view's
    ``reconciler_hosts``, read at most every few seconds); the status page shows its hosts when
    there are any.
    """
    app = FastAPI(
        title="postfix-reconciler agent",
        version=__version__,
        description="Status, pending diff, metrics and triggers of `reconciler run` (SPEC section 5).",
        docs_url=None,  # the interactive pages load scripts from a CDN; the document is enough
        redoc_url=None,
    )

    _page_routes(app, view, fleet, token_required=token is not None)
    _document_routes(app, view)
    _trigger_routes(app, view, token=token, webhook_secret=webhook_secret, branch=branch)
    return app


def _page_routes(app: FastAPI, view: AgentView, fleet: FleetSource | None, *, token_required: bool) -> None:
    """``/``, ``/ui/live`` and ``/static/NAME``: the status page for people."""
    renderer = Renderer()
    diff_cache = DiffCache()

    def view_fleet() -> Mapping[str, Any]:
        return view.fleet().model_dump(mode="json")  # the same document GET /fleet serves

    fleet_cache = FleetCache(fleet if fleet is not None else view_fleet)

    def page_input() -> PageInput:
        pending = view.pending_plan_json()
        return PageInput(
            status=view.status(),
            pending=diff_cache.get(pending) if pending is not None else None,
            fleet=fleet_cache.get(),
            alive=view.alive(),
            token_required=token_required,
        )

    @app.get("/", response_class=HTMLResponse)
    def page() -> Response:
        """The status page for people: complete without JavaScript; its script follows ``/ui/live``."""
        html, _ = renderer.page(page_input())
        return HTMLResponse(html, headers=HEADERS)

    @app.get("/ui/live", include_in_schema=False)
    def live(if_none_match: str | None = Header(default=None)) -> Response:
        """The part of the status page that changes, for its script; 304 when it did not."""
        html = renderer.live(page_input())
        tag = page_etag(html)
        if if_none_match is not None and tag in (t.strip() for t in if_none_match.split(",")):
            return Response(status_code=304, headers={**HEADERS, "ETag": tag})
        return HTMLResponse(html, headers={**HEADERS, "ETag": tag})

    @app.get("/static/{name}", include_in_schema=False)
    def static(name: str) -> Response:
        """The page's own script, style sheet and icon; nothing else."""
        found = renderer.static.get(name)
        if found is None:
            raise HTTPException(status_code=404, detail="not found")
        content, media_type = found
        return Response(
            content, media_type=media_type, headers={"Cache-Control": "no-cache", "X-Content-Type-Options": "nosniff"}
        )


def _document_routes(app: FastAPI, view: AgentView) -> None:
    """``/healthz``, ``/status``, ``/diff``, ``/fleet`` and ``/metrics``: the documents (SPEC 5)."""

    @app.get("/healthz", response_model=Health)
    def healthz() -> Response:
        """200 while the agent's loop is alive, 503 otherwise."""
        alive = view.alive()
        body = Health(alive=alive, state=view.status().state.value)
        return Response(body.model_dump_json(), status_code=200 if alive else 503, media_type="application/json")

    @app.get("/status", response_model=Status)
    def status() -> Status:
        """The agent's status document."""
        return view.status()

    @app.get(
        "/diff",
        response_model=PlanDocument,
        responses={409: {"description": "the head has no plan (it failed)"}, 503: {"description": "not planned yet"}},
    )
    def diff() -> Response:
        """The pending plan of the branch head (no changes when synced)."""
        pending = view.pending_plan_json()
        if pending is None:
            error = view.plan_error()
            if error is None:
                raise HTTPException(status_code=503, detail="no plan yet: the first reconcile is running")
            raise HTTPException(status_code=409, detail=f"no plan for the branch head: {error}")
        return Response(pending, media_type="application/json")

    @app.get("/fleet", response_model=Fleet, responses={503: {"description": "the database cannot be read"}})
    def fleet_document() -> Fleet:
        """Every host of the fleet as ``reconciler_hosts`` says (SPEC 6), read from the database now."""
        try:
            return view.fleet()
        except Exception as exc:
            raise HTTPException(status_code=503, detail=f"cannot read the fleet: {exc}") from None

    @app.get("/metrics", response_class=Response, responses={200: {"content": {CONTENT_TYPE_LATEST: {}}}})
    def metrics() -> Response:
        """Prometheus text format."""
        return Response(generate_latest(view.registry), media_type=CONTENT_TYPE_LATEST)


def _trigger_routes(
    app: FastAPI, view: AgentView, *, token: str | None, webhook_secret: str | None, branch: str
) -> None:
    """``POST /sync`` (bearer token) and ``POST /hooks/git`` (webhook signature): reconcile now."""

    def require_token(authorization: str | None) -> None:
        if token is not None and not bearer_ok(authorization, token):
            raise HTTPException(
                status_code=401, detail="missing or invalid bearer token", headers={"WWW-Authenticate": "Bearer"}
            )

    @app.post("/sync", status_code=202, response_model=Accepted, responses={401: {"description": "bad token"}})
    def sync(authorization: str | None = Header(default=None)) -> Accepted:
        """Reconcile now (queued behind the attempt in progress); applies even without self-heal."""
        require_token(authorization)
        view.request("sync")
        log.info("api.sync")
        return Accepted(queued=True)

    @app.post("/hooks/git", status_code=202, response_model=Accepted, responses={401: {"description": "bad signature"}})
    async def hook(
        request: Request,
        x_hub_signature_256: str | None = Header(default=None),
        x_gitlab_token: str | None = Header(default=None),
    ) -> Accepted:
        """A push webhook (GitHub or GitLab): fetch and reconcile now."""
        body = await request.body()
        if webhook_secret is not None and not webhook_ok(
            body, webhook_secret, github_signature=x_hub_signature_256, gitlab_token=x_gitlab_token
        ):
            log.warning("api.hook_refused", client=request.client.host if request.client else None)
            raise HTTPException(status_code=401, detail="missing or invalid webhook signature")
        ref = _pushed_ref(body)
        if ref is not None and ref != f"refs/heads/{branch}":
            return Accepted(queued=False, reason=f"push to {ref}, not to refs/heads/{branch}")
        view.request("webhook")
        log.info("api.hook", ref=ref)
        return Accepted(queued=True)


def _pushed_ref(body: bytes) -> str | None:
    """The ``ref`` of a GitHub or GitLab push payload, None for anything else."""
    try:
        data = json.loads(body)
    except ValueError:
        return None
    ref = data.get("ref") if isinstance(data, dict) else None
    return ref if isinstance(ref, str) and ref.startswith("refs/") else None


def wrap(app: FastAPI, limit: int = MAX_BODY) -> ASGIApp:
    """The application behind the body size limit, as served."""
    return BodyLimit(app, limit)
