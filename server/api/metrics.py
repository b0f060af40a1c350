"""`GET /metrics`: Prometheus exposition of prometheus-client's default registry (vLLM's engine metrics and the
process's) followed by this app's own (`llm_server_*`, server/observability/metrics.py)."""

from __future__ import annotations

from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, generate_latest
from starlette.requests import Request
from starlette.responses import Response

from server.adaption.runner import AdaptionService
from server.engine.pool import EnginePool
from server.observability.metrics import Metrics
from server.serving.catalog import ModelCatalog


async def metrics(request: Request) -> Response:
    own: Metrics = request.app.state.metrics
    adaption: AdaptionService = request.app.state.adaption
    catalog: ModelCatalog = request.app.state.catalog
    # State gauges are read now, from the stores, so they hold across restarts.
    own.jobs_by_state(await adaption.jobs.count_by_state())
    own.adapters_loaded.set(len(catalog.adapters.list()))
    pool: EnginePool = request.app.state.engines
    for engine in pool.engines():
        own.model_lora_state(engine.entry.name, engine.lora_state)
    return Response(generate_latest(REGISTRY) + own.exposition(), media_type=CONTENT_TYPE_LATEST)
