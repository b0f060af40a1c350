"""`/v1/memory/{memory_group}/...`: manage a group's memories (list, search, add, update, delete, curate).

Every call acts for the calling API key: another key's groups are not found.
"""

from __future__ import annotations

import re

from pydantic import BaseModel, ConfigDict, Field, field_validator
from starlette.requests import Request
from starlette.responses import Response

from server.api.errors import invalid_request, read_json_object
from server.api.metering import check_memory_quota, metered, tokens_of
from server.api.middleware import caller_of, request_id_of
from server.api.protocol import MEMORY_GROUP_MAX, MEMORY_GROUP_PATTERN, USER_GOAL_MAX
from server.api.protocol_resources import (
    AuditEntryObject,
    CurationChangeObject,
    CurationObject,
    Deleted,
    Item,
    ListOf,
    MemoryGroupObject,
    MemoryObject,
    MemorySearchResult,
    json_response,
)
from server.memory.curation import Consolidate
from server.memory.service import CurationReport, MemoryService
from server.memory.store import AuditEntry, Memory, MemoryGroup

MEMORY_TEXT_MAX = 4000
MAX_BATCH = 256
MAX_PAGE = 1000

MemoryText = Field(min_length=1, max_length=MEMORY_TEXT_MAX)


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


class AddMemories(_Body):
    text: str | list[str]
    user_goal: str | None = Field(None, min_length=1, max_length=USER_GOAL_MAX)

    @field_validator("text")
    @classmethod
    def _texts(cls, text: str | list[str]) -> str | list[str]:
        texts = [text] if isinstance(text, str) else text
        if not 1 <= len(texts) <= MAX_BATCH:
            raise ValueError(f"give between 1 and {MAX_BATCH} texts")
        for item in texts:
            if not item.strip() or len(item) > MEMORY_TEXT_MAX:
                raise ValueError(f"each text must be non-empty and at most {MEMORY_TEXT_MAX} characters")
        return text

    @property
    def texts(self) -> list[str]:
        return [self.text] if isinstance(self.text, str) else self.text


class UpdateMemory(_Body):
    text: str = MemoryText

    @field_validator("text")
    @classmethod
    def _not_blank(cls, text: str) -> str:
        if not text.strip():
            raise ValueError("text must not be blank")
        return text


class SearchMemories(_Body):
    query: str = MemoryText
    limit: int = Field(10, ge=1, le=100)


def memory_json(memory: Memory, group: str) -> MemoryObject:
    return MemoryObject(
        id=memory.id,
        memory_group=group,
        text=memory.text,
        kind=memory.kind,
        speaker=memory.speaker,
        source_request_id=memory.source_request_id,
        created_at=int(memory.created_at),
        updated_at=int(memory.updated_at),
    )


def group_json(group: MemoryGroup) -> MemoryGroupObject:
    return MemoryGroupObject(
        id=group.name,
        user_goal=group.user_goal,
        call_count=group.call_count,
        memory_count=group.memory_count,
        created_at=int(group.created_at),
        curated_at=int(group.curated_at) if group.curated_at else None,
    )


def curation_json(report: CurationReport) -> CurationObject:
    return CurationObject(
        id=report.run_id,
        memory_group=report.group,
        examined=report.examined,
        skipped=report.skipped,
        changes=[
            CurationChangeObject(
                action=change.action,
                removed=[memory.id for memory in change.removed],
                added=[memory.text for memory in change.added],
                reason=change.reason,
            )
            for change in report.applied
        ],
    )


def audit_json(entry: AuditEntry) -> AuditEntryObject:
    return AuditEntryObject(
        id=entry.id,
        run_id=entry.run_id,
        action=entry.action,
        removed=entry.removed,
        added=entry.added,
        reason=entry.reason,
        at=int(entry.at),
    )


def _group_name(request: Request) -> str:
    name = request.path_params["memory_group"]
    if len(name) > MEMORY_GROUP_MAX or not re.match(MEMORY_GROUP_PATTERN, name):
        raise invalid_request(
            f"memory_group must be at most {MEMORY_GROUP_MAX} letters, digits or . _ : - (starting with a letter or digit).",
            param="memory_group",
        )
    return name


def _int_query(request: Request, name: str, default: int | None, low: int, high: int) -> int | None:
    raw = request.query_params.get(name)
    if raw is None:
        return default
    if not raw.isdigit() or not low <= int(raw) <= high:
        raise invalid_request(f"`{name}` must be an integer between {low} and {high}.", param=name)
    return int(raw)


def _service(request: Request) -> MemoryService:
    return request.app.state.memory


def _list(data: list[Item], has_more: bool | None = None) -> Response:
    return json_response(ListOf(data=data, has_more=has_more))


async def list_groups(request: Request) -> Response:
    """`GET /v1/memory`: the caller's memory groups, by name."""
    groups = await _service(request).groups(caller_of(request.scope))
    return _list([group_json(group) for group in groups])


async def get_group(request: Request) -> Response:
    group = await _service(request).group(caller_of(request.scope), _group_name(request))
    return json_response(group_json(group))


async def delete_group(request: Request) -> Response:
    name = _group_name(request)
    await _service(request).delete_group(caller_of(request.scope), name)
    return json_response(Deleted(id=name, object="memory_group.deleted"))


async def list_memories(request: Request) -> Response:
    name = _group_name(request)
    limit = _int_query(request, "limit", 100, 1, MAX_PAGE)
    after = _int_query(request, "after", None, 0, 2**63 - 1)
    assert limit is not None
    memories = await _service(request).list_memories(caller_of(request.scope), name, limit + 1, after)
    return _list([memory_json(memory, name) for memory in memories[:limit]], has_more=len(memories) > limit)


async def add_memories(request: Request) -> Response:
    name = _group_name(request)
    body = AddMemories.model_validate(await read_json_object(request))
    await check_memory_quota(request, name, len(body.texts))
    rate = request.app.state.settings.metering.memory_add_per_token
    async with metered(request, rate * await tokens_of(request, body.texts), "embedding these memories"):
        added = await _service(request).add(
            caller_of(request.scope), name, body.texts, body.user_goal, request_id_of(request.scope)
        )
    return _list([memory_json(memory, name) for memory in added])


async def get_memory(request: Request) -> Response:
    name = _group_name(request)
    memory = await _service(request).get(caller_of(request.scope), name, request.path_params["memory_id"])
    return json_response(memory_json(memory, name))


async def update_memory(request: Request) -> Response:
    name = _group_name(request)
    body = UpdateMemory.model_validate(await read_json_object(request))
    rate = request.app.state.settings.metering.memory_add_per_token
    async with metered(request, rate * await tokens_of(request, [body.text]), "embedding this memory"):
        memory = await _service(request).update(
            caller_of(request.scope), name, request.path_params["memory_id"], body.text
        )
    return json_response(memory_json(memory, name))


async def delete_memory(request: Request) -> Response:
    name = _group_name(request)
    memory_id = request.path_params["memory_id"]
    await _service(request).delete(caller_of(request.scope), name, memory_id)
    return json_response(Deleted(id=memory_id, object="memory.deleted"))


async def search_memories(request: Request) -> Response:
    name = _group_name(request)
    body = SearchMemories.model_validate(await read_json_object(request))
    rate = request.app.state.settings.metering.memory_search_per_token
    async with metered(request, rate * await tokens_of(request, [body.query]), "a memory search"):
        hits = await _service(request).search(caller_of(request.scope), name, body.query, body.limit)
    return _list([MemorySearchResult(score=hit.score, memory=memory_json(hit.memory, name)) for hit in hits])


async def curate_group(request: Request) -> Response:
    name = _group_name(request)
    consolidate: Consolidate = request.app.state.consolidate
    await _service(request).group(caller_of(request.scope), name)  # 404 before any charge
    async with metered(request, request.app.state.settings.metering.memory_curate_per_run, "a curation run"):
        report = await _service(request).curate(caller_of(request.scope), name, consolidate)
    return json_response(curation_json(report))


async def memory_audit(request: Request) -> Response:
    name = _group_name(request)
    limit = _int_query(request, "limit", 100, 1, MAX_PAGE)
    assert limit is not None
    entries = await _service(request).audit(caller_of(request.scope), name, limit)
    return _list([audit_json(entry) for entry in entries])
