"""`GET /health`: 200 while the engine runs, 503 once it is dead (for load balancers)."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import JSONResponse

from server.engine import Engine


async def health(request: Request) -> JSONResponse:
    engine: Engine = request.app.state.engine
    if engine.is_dead:
        return JSONResponse({"status": "engine_dead", "model": engine.entry.name}, status_code=503)
    return JSONResponse({"status": "ok", "model": engine.entry.name, "running_requests": engine.running_requests})
