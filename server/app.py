"""`build_app(settings)`: the route list, the lifespan (engine start/stop) and the middleware."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from pydantic import ValidationError
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.routing import Route

from server.api.adapters import (
    create_adapter,
    delete_adapter,
    list_adapters,
    vllm_load_lora_adapter,
    vllm_unload_lora_adapter,
)
from server.api.chat import chat_completions
from server.api.errors import APIError, handle_exception
from server.api.health import health
from server.api.metrics import metrics
from server.api.middleware import APIKeyMiddleware, RequestIdMiddleware
from server.api.models import list_models
from server.api.protocol import InvalidParam
from server.config import Settings
from server.engine import Engine
from server.engine.adapters import AdapterError
from server.engine.errors import EngineError

PUBLIC_PATHS = ("/health", "/metrics")



def build_app(settings: Settings) -> Starlette:
    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        async with Engine.running(settings.served, settings.adapters_dir) as engine:
            app.state.settings = settings
            app.state.engine = engine
            app.state.started_at = int(time.time())
            yield

    routes = [
        Route("/v1/chat/completions", chat_completions, methods=["POST"]),
        Route("/v1/models", list_models, methods=["GET"]),
        Route("/v1/adapters", create_adapter, methods=["POST"]),
        Route("/v1/adapters", list_adapters, methods=["GET"]),
        Route("/v1/adapters/{name}", delete_adapter, methods=["DELETE"]),
        Route("/v1/load_lora_adapter", vllm_load_lora_adapter, methods=["POST"]),
        Route("/v1/unload_lora_adapter", vllm_unload_lora_adapter, methods=["POST"]),
        Route("/health", health, methods=["GET"]),
        Route("/metrics", metrics, methods=["GET"]),
    ]
    middleware = [
        Middleware(RequestIdMiddleware),
        Middleware(APIKeyMiddleware, keys=settings.api_keys, public_paths=PUBLIC_PATHS),
    ]
    exception_handlers = {
        APIError: handle_exception,
        InvalidParam: handle_exception,
        ValidationError: handle_exception,
        EngineError: handle_exception,
        AdapterError: handle_exception,
        HTTPException: handle_exception,
        Exception: handle_exception,
    }
    return Starlette(
        routes=routes,
        middleware=middleware,
        exception_handlers=exception_handlers,
        lifespan=lifespan,
    )
