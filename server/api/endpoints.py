"""`GET /v1/endpoints`: every `model@provider` pair a request may name (seed 001)."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import JSONResponse

from server.config import Settings
from server.engine import Engine
from server.gateway.service import Gateway


async def list_endpoints(request: Request) -> JSONResponse:
    settings: Settings = request.app.state.settings
    engine: Engine = request.app.state.engine
    gateway: Gateway = request.app.state.gateway
    local = [*settings.served.names, *(version.name for version in engine.adapters.list())]
    data = [
        {"object": "endpoint", "id": f"{model}@{provider}", "model": model, "provider": provider}
        for model, provider in gateway.router.endpoints(local)
    ]
    return JSONResponse({"object": "list", "data": data})
