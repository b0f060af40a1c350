"""The server's own Prometheus metrics, on one registry per app (`app.state.metrics`).

vLLM registers its engine metrics on prometheus-client's default registry; `/metrics` exposes both. Every metric
here is named `llm_server_*`. Labels are bounded: routes are path templates, keys are key ids (never secrets, and
"static" for a key from the environment), policies and texts are never labels.

The service objects hold a `Metrics` (`gateway.metrics`, `memory.metrics`, ...) and call its small methods; a
service built without one (a unit test) gets a private `Metrics()` that nobody scrapes.
"""

from __future__ import annotations

from collections.abc import Mapping

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

PREFIX = "llm_server"
STATIC_KEY = "static"  # the key id label of a key from LLM_SERVER_API_KEYS (or no key at all)
JOB_STATES = ("queued", "running", "succeeded", "failed", "cancelled")
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)
CHECK_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
TRAINING_BUCKETS = (1, 5, 10, 30, 60, 120, 300, 600, 1800, 3600, 7200)
COUNT_BUCKETS = (0, 1, 2, 3, 5, 8, 13, 21)
LOAD_BUCKETS = (0.5, 1, 2.5, 5, 10, 20, 30, 60, 120, 300, 600)
MODEL_STATES = ("unloaded", "loading", "awake", "unloading", "sleeping")
LORA_STATES = ("off", "switching", "on")


def key_label(key_id: str | None) -> str:
    return key_id or STATIC_KEY


class Metrics:
    """Every metric of ours, registered on `registry` (a fresh one unless given)."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry(auto_describe=True)
        r = self.registry

        def name(suffix: str) -> str:
            return f"{PREFIX}_{suffix}"

        # HTTP (api/observe.py)
        self.http_requests = Counter(
            name("http_requests"),
            "HTTP requests by route template, method and status",
            ["route", "method", "status"],
            registry=r,
        )
        self.http_duration = Histogram(
            name("http_request_duration_seconds"),
            "Time until the response's last byte",
            ["route", "method"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.http_in_flight = Gauge(name("http_requests_in_flight"), "HTTP requests being answered", registry=r)
        # gateway
        self.model_requests = Counter(
            name("model_requests"),
            "Model requests settled, by model, adapter, provider and status",
            ["model", "adapter", "provider", "status"],
            registry=r,
        )
        self.tokens = Counter(
            name("tokens"),
            "Tokens in (prompt) and out (completion) by model and key id",
            ["direction", "model", "key_id"],
            registry=r,
        )
        self.credits_spent = Counter(
            name("credits_spent"), "Credits (tokens) debited from keys with a balance", ["key_id"], registry=r
        )
        self.refusals = Counter(
            name("refusals"),
            "Requests refused before generation: rate_limit, credits, not_allowed, quota",
            ["reason", "key_id"],
            registry=r,
        )
        self.upstream_requests = Counter(
            name("upstream_requests"),
            "Calls to upstream providers by outcome (ok, http_error, timeout, unreachable)",
            ["provider", "outcome"],
            registry=r,
        )
        self.upstream_duration = Histogram(
            name("upstream_request_duration_seconds"),
            "Time until an upstream provider answered (headers)",
            ["provider"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.fallbacks = Counter(
            name("fallbacks"),
            "Times a request went on to its next fallback model, by the failure's kind",
            ["reason"],
            registry=r,
        )
        # guardrails
        self.guardrail_checks = Counter(
            name("guardrail_checks"),
            "Texts checked against a policy, by checker and verdict (pass, violation)",
            ["checker", "verdict"],
            registry=r,
        )
        self.guardrail_check_duration = Histogram(
            name("guardrail_check_duration_seconds"),
            "Time of one check call (a batch of texts)",
            ["checker"],
            buckets=CHECK_BUCKETS,
            registry=r,
        )
        # memory
        self.memory_recall_duration = Histogram(
            name("memory_recall_duration_seconds"),
            "Time to recall memories for a nightly request",
            buckets=CHECK_BUCKETS,
            registry=r,
        )
        self.memories_used = Histogram(
            name("memory_recall_memories_used"),
            "Memories put into the prompt per recall",
            buckets=COUNT_BUCKETS,
            registry=r,
        )
        self.memory_writebacks = Counter(
            name("memory_writebacks"),
            "Exchanges written back to memory, by outcome (ok, failed)",
            ["outcome"],
            registry=r,
        )
        self.memories_written = Counter(
            name("memories_written"), "Memories stored, by kind (fact, turn, note)", ["kind"], registry=r
        )
        self.memory_curations = Counter(name("memory_curations"), "Curation runs of a memory group", registry=r)
        self.memory_curation_changes = Counter(
            name("memory_curation_changes"), "Changes curation applied, by action", ["action"], registry=r
        )
        # adaption
        self.fine_tuning_jobs = Gauge(
            name("fine_tuning_jobs"),
            "Fine-tuning jobs in the store, by state (read at scrape time)",
            ["state"],
            registry=r,
        )
        self.fine_tuning_finished = Counter(
            name("fine_tuning_jobs_finished"), "Fine-tuning jobs that ended, by final state", ["state"], registry=r
        )
        self.training_duration = Histogram(
            name("fine_tuning_training_duration_seconds"),
            "Wall time of one training run (worker start to verdict)",
            buckets=TRAINING_BUCKETS,
            registry=r,
        )
        self.last_loss = Gauge(
            name("fine_tuning_last_loss"),
            "Loss of the latest training step (train) and held-out evaluation (eval)",
            ["kind"],
            registry=r,
        )
        self.trained_tokens = Counter(name("fine_tuning_trained_tokens"), "Tokens trained on", registry=r)
        # adapters
        self.adapter_loads = Counter(
            name("adapter_loads"),
            "Adapter versions added, by outcome (loaded, stored, failed)",
            ["outcome"],
            registry=r,
        )
        self.adapters_loaded = Gauge(
            name("adapters_loaded"), "Adapters served (an active version each; read at scrape time)", registry=r
        )

        # served models (engine/pool.py): one engine each, loaded on demand, put to sleep when idle
        self.model_state = Gauge(
            name("model_state"),
            "1 for each served model's current state, 0 for the others",
            ["model", "state"],
            registry=r,
        )
        self.model_loads = Counter(
            name("model_loads"),
            "Model loads and wakes, by model, kind (start, wake) and outcome (ok, failed)",
            ["model", "kind", "outcome"],
            registry=r,
        )
        self.model_load_duration = Histogram(
            name("model_load_duration_seconds"),
            "Time to load (start) or wake a model",
            ["model", "kind"],
            buckets=LOAD_BUCKETS,
            registry=r,
        )
        self.model_lora = Gauge(
            name("model_lora"),
            "1 for each served model's LoRA state (on, off: no LoRA slots yet, switching), 0 for the others",
            ["model", "state"],
            registry=r,
        )
        self.lora_switches = Counter(
            name("lora_switches"),
            "In-place engine restarts that switched LoRA on (lora.enabled: auto), by model and outcome",
            ["model", "outcome"],
            registry=r,
        )
        self.lora_switch_duration = Histogram(
            name("lora_switch_duration_seconds"),
            "Time from an adapter being needed to the engine serving with LoRA (drain + restart)",
            ["model"],
            buckets=LOAD_BUCKETS,
            registry=r,
        )
        self.model_sleeps = Counter(
            name("model_sleeps"),
            "Idle models put to sleep or unloaded, by model and reason",
            ["model", "reason"],
            registry=r,
        )

    # exposition

    def exposition(self) -> bytes:
        return generate_latest(self.registry)

    # HTTP

    def http_request(self, route: str, method: str, status: int, seconds: float) -> None:
        self.http_requests.labels(route, method, str(status)).inc()
        self.http_duration.labels(route, method).observe(seconds)

    # gateway

    def model_request(
        self,
        model: str | None,
        adapter: str | None,
        provider: str | None,
        status: int,
        key_id: str | None,
        prompt_tokens: int,
        completion_tokens: int,
        credits: int,
    ) -> None:
        model_label = model or "none"
        self.model_requests.labels(model_label, adapter or "", provider or "local", str(status)).inc()
        key = key_label(key_id)
        if prompt_tokens:
            self.tokens.labels("in", model_label, key).inc(prompt_tokens)
        if completion_tokens:
            self.tokens.labels("out", model_label, key).inc(completion_tokens)
        if credits:
            self.credits_spent.labels(key).inc(credits)

    def refused(self, reason: str, key_id: str | None) -> None:
        self.refusals.labels(reason, key_label(key_id)).inc()

    def upstream_call(self, provider: str, outcome: str, seconds: float) -> None:
        self.upstream_requests.labels(provider, outcome).inc()
        self.upstream_duration.labels(provider).observe(seconds)

    def fell_back(self, reason: str) -> None:
        self.fallbacks.labels(reason).inc()

    # guardrails

    def guardrail_checked(self, checker: str, violations: int, passes: int, seconds: float) -> None:
        if violations:
            self.guardrail_checks.labels(checker, "violation").inc(violations)
        if passes:
            self.guardrail_checks.labels(checker, "pass").inc(passes)
        self.guardrail_check_duration.labels(checker).observe(seconds)

    # memory

    def recalled(self, seconds: float, used: int) -> None:
        self.memory_recall_duration.observe(seconds)
        self.memories_used.observe(used)

    def wrote_back(self, ok: bool) -> None:
        self.memory_writebacks.labels("ok" if ok else "failed").inc()

    def memories_stored(self, kinds: Mapping[str, int]) -> None:
        for kind, count in kinds.items():
            self.memories_written.labels(kind).inc(count)

    def curated(self, actions: Mapping[str, int]) -> None:
        self.memory_curations.inc()
        for action, count in actions.items():
            self.memory_curation_changes.labels(action).inc(count)

    # adaption and adapters

    def jobs_by_state(self, counts: Mapping[str, int]) -> None:
        for state in sorted({*JOB_STATES, *counts}):
            self.fine_tuning_jobs.labels(state).set(counts.get(state, 0))

    def job_finished(self, state: str) -> None:
        self.fine_tuning_finished.labels(state).inc()

    def trained(self, seconds: float, tokens: int | None) -> None:
        self.training_duration.observe(seconds)
        if tokens:
            self.trained_tokens.inc(tokens)

    def loss(self, kind: str, value: float) -> None:
        self.last_loss.labels(kind).set(value)

    def adapter_added(self, outcome: str) -> None:
        self.adapter_loads.labels(outcome).inc()

    # served models

    def model_in_state(self, model: str, state: str) -> None:
        for each in MODEL_STATES:
            self.model_state.labels(model, each).set(1 if each == state else 0)

    def model_loaded(self, model: str, kind: str, ok: bool, seconds: float) -> None:
        self.model_loads.labels(model, kind, "ok" if ok else "failed").inc()
        if ok:
            self.model_load_duration.labels(model, kind).observe(seconds)

    def model_slept(self, model: str, reason: str) -> None:
        self.model_sleeps.labels(model, reason).inc()

    def model_lora_state(self, model: str, state: str) -> None:
        for each in LORA_STATES:
            self.model_lora.labels(model, each).set(1 if each == state else 0)

    def lora_switched(self, model: str, ok: bool, seconds: float) -> None:
        self.lora_switches.labels(model, "ok" if ok else "failed").inc()
        if ok:
            self.lora_switch_duration.labels(model).observe(seconds)
