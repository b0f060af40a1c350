"""Our Prometheus metrics: the registry's exposition, the HTTP middleware's route labels, and the gateway's
refusal and settlement counters (real key store on SQLite)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.responses import JSONResponse
from starlette.routing import Route

from server.api.observe import UNMATCHED, MetricsMiddleware
from server.config import GatewaySettings
from server.gateway.errors import InsufficientCredits, ModelUnavailable, NotAllowed, RateLimited, UpstreamFailed
from server.gateway.keys import KeySpec, KeyStore, Principal
from server.gateway.routing import Router, fallback_reason, first_that_serves
from server.gateway.service import Gateway, RequestAccount
from server.gateway.templates import TemplateStore
from server.gateway.usage import UsageStore
from server.observability.metrics import STATIC_KEY, Metrics
from tests.prometheus import Samples, parse


def samples(metrics: Metrics) -> Samples:
    return parse(metrics.exposition().decode())


def value(metrics: Metrics, name: str, **labels: str) -> float:
    return samples(metrics).get((name, frozenset(labels.items())), 0.0)


def test_each_metrics_object_has_its_own_registry() -> None:
    first, second = Metrics(), Metrics()
    first.refused("rate_limit", "key_a")
    assert value(first, "llm_server_refusals_total", reason="rate_limit", key_id="key_a") == 1
    assert value(second, "llm_server_refusals_total", reason="rate_limit", key_id="key_a") == 0


def test_model_request_counts_tokens_credits_and_static_keys() -> None:
    metrics = Metrics()
    metrics.model_request("m", None, None, 200, None, 7, 3, 0)
    metrics.model_request("m", "alpha", None, 200, "key_1", 5, 2, 7)
    assert value(metrics, "llm_server_model_requests_total", model="m", adapter="", provider="local", status="200") == 1
    assert value(metrics, "llm_server_tokens_total", direction="in", model="m", key_id=STATIC_KEY) == 7
    assert value(metrics, "llm_server_tokens_total", direction="out", model="m", key_id="key_1") == 2
    assert value(metrics, "llm_server_credits_spent_total", key_id="key_1") == 7
    assert ("llm_server_credits_spent_total", frozenset({("key_id", STATIC_KEY)})) not in samples(metrics)


def test_job_states_are_all_reported_even_when_zero() -> None:
    metrics = Metrics()
    metrics.jobs_by_state({"queued": 2, "succeeded": 1})
    metrics.jobs_by_state({"succeeded": 3})  # a later scrape replaces the counts
    assert value(metrics, "llm_server_fine_tuning_jobs", state="queued") == 0
    assert value(metrics, "llm_server_fine_tuning_jobs", state="succeeded") == 3
    assert value(metrics, "llm_server_fine_tuning_jobs", state="cancelled") == 0


async def ok(request) -> JSONResponse:
    return JSONResponse({"id": request.path_params.get("name")})


async def boom(request) -> JSONResponse:
    raise RuntimeError("the handler failed")


async def test_middleware_labels_requests_by_route_template_not_path() -> None:
    metrics = Metrics()
    app = Starlette(
        routes=[Route("/v1/things/{name}", ok, methods=["GET"]), Route("/boom", boom)],
        middleware=[Middleware(MetricsMiddleware, metrics=metrics)],
    )
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        for name in ("a", "b", "c"):
            assert (await client.get(f"/v1/things/{name}")).status_code == 200
        assert (await client.post("/v1/things/a")).status_code == 405
        assert (await client.get("/nowhere/at/all")).status_code == 404
        assert (await client.get("/boom")).status_code == 500
    route = "/v1/things/{name}"
    assert value(metrics, "llm_server_http_requests_total", route=route, method="GET", status="200") == 3
    assert value(metrics, "llm_server_http_requests_total", route=route, method="POST", status="405") == 1
    assert value(metrics, "llm_server_http_requests_total", route=UNMATCHED, method="GET", status="404") == 1
    assert value(metrics, "llm_server_http_requests_total", route="/boom", method="GET", status="500") == 1
    assert value(metrics, "llm_server_http_request_duration_seconds_count", route=route, method="GET") == 3
    assert value(metrics, "llm_server_http_requests_in_flight") == 0
    assert not any("/v1/things/a" in dict(labels).get("route", "") for _, labels in samples(metrics))


@pytest.fixture
async def gateway(tmp_path: Path):
    keys, usage, templates = (
        KeyStore(tmp_path / "keys.sqlite3"),
        UsageStore(tmp_path / "usage.sqlite3"),
        TemplateStore(tmp_path / "templates.sqlite3"),
    )
    for store in (keys, usage, templates):
        await store.open()
    metrics = Metrics()
    yield Gateway(GatewaySettings(), keys, usage, templates, Router([], metrics), metrics)
    for store in (usage, templates, keys):
        await store.close()


async def test_gateway_counts_refusals_by_reason_and_key_id(gateway: Gateway) -> None:
    limited, _ = await gateway.keys.create(KeySpec(name="limited", requests_per_minute=1, allowed_models=("m",)))
    broke, _ = await gateway.keys.create(KeySpec(name="broke", credits=0))
    as_limited = Principal(owner=limited.owner, admin=False, key=limited)
    await gateway.admit(as_limited)
    with pytest.raises(RateLimited):
        await gateway.admit(as_limited)
    with pytest.raises(InsufficientCredits):
        await gateway.admit(Principal(owner=broke.owner, admin=False, key=broke))
    with pytest.raises(NotAllowed):
        gateway.authorize(as_limited, ["other-model"])
    metrics = gateway.metrics
    assert value(metrics, "llm_server_refusals_total", reason="rate_limit", key_id=limited.id) == 1
    assert value(metrics, "llm_server_refusals_total", reason="credits", key_id=broke.id) == 1
    assert value(metrics, "llm_server_refusals_total", reason="not_allowed", key_id=limited.id) == 1


async def test_gateway_settlement_counts_tokens_and_debited_credits(gateway: Gateway) -> None:
    paying, _ = await gateway.keys.create(KeySpec(name="paying", credits=100))
    unlimited, _ = await gateway.keys.create(KeySpec(name="unlimited"))
    for key in (paying, unlimited):
        account = RequestAccount(f"req-{key.id}", Principal(owner=key.owner, admin=False, key=key))
        async with gateway.admission(account, ["m"]) as admission:
            await admission.reserve(20)
            account.model, account.prompt_tokens, account.completion_tokens = "m", 6, 4
    metrics = gateway.metrics
    assert value(metrics, "llm_server_credits_spent_total", key_id=paying.id) == 10
    assert value(metrics, "llm_server_credits_spent_total", key_id=unlimited.id) == 0  # nothing to debit
    assert value(metrics, "llm_server_tokens_total", direction="in", model="m", key_id=unlimited.id) == 6
    assert value(metrics, "llm_server_model_requests_total", model="m", adapter="", provider="local", status="200") == 2


async def test_fallbacks_are_counted_by_reason() -> None:
    metrics = Metrics()
    router = Router([], metrics)

    async def attempt(name: str) -> str:
        if name == "first":
            raise UpstreamFailed("p", 504, "timed out")
        if name == "second":
            raise ModelUnavailable(name)
        return name

    assert await first_that_serves(["first", "second", "third"], attempt, router.fell_back) == "third"
    assert value(metrics, "llm_server_fallbacks_total", reason="upstream_timeout") == 1
    assert value(metrics, "llm_server_fallbacks_total", reason="model_unavailable") == 1
    assert fallback_reason(UpstreamFailed("p", 503, "down")) == "upstream_error"


def test_the_grafana_dashboard_uses_only_metrics_that_exist() -> None:
    dashboard = json.loads((Path(__file__).resolve().parents[2] / "docs" / "grafana-dashboard.json").read_text())
    exprs = [target["expr"] for panel in dashboard["panels"] for target in panel["targets"]]
    used = {name for expr in exprs for name in re.findall(r"\bllm_server_\w+", expr)}
    # Every family is in the exposition (HELP and TYPE), even one whose labels have no values yet.
    families = {family.name for family in text_string_to_metric_families(Metrics().exposition().decode())}
    suffixes = ("_total", "_bucket", "_sum", "_count")
    unknown = {
        name
        for name in used
        if name not in families
        and not any(name.endswith(suffix) and name.removesuffix(suffix) in families for suffix in suffixes)
    }
    assert used and not unknown, unknown
    assert len(dashboard["panels"]) >= 20 and all(panel["targets"] for panel in dashboard["panels"])
