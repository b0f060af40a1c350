"""Pure ASGI middleware counting every HTTP request by route template, method and status, with its duration.

The route label is the matching route's path template (`/v1/memory/{memory_group}`), never the raw path, so the
label set stays bounded; a path no route matches counts as `unmatched`. It sits outside the key check, so 401s
count too. The duration runs until the response's last byte (a stream's end).
"""

from __future__ import annotations

import time

from starlette.routing import Match
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from server.observability.metrics import Metrics

UNMATCHED = "unmatched"


def route_template(scope: Scope) -> str:
    """The path template of the route that serves this scope (one with another method still names it)."""
    partial = None
    for route in scope["app"].routes:
        match, _ = route.matches(scope)
        if match is Match.FULL:
            return getattr(route, "path", UNMATCHED) or "/"
        if match is Match.PARTIAL and partial is None:
            partial = getattr(route, "path", None)
    return partial or UNMATCHED


class MetricsMiddleware:
    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        route = route_template(scope)  # before the app runs: a Mount rewrites the scope's root_path
        status = 500  # what the client gets when the app fails before answering

        async def counting_send(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        self.metrics.http_in_flight.inc()
        try:
            await self.app(scope, receive, counting_send)
        finally:
            self.metrics.http_in_flight.dec()
            self.metrics.http_request(route, scope["method"], status, time.perf_counter() - started)
