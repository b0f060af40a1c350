"""`GET /v1/endpoints`: every `model@provider` pair a request may name (seed 001)."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response

from server.api.adapters import visible
from server.api.middleware import principal_of
from server.api.protocol_resources import Endpoint, EndpointList
from server.gateway.routing import LOCAL_PROVIDER
from server.serving.catalog import ModelCatalog


async def list_endpoints(request: Request) -> Response:
    catalog: ModelCatalog = request.app.state.catalog
    principal = principal_of(request.scope)
    hidden = {version.name for version in catalog.adapters.list()} - {
        version.name for version in visible(catalog.adapters, principal)
    }
    data = [
        Endpoint(id=f"{model}@{provider}", model=model, provider=provider)
        for model, provider in catalog.endpoints()
        if model not in hidden or provider != LOCAL_PROVIDER
    ]
    return Response(EndpointList(data=data).model_dump_json(), media_type="application/json")
