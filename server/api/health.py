"""`GET /health`: 200 while the server's own engine runs; 503 while it restarts or once it is dead (for load
balancers). `models`: every served model's state (awake, loading, sleeping, unloaded, ...), like `ollama ps`."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import JSONResponse

from server.engine import Engine
from server.engine.pool import EnginePool


async def health(request: Request) -> JSONResponse:
    engine: Engine = request.app.state.engine
    pool: EnginePool = request.app.state.engines
    models = pool.describe()
    status = engine.status
    if status != "ok":
        return JSONResponse(
            {"status": status, "model": engine.entry.name, "restarts": engine.restarts, "models": models},
            status_code=503,
            headers={"Retry-After": str(engine.retry_after_s)},
        )
    return JSONResponse(
        {
            "status": "ok",
            "model": engine.entry.name,
            "running_requests": sum(model["running_requests"] for model in models.values()),
            "restarts": engine.restarts,
            "lora": engine.lora_state,  # off: no LoRA slots yet (lora.enabled: auto), switching, on
            "models": models,
            "sleep_mode": pool.sleep_mode,  # idle models sleep (vLLM sleep mode, GPU) rather than unload
        }
    )
