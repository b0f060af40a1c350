"""Response shapes of the server's resources (endpoints, memory, jobs, adapters, keys, usage, templates),
as typed pydantic models beside the chat ones in `protocol.py`."""

from __future__ import annotations

from typing import Any, Generic, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, SerializeAsAny, SerializerFunctionWrapHandler, model_serializer
from starlette.responses import Response


class Endpoint(BaseModel):
    object: Literal["endpoint"] = "endpoint"
    id: str  # model@provider
    model: str
    provider: str


class EndpointList(BaseModel):
    object: Literal["list"] = "list"
    data: list[Endpoint]


def json_response(body: BaseModel, status_code: int = 200) -> Response:
    return Response(body.model_dump_json(), status_code=status_code, media_type="application/json")


class Deleted(BaseModel):
    id: str | int
    object: str  # what was deleted: `adapter`, `memory.deleted`, ...
    deleted: Literal[True] = True


class TemplateDeleted(Deleted):
    name: str


# memory


class MemoryObject(BaseModel):
    object: Literal["memory"] = "memory"
    id: int
    memory_group: str
    text: str
    kind: str
    speaker: str  # who said it: user (chat), api (the memory API)
    source_request_id: str | None
    created_at: int
    updated_at: int


class MemoryGroupObject(BaseModel):
    object: Literal["memory_group"] = "memory_group"
    id: str
    user_goal: str
    call_count: int
    memory_count: int
    created_at: int
    curated_at: int | None


class MemorySearchResult(BaseModel):
    object: Literal["memory.search_result"] = "memory.search_result"
    score: float
    memory: MemoryObject


class CurationChangeObject(BaseModel):
    action: str
    removed: list[int]
    added: list[str]
    reason: str


class CurationObject(BaseModel):
    object: Literal["memory.curation"] = "memory.curation"
    id: str
    memory_group: str
    examined: int
    skipped: int
    changes: list[CurationChangeObject]


class AuditEntryObject(BaseModel):
    object: Literal["memory.audit_entry"] = "memory.audit_entry"
    id: int
    run_id: str
    action: str
    removed: Any
    added: Any
    reason: str
    at: int


# fine-tuning jobs


class JobHyperparameters(BaseModel):
    n_epochs: int
    batch_size: int
    learning_rate_multiplier: float


class JobMethod(BaseModel):
    type: Literal["supervised"] = "supervised"


class JobObject(BaseModel):
    object: Literal["fine_tuning.job"] = "fine_tuning.job"
    id: str
    model: str
    created_at: int
    finished_at: int | None
    fine_tuned_model: str | None
    organization_id: str
    result_files: list[str]
    status: str
    training_file: str
    validation_file: None
    hyperparameters: JobHyperparameters
    trained_tokens: int | None
    error: Any
    seed: int | None
    estimated_finish: None
    integrations: list[Any]
    method: JobMethod
    metadata: dict[str, str | None]
    result: Any


class JobEventObject(BaseModel):
    object: Literal["fine_tuning.job.event"] = "fine_tuning.job.event"
    id: str
    created_at: int
    level: str
    message: str
    data: Any
    type: str


# adapters


class AdapterVersionObject(BaseModel):
    """One version of an adapter on disk (`GET /v1/adapters/{name}/versions`)."""

    object: Literal["adapter.version"] = "adapter.version"
    adapter: str
    version: int
    active: bool  # the version requests are served with
    created: Any
    source: str | None
    fine_tuning_job: str | None  # the job that trained it, if one did
    eval_loss: float | None  # held-out (general) loss of a fine-tuned version, and the base model's
    baseline_eval_loss: float | None
    recall: float | None  # share of the taught facts a fine-tuned version recalls, and the base model's
    baseline_recall: float | None


class AdapterObject(BaseModel):
    id: str
    object: Literal["adapter"] = "adapter"
    version: int
    base_model: str | None
    created: Any
    source: str | None
    rank: int | None
    target_modules: list[str] | None
    shared: bool | None = None  # every key may use it
    owned: bool = False  # the calling key owns it
    owner: str | None = Field(None, exclude_if=lambda value: value is None)  # shown to admins only


# keys


class KeyObject(BaseModel):
    object: Literal["api_key"] = "api_key"
    id: str
    name: str
    prefix: str
    owner: str
    admin: bool
    allowed_models: list[str] | None
    allowed_adapters: list[str] | None
    default_model: str | None
    credits: int | None
    requests_per_minute: int | None
    tokens_per_minute: int | None
    created_at: int
    revoked_at: int | None


class NewKeyObject(KeyObject):
    key: str  # the secret, shown once


# usage


class UsageRow(BaseModel):
    """One aggregation group: its group-by values (extra fields) and its totals."""

    model_config = ConfigDict(extra="allow")

    requests: int
    errors: int | None
    prompt_tokens: int | None
    completion_tokens: int | None
    total_tokens: int
    mean_latency_ms: float | None


class UsageReport(BaseModel):
    object: Literal["list"] = "list"
    group_by: list[str]
    start: float
    end: float
    data: list[UsageRow]


class RequestUsage(BaseModel):
    object: Literal["usage.request"] = "usage.request"
    request_id: str
    created_at: float
    owner: str
    key_id: str | None
    model: str | None
    provider: str | None
    adapter: str | None
    prompt_tokens: int
    completion_tokens: int
    latency_ms: float
    status: int
    error_code: str | None
    session_id: str | None
    user: str | None
    tags: list[str]
    signature: str | None
    region: str | None
    query_body: str | None
    response_body: str | None


# templates


class TemplateObject(BaseModel):
    object: Literal["template"] = "template"
    id: str
    name: str
    version: int
    description: str | None
    messages: Any
    model: str | None
    sampling: Any
    created_at: int
    updated_at: int


Item = TypeVar("Item", bound=BaseModel)


class ListOf(BaseModel, Generic[Item]):
    """OpenAI's list shape; `has_more` only where the endpoint pages."""

    object: Literal["list"] = "list"
    data: list[SerializeAsAny[Item]]
    has_more: bool | None = None

    @model_serializer(mode="wrap")
    def _omit_absent_has_more(self, handler: SerializerFunctionWrapHandler) -> dict:
        data = handler(self)
        if data.get("has_more") is None:
            data.pop("has_more", None)
        return data
