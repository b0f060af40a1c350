"""`build_app(settings)`: the route list, the lifespan (engine start/stop) and the middleware."""

from __future__ import annotations

import asyncio
import sqlite3
import time
import uuid
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager

import psycopg
from pydantic import ValidationError
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.middleware.cors import CORSMiddleware
from starlette.routing import Mount, Route

from server.adaption.jobs import JobStore
from server.adaption.runner import AdaptionService
from server.api.adapters import (
    create_adapter,
    delete_adapter,
    list_adapter_versions,
    list_adapters,
    vllm_load_lora_adapter,
    vllm_unload_lora_adapter,
)
from server.api.chat import chat_completions
from server.api.completions import create_completion
from server.api.console import CONSOLE_PATH, console_app, console_paths
from server.api.embeddings import create_embeddings
from server.api.endpoints import list_endpoints
from server.api.errors import handle_exception
from server.api.fine_tuning import cancel_job, create_job, list_job_events, list_jobs, retrieve_job
from server.api.health import health
from server.api.keys import add_credits, create_key, get_key, list_keys, revoke_key
from server.api.memory import (
    add_memories,
    curate_group,
    delete_group,
    delete_memory,
    get_group,
    get_memory,
    list_groups,
    list_memories,
    memory_audit,
    search_memories,
    update_memory,
)
from server.api.metrics import metrics as metrics_endpoint
from server.api.middleware import APIKeyMiddleware, FairnessMiddleware, RequestGuardMiddleware, RequestIdMiddleware
from server.api.models import list_models
from server.api.moderations import create_moderation
from server.api.observe import MetricsMiddleware
from server.api.responses import create_response, delete_response, get_response, list_input_items
from server.api.stored_chat import (
    delete_chat_completion,
    get_chat_completion,
    list_chat_completion_messages,
    list_chat_completions,
    update_chat_completion,
)
from server.api.templates import create_template, delete_template, get_template, list_templates, update_template
from server.api.tokenize import detokenize, tokenize
from server.api.usage import get_request_usage, get_usage
from server.config import GuardrailSettings, Settings
from server.conversations.store import CONVERSATIONS_DATABASE, ConversationStore
from server.engine import ChatTurn, Engine, GenerationOptions
from server.engine.pool import EnginePool, PoolSettings
from server.engine.registry import shared_adapter_registry
from server.errors import ServerError
from server.gateway.keys import KEYS_DATABASE, KeyStore
from server.gateway.limits import SharedRateLimiter, SharedSlots
from server.gateway.routing import Router
from server.gateway.service import Gateway
from server.gateway.templates import TemplateStore
from server.gateway.usage import UsageStore
from server.guardrails.checker import Checker, checker_model_path, open_checker
from server.guardrails.topics import TopicJudge
from server.memory.curation import CONSOLIDATE_SYSTEM, Consolidate, consolidation_prompt
from server.memory.embedder import Embedder, open_embedder
from server.memory.schedule import curate_nightly
from server.memory.service import Judge, MemoryService
from server.memory.store import memory_store
from server.observability.metrics import Metrics
from server.serving.catalog import ModelCatalog
from server.serving.pipeline import ChatService
from server.supervision import start_supervised, stop

PUBLIC_PATHS = ("/health", "/metrics")
MULTIPART_PATHS = ("/v1/adapters",)  # the adapter upload; every other body is JSON
MEMORY_DATABASE = "memory.sqlite3"
ADAPTION_DATABASE = "adaption.sqlite3"
GATEWAY_USAGE_DATABASE = "usage.sqlite3"
GATEWAY_TEMPLATES_DATABASE = "templates.sqlite3"


def consolidate_with(engine: Engine) -> Consolidate:
    """Memory curation's consolidation step, answered by the served model (greedy, short)."""

    async def consolidate(texts: Sequence[str]) -> str:
        turns = [ChatTurn("system", CONSOLIDATE_SYSTEM), ChatTurn("user", consolidation_prompt(texts))]
        options = GenerationOptions(max_tokens=96, temperature=0.0, stop=["\n"])
        return await engine.complete(turns, options, f"curate-{uuid.uuid4().hex}")

    return consolidate


def judge_with(engine: Engine) -> Judge:
    """Knowledge updates judged by the served model (`memory.extraction: model`): greedy, one short line."""

    async def judge(system: str, prompt: str) -> str:
        turns = [ChatTurn("system", system), ChatTurn("user", prompt)]
        options = GenerationOptions(max_tokens=16, temperature=0.0, stop=["\n"])
        return await engine.complete(turns, options, f"memory-judge-{uuid.uuid4().hex}")

    return judge


def start_nightly_curation(
    memory: MemoryService, consolidate: Consolidate, time_of_day: str, backoff_s: float
) -> asyncio.Task:
    """The nightly curation schedule, supervised: if it fails it is logged and starts again."""
    return start_supervised("nightly curation", lambda: curate_nightly(memory, consolidate, time_of_day), backoff_s)


@asynccontextmanager
async def own_threads(count: int) -> AsyncIterator[None]:
    """Torch's intra-op threads for this process's own CPU work (embedder, guardrail checker), set once the engine
    runs: vLLM's engine core is its own process with its OpenMP thread bound to its own core, and our per-request
    models would otherwise start one thread per core and take that core from it (`make bench --sections prefix`)."""
    import torch

    torch.set_num_threads(count)
    yield


@asynccontextmanager
async def memory_service(settings: Settings, metrics: Metrics | None = None) -> AsyncIterator[MemoryService]:
    embedder = await asyncio.to_thread(open_embedder, settings.memory)  # the builtin query encoder trains on first use
    store = memory_store(settings.gateway_database(MEMORY_DATABASE), embedder.dimensions)
    await store.open()
    service = MemoryService(store, embedder, settings.memory, metrics)
    try:
        yield service
    finally:
        await service.drain()
        await store.close()
        await embedder.close()


@asynccontextmanager
async def engine_pool(settings: Settings, metrics: Metrics) -> AsyncIterator[EnginePool]:
    """One vLLM engine per served model: the startup ones loaded before anything is served, the others on demand."""
    pool = EnginePool(
        settings.served_models,
        settings.adapters_dir_for,
        PoolSettings(
            max_loaded_models=settings.max_loaded_models,
            load_timeout_s=settings.model_load_timeout_s,
            restart_attempts=settings.resilience.engine_restart_attempts,
            restart_backoff_s=settings.resilience.engine_restart_backoff_s,
        ),
        metrics,
    )
    try:
        await pool.start()
        yield pool
    finally:
        await pool.close()


@asynccontextmanager
async def adaption_service(
    settings: Settings, pool: EnginePool, memory: MemoryService, metrics: Metrics | None = None
) -> AsyncIterator[AdaptionService]:
    """Fine-tuning jobs, one at a time, each training an adapter of the served model it names."""
    jobs = JobStore(settings.gateway_database(ADAPTION_DATABASE))
    await jobs.open()
    service = AdaptionService(
        jobs,
        memory,
        pool,
        settings.served,
        settings.adaption,
        settings.data_dir / "adaption-work",
        metrics,
    )
    service.restart_backoff_s = settings.resilience.task_restart_backoff_s
    service.shared = settings.gateway.database_url is not None
    await service.start()
    try:
        yield service
    finally:
        await service.stop()
        await jobs.close()


@asynccontextmanager
async def guardrail_checker(settings: GuardrailSettings, embedder: Embedder) -> AsyncIterator[Checker]:
    """The checker; `embedder` (the memory's sentence embedder) judges off-topic sentences under "only X" policies."""
    path = await asyncio.to_thread(checker_model_path, settings.model)  # the builtin one trains on first use
    topics = await TopicJudge.open(embedder.embed_short)
    checker = await asyncio.to_thread(open_checker, settings, path, None, topics)
    try:
        yield checker
    finally:
        await checker.close()


@asynccontextmanager
async def gateway_service(settings: Settings, metrics: Metrics | None = None) -> AsyncIterator[Gateway]:
    # Outboxes: where debits and usage records that could not be written by shutdown wait for the next start.
    keys = KeyStore(settings.gateway_database(KEYS_DATABASE), outbox=settings.data_dir / "debits.outbox.jsonl")
    usage = UsageStore(
        settings.gateway_database(GATEWAY_USAGE_DATABASE), outbox=settings.data_dir / "usage.outbox.jsonl"
    )
    templates = TemplateStore(settings.gateway_database(GATEWAY_TEMPLATES_DATABASE))
    # Rate-limit windows: in the shared database where servers share one (one limit across them), else in memory.
    shared_limits = [SharedRateLimiter(settings.gateway.database_url)] if settings.gateway.database_url else []
    # So do the requests each key has in flight (its caps hold across servers; app.state.in_flight).
    in_flight = SharedSlots(settings.gateway.database_url) if settings.gateway.database_url else None
    router = Router(settings.providers, metrics)
    for store in (keys, usage, templates, *shared_limits, *([in_flight] if in_flight else [])):
        await store.open()
    try:
        gateway = Gateway(settings.gateway, keys, usage, templates, router, metrics, *shared_limits)
        gateway.in_flight = in_flight
        yield gateway
    finally:
        await router.close()
        for store in (usage, templates, keys, *shared_limits):  # usage first: its pending records are written on close
            await store.close()
        if in_flight is not None:
            await in_flight.close()


@asynccontextmanager
async def conversation_store(settings: Settings) -> AsyncIterator[ConversationStore]:
    """Stored chat completions and Responses (per key)."""
    store = ConversationStore(settings.gateway_database(CONVERSATIONS_DATABASE))  # shared where servers share one
    await store.open()
    try:
        yield store
    finally:
        await store.close()


def cors_middleware(origins: Sequence[str]) -> list[Middleware]:
    """CORS only when origins are configured (none by default: browsers on other sites get no access)."""
    if not origins:
        return []
    return [
        Middleware(
            CORSMiddleware,
            allow_origins=list(origins),
            allow_methods=["GET", "POST", "PATCH", "DELETE"],
            allow_headers=["Authorization", "Content-Type", "X-Request-Id"],
        )
    ]


def build_app(settings: Settings) -> Starlette:
    metrics = Metrics()  # this app's own registry; vLLM's metrics stay on prometheus-client's default one

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        async with (
            engine_pool(settings, metrics) as pool,
            shared_adapter_registry(
                settings.gateway.database_url,
                [store for _, store in pool.adapter_stores()],
                settings.resilience.task_restart_backoff_s,
            ),
            own_threads(settings.own_cpu_threads),
            memory_service(settings, metrics) as memory,
            adaption_service(settings, pool, memory, metrics) as adaption,
            guardrail_checker(settings.guardrails, memory.embedder) as checker,
            gateway_service(settings, metrics) as gateway,
            conversation_store(settings) as conversations,
        ):
            engine = pool.primary
            for _, store in pool.adapter_stores():
                store.metrics = metrics
            checker.metrics = metrics
            app.state.metrics = metrics
            app.state.conversations = conversations
            catalog = ModelCatalog(
                settings.served_models,
                {entry.name: store for entry, store in pool.adapter_stores()},
                settings.providers,
            )
            app.state.catalog = catalog
            app.state.chat = ChatService(
                catalog,
                engine,
                gateway,
                gateway.router,
                memory,
                adaption,
                checker,
                system_fingerprint=settings.system_fingerprint,
                middle_out_reserve_tokens=settings.gateway.middle_out_reserve_tokens,
                memory_quotas=settings.security.quotas,
                memory_add_per_token=settings.metering.memory_add_per_token,
                engines=pool if len(pool.slots) > 1 else None,
            )
            app.state.gateway = gateway
            app.state.in_flight = gateway.in_flight  # None: each server counts its own
            app.state.keys = gateway.keys
            app.state.usage = gateway.usage
            app.state.templates = gateway.templates
            app.state.settings = settings
            app.state.engine = engine  # the server's own model (the first served)
            app.state.engines = pool
            app.state.memory = memory
            app.state.adaption = adaption
            app.state.checker = checker
            app.state.consolidate = consolidate_with(engine)
            if settings.memory.extraction == "model":
                memory.judge = judge_with(engine)
            app.state.started_at = int(time.time())
            # Open (every caller an admin) only if started with no key at all; kept until the next start.
            app.state.open_mode = not settings.api_keys and not await gateway.keys.any_active()
            nightly = None
            if settings.memory.curation_time is not None:
                nightly = start_nightly_curation(
                    memory,
                    app.state.consolidate,
                    settings.memory.curation_time,
                    settings.resilience.task_restart_backoff_s,
                )
            try:
                yield
            finally:
                await stop(nightly)

    routes = [
        Route("/v1/chat/completions", chat_completions, methods=["POST"]),
        Route("/v1/chat/completions", list_chat_completions, methods=["GET"]),
        Route("/v1/chat/completions/{completion_id}", get_chat_completion, methods=["GET"]),
        Route("/v1/chat/completions/{completion_id}", update_chat_completion, methods=["POST"]),
        Route("/v1/chat/completions/{completion_id}", delete_chat_completion, methods=["DELETE"]),
        Route("/v1/chat/completions/{completion_id}/messages", list_chat_completion_messages, methods=["GET"]),
        Route("/v1/completions", create_completion, methods=["POST"]),
        Route("/v1/embeddings", create_embeddings, methods=["POST"]),
        Route("/v1/responses", create_response, methods=["POST"]),
        Route("/v1/responses/{response_id}", get_response, methods=["GET"]),
        Route("/v1/responses/{response_id}", delete_response, methods=["DELETE"]),
        Route("/v1/responses/{response_id}/input_items", list_input_items, methods=["GET"]),
        Route("/tokenize", tokenize, methods=["POST"]),
        Route("/detokenize", detokenize, methods=["POST"]),
        Route("/v1/models", list_models, methods=["GET"]),
        Route("/v1/moderations", create_moderation, methods=["POST"]),
        Route("/v1/adapters", create_adapter, methods=["POST"]),
        Route("/v1/adapters", list_adapters, methods=["GET"]),
        Route("/v1/adapters/{name}", delete_adapter, methods=["DELETE"]),
        Route("/v1/adapters/{name}/versions", list_adapter_versions, methods=["GET"]),
        Route("/v1/load_lora_adapter", vllm_load_lora_adapter, methods=["POST"]),
        Route("/v1/unload_lora_adapter", vllm_unload_lora_adapter, methods=["POST"]),
        Route("/v1/memory", list_groups, methods=["GET"]),
        Route("/v1/memory/{memory_group}", get_group, methods=["GET"]),
        Route("/v1/memory/{memory_group}", delete_group, methods=["DELETE"]),
        Route("/v1/memory/{memory_group}/memories", list_memories, methods=["GET"]),
        Route("/v1/memory/{memory_group}/memories", add_memories, methods=["POST"]),
        Route("/v1/memory/{memory_group}/memories/{memory_id:int}", get_memory, methods=["GET"]),
        Route("/v1/memory/{memory_group}/memories/{memory_id:int}", update_memory, methods=["PATCH"]),
        Route("/v1/memory/{memory_group}/memories/{memory_id:int}", delete_memory, methods=["DELETE"]),
        Route("/v1/memory/{memory_group}/search", search_memories, methods=["POST"]),
        Route("/v1/memory/{memory_group}/curate", curate_group, methods=["POST"]),
        Route("/v1/memory/{memory_group}/audit", memory_audit, methods=["GET"]),
        Route("/v1/fine_tuning/jobs", create_job, methods=["POST"]),
        Route("/v1/fine_tuning/jobs", list_jobs, methods=["GET"]),
        Route("/v1/fine_tuning/jobs/{job_id}", retrieve_job, methods=["GET"]),
        Route("/v1/fine_tuning/jobs/{job_id}/cancel", cancel_job, methods=["POST"]),
        Route("/v1/fine_tuning/jobs/{job_id}/events", list_job_events, methods=["GET"]),
        Route("/v1/endpoints", list_endpoints, methods=["GET"]),
        Route("/v1/keys", create_key, methods=["POST"]),
        Route("/v1/keys", list_keys, methods=["GET"]),
        Route("/v1/keys/{key_id}", get_key, methods=["GET"]),
        Route("/v1/keys/{key_id}", revoke_key, methods=["DELETE"]),
        Route("/v1/keys/{key_id}/credits", add_credits, methods=["POST"]),
        Route("/v1/usage", get_usage, methods=["GET"]),
        Route("/v1/usage/requests/{request_id}", get_request_usage, methods=["GET"]),
        Route("/v1/templates", create_template, methods=["POST"]),
        Route("/v1/templates", list_templates, methods=["GET"]),
        Route("/v1/templates/{template}", get_template, methods=["GET"]),
        Route("/v1/templates/{template}", update_template, methods=["POST"]),
        Route("/v1/templates/{template}", delete_template, methods=["DELETE"]),
        Route("/health", health, methods=["GET"]),
        Route("/metrics", metrics_endpoint, methods=["GET"]),
        Mount(CONSOLE_PATH, console_app(), name="console"),
    ]
    security = settings.security
    public_paths = tuple(path for path in PUBLIC_PATHS if not (path == "/metrics" and security.metrics_require_key))
    middleware = [
        Middleware(MetricsMiddleware, metrics=metrics),
        Middleware(RequestIdMiddleware),
        Middleware(RequestGuardMiddleware, settings=security, multipart_paths=MULTIPART_PATHS),
        *cors_middleware(security.cors_origins),
        # The console's static files are public: its page asks for a key and sends it with every API call.
        Middleware(APIKeyMiddleware, keys=settings.api_keys, public_paths=(*public_paths, *console_paths())),
        Middleware(FairnessMiddleware, settings=security),
    ]
    exception_handlers = {
        ServerError: handle_exception,
        ValidationError: handle_exception,
        HTTPException: handle_exception,
        # Storage errors (a full disk is a 503) are answered here rather than by the catch-all, which
        # Starlette re-raises after answering, dropping the client's connection.
        sqlite3.Error: handle_exception,
        psycopg.Error: handle_exception,
        OSError: handle_exception,
        Exception: handle_exception,
    }
    return Starlette(
        routes=routes,
        middleware=middleware,
        exception_handlers=exception_handlers,
        lifespan=lifespan,
    )
