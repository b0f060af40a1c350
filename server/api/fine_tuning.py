"""`/v1/fine_tuning/jobs`: OpenAI's fine-tuning jobs API, training LoRA adapters from memory groups.

`training_file` names a memory group as `memory:<group>`; the adapter's name is
`lora_name` (or OpenAI's `suffix`); `model` names the served model (any of them) whose adapter it trains. The SDK's `client.fine_tuning.jobs.create /
list / retrieve / cancel / list_events` work unchanged.
"""

from __future__ import annotations

import re
import time

from pydantic import BaseModel, ConfigDict, Field, model_validator
from starlette.requests import Request
from starlette.responses import Response

from server.adaption.jobs import Job, JobEvent
from server.adaption.runner import AdaptionService
from server.api.errors import invalid_request, model_not_found, read_json_object
from server.api.middleware import caller_of, principal_of
from server.api.protocol import MEMORY_GROUP_MAX, MEMORY_GROUP_PATTERN, InvalidParam
from server.api.protocol_resources import (
    Item,
    JobEventObject,
    JobHyperparameters,
    JobMethod,
    JobObject,
    ListOf,
    json_response,
)
from server.engine.adapters import ADAPTER_NAME
from server.gateway.service import Gateway, authorize_adapter
from server.serving.catalog import ModelCatalog

MEMORY_FILE_PREFIX = "memory:"
MAX_PAGE = 100
EVENT_PREFIX = "ftevent-"


class CreateJob(BaseModel):
    model_config = ConfigDict(extra="allow", strict=True)

    model: str = Field(min_length=1)
    training_file: str = Field(min_length=1)
    lora_name: str | None = Field(None, pattern=ADAPTER_NAME.pattern)
    suffix: str | None = Field(None, pattern=ADAPTER_NAME.pattern)
    seed: int | None = None

    @model_validator(mode="after")
    def _memory_group_and_adapter(self) -> CreateJob:
        group = self.training_file.removeprefix(MEMORY_FILE_PREFIX)
        if (
            not self.training_file.startswith(MEMORY_FILE_PREFIX)
            or not group
            or len(group) > MEMORY_GROUP_MAX
            or not re.match(MEMORY_GROUP_PATTERN, group)
        ):
            raise InvalidParam(
                "training_file",
                "`training_file` must name a memory group as `memory:<group>`; file uploads are not supported.",
            )
        if self.adapter is None:
            raise InvalidParam("lora_name", "Name the adapter to train: `lora_name` (or `suffix`).")
        if self.lora_name and self.suffix and self.lora_name != self.suffix:
            raise InvalidParam("suffix", "`suffix` and `lora_name` name different adapters.")
        if self.model_extra and self.model_extra.get("hyperparameters") is not None:
            raise InvalidParam("hyperparameters", "Hyperparameters are set in models.yaml (`adaption`), not per job.")
        return self

    @property
    def memory_group(self) -> str:
        return self.training_file.removeprefix(MEMORY_FILE_PREFIX)

    @property
    def adapter(self) -> str | None:
        return self.lora_name or self.suffix


def job_json(job: Job) -> JobObject:
    hyper = job.hyperparameters
    return JobObject(
        id=job.id,
        model=job.base_model,
        created_at=int(job.created_at),
        finished_at=int(job.finished_at) if job.finished_at else None,
        fine_tuned_model=job.adapter if job.promoted else None,
        organization_id="local",
        result_files=[],
        status=job.status,
        training_file=MEMORY_FILE_PREFIX + job.memory_group,
        validation_file=None,
        hyperparameters=JobHyperparameters(
            n_epochs=hyper["epochs"], batch_size=1, learning_rate_multiplier=hyper["learning_rate"]
        ),
        trained_tokens=job.trained_tokens,
        error=job.error or None,
        seed=hyper["seed"],
        estimated_finish=None,
        integrations=[],
        method=JobMethod(),
        metadata={
            "lora_name": job.adapter,
            "adapter_version": str(job.adapter_version) if job.adapter_version is not None else None,
            "promoted": str(job.promoted).lower(),
        },
        result=job.result,
    )


def event_json(event: JobEvent) -> JobEventObject:
    return JobEventObject(
        id=f"{EVENT_PREFIX}{event.id}",
        created_at=int(event.created_at),
        level=event.level,
        message=event.message,
        data=event.data,
        type=event.type,
    )


def _service(request: Request) -> AdaptionService:
    return request.app.state.adaption


def _limit(request: Request) -> int:
    raw = request.query_params.get("limit", "20")
    if not raw.isdigit() or not 1 <= int(raw) <= MAX_PAGE:
        raise invalid_request(f"`limit` must be an integer between 1 and {MAX_PAGE}.", param="limit")
    return int(raw)


def _page(items: list[Item], limit: int) -> Response:
    return json_response(ListOf(data=items[:limit], has_more=len(items) > limit))


async def create_job(request: Request) -> Response:
    catalog: ModelCatalog = request.app.state.catalog
    body = CreateJob.model_validate(await read_json_object(request))
    entry = catalog.base_model(body.model)  # any served model (or alias): the job trains an adapter of it
    if entry is None:
        raise model_not_found(body.model)
    assert body.adapter is not None  # checked by the validator
    gateway: Gateway = request.app.state.gateway
    principal = principal_of(request.scope)
    # Training writes new versions into the adapter: only into the caller's own (or a new one), and one its
    # key's `allowed_adapters` names.
    param = "lora_name" if body.lora_name else "suffix"
    authorize_adapter(principal, body.adapter, catalog.adapters.ownership(body.adapter), param=param, change=True)
    charge = await gateway.charge(
        principal, request.app.state.settings.metering.fine_tuning_per_job, "a fine-tuning job"
    )
    asked_at = time.time()
    try:
        job = await _service(request).create(
            caller_of(request.scope), body.memory_group, body.adapter, entry.name, param
        )
    except BaseException:
        await gateway.refund(charge)
        raise
    if job.created_at < asked_at:  # joined the caller's own job already queued: nothing new to pay for
        await gateway.refund(charge)
    return json_response(job_json(job))


async def list_jobs(request: Request) -> Response:
    limit = _limit(request)
    jobs = await _service(request).list(caller_of(request.scope), limit + 1, request.query_params.get("after"))
    return _page([job_json(job) for job in jobs], limit)


async def retrieve_job(request: Request) -> Response:
    job = await _service(request).get(caller_of(request.scope), request.path_params["job_id"])
    return json_response(job_json(job))


async def cancel_job(request: Request) -> Response:
    job = await _service(request).cancel(caller_of(request.scope), request.path_params["job_id"])
    return json_response(job_json(job))


async def list_job_events(request: Request) -> Response:
    limit = _limit(request)
    after = request.query_params.get("after")
    after_id = None
    if after is not None:
        if not after.startswith(EVENT_PREFIX) or not after.removeprefix(EVENT_PREFIX).isdigit():
            raise invalid_request("`after` must be an event id (`ftevent-<n>`).", param="after")
        after_id = int(after.removeprefix(EVENT_PREFIX))
    events = await _service(request).events(
        caller_of(request.scope), request.path_params["job_id"], limit + 1, after_id
    )
    return _page([event_json(event) for event in events], limit)
