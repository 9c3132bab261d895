"""``python -m rtstream_cli.dev_sse``: the SSE server as `rtstream dev` runs it.

The production app (``rtstream_sse``, built exactly as its container builds it)
wrapped with what only a developer's machine needs, on the same port so the
dashboard is same-origin with ``/events``:

- ``/``, ``/static/{file}``: the dashboard (package ``rtstream_client``);
- ``/dashboard/config``: the URLs, and a dev token for the demo entity;
- ``/metrics``: the SSE server's metrics federated with the worker's and the
  housekeeping report's (:mod:`rtstream_cli.federate`).

Everything else (``/events``, ``/presence``, ``/healthz``, lifespan) goes to the
production app untouched. Configuration (set by `rtstream dev`):
``RTSTREAM_PUBLIC_WS_URL``, ``RTSTREAM_PUBLIC_SSE_URL``,
``RTSTREAM_DASHBOARD_DEV_TOKEN=1``, ``RTSTREAM_DEV_ENTITY``,
``RTSTREAM_METRICS_FEDERATE``.
"""

from __future__ import annotations

import importlib.util
import mimetypes
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import httpx
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response
from starlette.routing import Route

from rtstream.auth import issue_dev_token
from rtstream.errors import NotFound
from rtstream.history import MAX_REWIND
from rtstream.settings import Settings

from .federate import federated, parse_targets

STATIC_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$")
DEV_TOKEN_TTL_SECONDS = 3600


@dataclass(frozen=True)
class DevConfig:
    public_ws_url: str = ""  # RTSTREAM_PUBLIC_WS_URL
    public_sse_url: str = ""  # RTSTREAM_PUBLIC_SSE_URL (default: this request's /events)
    dev_token: bool = False  # RTSTREAM_DASHBOARD_DEV_TOKEN=1: hand the dashboard a dev token
    dev_entity: str = "demo-entity"  # RTSTREAM_DEV_ENTITY
    dev_user: str = "demo-user"
    metrics_federate: tuple[tuple[str, str], ...] = ()  # RTSTREAM_METRICS_FEDERATE=name=http://h:p/metrics,...

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> "DevConfig":
        settings = Settings.from_env(env, own=("dev",))  # the one reader of the environment
        return cls(
            public_ws_url=settings.dev.public_ws_url,
            public_sse_url=settings.dev.public_sse_url,
            dev_token=settings.dev.dashboard_dev_token,
            dev_entity=settings.runtime.dev_entity,
            metrics_federate=parse_targets(settings.dev.metrics_federate),
        )


def static_dir() -> Path | None:
    """``rtstream_client/static`` when that package is installed or present."""
    spec = importlib.util.find_spec("rtstream_client")
    if spec is None or not spec.submodule_search_locations:
        return None
    for location in spec.submodule_search_locations:
        candidate = Path(location) / "static"
        if candidate.is_dir():
            return candidate
    return None


def _not_found(message: str) -> JSONResponse:
    error = NotFound(message)
    return JSONResponse({"code": error.code, "message": error.message}, status_code=error.status)


class DevSSEApp:
    """The production SSE app plus the dev routes (plain ASGI dispatch: the
    production app keeps its own hot path, middleware and lifespan)."""

    DEV_PATHS = frozenset({"/", "/dashboard/config", "/metrics"})

    def __init__(self, production: Any, settings: Settings, config: DevConfig):
        self.production = production
        self.rt = production.rt  # the graceful shutdown drains the production streams
        self.settings = settings
        self.config = config
        self.static = static_dir()
        self._dev = Starlette(routes=[
            Route("/", self.dashboard),
            Route("/static/{name}", self.static_file),
            Route("/dashboard/config", self.dashboard_config),
            Route("/metrics", self.metrics),
        ], exception_handlers={404: self.no_route})

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        path = scope.get("path", "")
        if scope["type"] == "http" and (path in self.DEV_PATHS or path.startswith("/static/")):
            await self._dev(scope, receive, send)
            return
        await self.production(scope, receive, send)

    async def no_route(self, request: Request, exc: Exception) -> Response:
        return _not_found("no such route")  # coded, like every refusal of the production app

    async def dashboard(self, request: Request) -> Response:
        if self.static is None or not (self.static / "dashboard.html").is_file():
            return _not_found("dashboard not installed (package rtstream_client)")
        return FileResponse(self.static / "dashboard.html", media_type="text/html; charset=utf-8",
                            headers={"cache-control": "no-cache"})

    async def static_file(self, request: Request) -> Response:
        name = request.path_params["name"]
        path = self.static / name if self.static is not None and STATIC_NAME.match(name) else None
        if path is None or not path.is_file():
            return _not_found("no such static file")
        media_type = mimetypes.guess_type(name)[0] or "application/octet-stream"
        if name.endswith(".js"):
            media_type = "text/javascript; charset=utf-8"
        return FileResponse(path, media_type=media_type, headers={"cache-control": "no-cache"})

    async def dashboard_config(self, request: Request) -> Response:
        config = self.config
        sse_url = config.public_sse_url or str(request.url.replace(path="/events", query=""))
        body: dict[str, Any] = {"wsUrl": config.public_ws_url or None, "sseUrl": sse_url,
                                "token": None, "entityId": None, "userId": None,
                                # a freshly opened dashboard starts with the entity's latest events
                                "rewind": MAX_REWIND}
        if config.dev_token and self.settings.jwt_secret:
            body["token"] = issue_dev_token(self.settings.jwt_secret, user_id=config.dev_user,
                                            entity_id=config.dev_entity, role="user",
                                            ttl_seconds=DEV_TOKEN_TTL_SECONDS)
            body["entityId"] = config.dev_entity
            body["userId"] = config.dev_user
        return JSONResponse(body, headers={"cache-control": "no-store"})

    async def metrics(self, request: Request) -> Response:
        # the production /metrics, in process, then the other parts' over HTTP
        transport = httpx.ASGITransport(app=self.production)
        async with httpx.AsyncClient(transport=transport, base_url="http://sse") as http:
            own = await http.get("/metrics")
        if not self.config.metrics_federate:
            return Response(own.content, status_code=own.status_code, media_type=own.headers.get("content-type"))
        text = await federated("sse", own.text, self.config.metrics_federate)
        return Response(text, media_type="text/plain; version=0.0.4; charset=utf-8")


def build_dev_app(env: Mapping[str, str] | None = None) -> DevSSEApp:
    from rtstream_sse.__main__ import build_app

    env = dict(os.environ if env is None else env)
    production = build_app(env)
    return DevSSEApp(production, production.rt.settings, DevConfig.from_env(env))


def main() -> None:
    from rtstream_sse.__main__ import configure_logging, serve

    configure_logging()
    serve(build_dev_app())


if __name__ == "__main__":
    main()
