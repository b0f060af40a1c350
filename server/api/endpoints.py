"""`GET /v1/endpoints`: every `model@provider` pair a request may name (seed 001)."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response

from server.api.protocol_resources import Endpoint, EndpointList
from server.serving.catalog import ModelCatalog


async def list_endpoints(request: Request) -> Response:
    catalog: ModelCatalog = request.app.state.catalog
    data = [
        Endpoint(id=f"{model}@{provider}", model=model, provider=provider) for model, provider in catalog.endpoints()
    ]
    return Response(EndpointList(data=data).model_dump_json(), media_type="application/json")
