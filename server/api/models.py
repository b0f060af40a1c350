"""`GET /v1/models`: every served model, its aliases and its LoRA adapters (`parent`: the base), in OpenAI's list
shape; `loaded` and `state` say which models are awake (like `ollama ps`)."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response

from server.api.adapters import visible
from server.api.middleware import principal_of
from server.api.protocol import ModelCard, ModelList
from server.engine.pool import EnginePool
from server.serving.catalog import ModelCatalog


async def list_models(request: Request) -> Response:
    catalog: ModelCatalog = request.app.state.catalog
    pool: EnginePool = request.app.state.engines
    principal = principal_of(request.scope)
    created = request.app.state.started_at
    cards: list[ModelCard] = []
    lengths: dict[str, int] = {}
    states: dict[str, str] = {}
    for entry in catalog.models:
        slot = pool.slot(entry.name)
        engine = slot.engine if slot is not None else None
        lengths[entry.name] = engine.max_model_len if engine is not None else entry.max_model_len
        states[entry.name] = slot.state if slot is not None else "unloaded"
        # Filesystem paths are for admins only.
        root = entry.source if principal.admin or not entry.is_local else entry.name
        cards += [
            ModelCard(
                id=name,
                created=created,
                root=root,
                max_model_len=lengths[entry.name],
                loaded=states[entry.name] == "awake",
                state=states[entry.name],
            )
            for name in entry.names
        ]
    shown = {version.name for version in visible(catalog.adapters, principal)}
    cards += [
        ModelCard(
            id=version.name,
            created=created,
            root=str(version.path) if principal.admin else f"{version.name}@v{version.version}",
            parent=parent,
            max_model_len=lengths[parent],
            loaded=states[parent] == "awake",
            state=states[parent],
        )
        for parent, version in catalog.adapters.listed()
        if version.name in shown
    ]
    return Response(ModelList(data=cards).model_dump_json(), media_type="application/json")
