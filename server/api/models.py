"""`GET /v1/models`: the served model, its aliases and its LoRA adapters (`parent`: the base), in OpenAI's list shape."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response

from server.api.adapters import visible
from server.api.middleware import principal_of
from server.api.protocol import ModelCard, ModelList
from server.engine import Engine
from server.serving.catalog import ModelCatalog


async def list_models(request: Request) -> Response:
    catalog: ModelCatalog = request.app.state.catalog
    engine: Engine = request.app.state.engine
    served = catalog.served
    principal = principal_of(request.scope)
    # Filesystem paths are for admins only.
    base_root = served.source if principal.admin or not served.is_local else served.name
    cards = [
        ModelCard(
            id=name,
            created=request.app.state.started_at,
            root=base_root,
            max_model_len=engine.max_model_len,
        )
        for name in served.names
    ] + [
        ModelCard(
            id=version.name,
            created=request.app.state.started_at,
            root=str(version.path) if principal.admin else f"{version.name}@v{version.version}",
            parent=served.name,
            max_model_len=engine.max_model_len,
        )
        for version in visible(catalog.adapters, principal)
    ]
    return Response(ModelList(data=cards).model_dump_json(), media_type="application/json")
