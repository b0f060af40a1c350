"""`GET /health`: 200 while the engine runs; 503 while it restarts or once it is dead (for load balancers)."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import JSONResponse

from server.engine import Engine


async def health(request: Request) -> JSONResponse:
    engine: Engine = request.app.state.engine
    status = engine.status
    if status != "ok":
        return JSONResponse(
            {"status": status, "model": engine.entry.name, "restarts": engine.restarts},
            status_code=503,
            headers={"Retry-After": str(engine.retry_after_s)},
        )
    return JSONResponse(
        {
            "status": "ok",
            "model": engine.entry.name,
            "running_requests": engine.running_requests,
            "restarts": engine.restarts,
        }
    )
