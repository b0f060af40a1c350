"""Stored chat completions: `store: true` on `POST /v1/chat/completions` keeps the exchange, and
`GET /v1/chat/completions[/{id}[/messages]]`, `POST` (metadata) and `DELETE /v1/chat/completions/{id}`
read and manage them, as OpenAI's reference describes. Each key sees only what it stored.
"""

from __future__ import annotations

import json
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator
from starlette.requests import Request
from starlette.responses import JSONResponse

from server.api.errors import from_validation_error, invalid_request, read_json_object
from server.api.middleware import caller_of
from server.conversations.chunks import ChunkFolder
from server.conversations.metadata import checked_metadata
from server.conversations.store import ConversationStore, StoredChat

MAX_PAGE = 100
_METADATA_FILTER = re.compile(r"^metadata\[(.+)\]$")


def _store(request: Request) -> ConversationStore:
    return request.app.state.conversations


def wire_completion(stored: StoredChat) -> dict:
    return {**stored.completion, "metadata": stored.metadata}


def _stored_chat(payload: dict, completion: dict) -> StoredChat:
    return StoredChat(
        id=completion["id"],
        model=completion.get("model") or payload.get("model") or "",
        created=int(completion.get("created") or 0),
        metadata=payload.get("metadata") or {},
        messages=payload.get("messages") or [],
        completion=completion,
    )


@dataclass(frozen=True, slots=True)
class Keeper:
    """The chat path's storing step for a `store: true` request: the answer, once it is whole, kept for the caller."""

    store: ConversationStore
    owner: str
    payload: dict

    async def whole(self, completion: dict) -> None:
        await self.store.save_chat(self.owner, _stored_chat(self.payload, completion))

    async def streamed(self, chunks: AsyncIterator[str]) -> AsyncIterator[str]:
        """The stream's chunks unchanged; once they end well (before `[DONE]` goes out), the folded completion
        is stored. A stream that fails midway (an error raised through here) stores nothing."""
        folder = ChunkFolder()
        try:
            async for data in chunks:
                folder.add(json.loads(data))
                yield data
        finally:
            aclose = getattr(chunks, "aclose", None)
            if aclose is not None:
                await aclose()
        await self.whole(folder.completion())


def keeper(request: Request, payload: dict) -> Keeper:
    """`POST /v1/chat/completions` with `store: true` keeps the exchange (`payload`: the request as run)."""
    return Keeper(_store(request), caller_of(request.scope), payload)


class ListQuery(BaseModel):
    model_config = ConfigDict(extra="forbid")

    after: str | None = Field(None, min_length=1)
    limit: int = Field(20, ge=1, le=MAX_PAGE)
    order: Literal["asc", "desc"] = "asc"
    model: str | None = Field(None, min_length=1)


class MetadataUpdate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    metadata: dict[str, str] | None

    @field_validator("metadata")
    @classmethod
    def _limits(cls, metadata: dict[str, str] | None) -> dict[str, str] | None:
        return checked_metadata(metadata)


def list_query(params: dict[str, str], fields: set[str]) -> ListQuery:
    """A list endpoint's `after`, `limit`, `order` (and `model`) query parameters, checked; others refused."""
    for name in params:
        if name not in fields:
            raise invalid_request(f"Unknown query parameter '{name}'.", param=name, code="unknown_parameter")
    try:
        return ListQuery.model_validate(
            {name: value for name, value in params.items() if name in ListQuery.model_fields}
        )
    except ValidationError as exc:
        raise from_validation_error(exc) from None


def _query(request: Request, fields: set[str]) -> tuple[ListQuery, dict[str, str]]:
    plain: dict[str, str] = {}
    metadata: dict[str, str] = {}
    for name, value in request.query_params.multi_items():
        match = _METADATA_FILTER.match(name)
        if match and "metadata" in fields:
            metadata[match.group(1)] = value
        else:
            plain[name] = value
    return list_query(plain, fields - {"metadata"}), metadata


def list_page(data: list[dict], has_more: bool) -> dict:
    return {
        "object": "list",
        "data": data,
        "first_id": data[0]["id"] if data else None,
        "last_id": data[-1]["id"] if data else None,
        "has_more": has_more,
    }


async def list_chat_completions(request: Request) -> JSONResponse:
    query, metadata = _query(request, {"after", "limit", "order", "model", "metadata"})
    page = await _store(request).list_chats(
        caller_of(request.scope),
        model=query.model,
        metadata=metadata,
        after=query.after,
        limit=query.limit,
        order=query.order,
    )
    return JSONResponse(list_page([wire_completion(item) for item in page.items], page.has_more))


async def _get(request: Request) -> StoredChat:
    return await _store(request).get_chat(caller_of(request.scope), request.path_params["completion_id"])


async def get_chat_completion(request: Request) -> JSONResponse:
    return JSONResponse(wire_completion(await _get(request)))


async def update_chat_completion(request: Request) -> JSONResponse:
    try:
        update = MetadataUpdate.model_validate(await read_json_object(request), strict=True)
    except ValidationError as exc:
        raise from_validation_error(exc) from None
    stored = await _store(request).update_chat_metadata(
        caller_of(request.scope), request.path_params["completion_id"], update.metadata or {}
    )
    return JSONResponse(wire_completion(stored))


async def delete_chat_completion(request: Request) -> JSONResponse:
    completion_id = request.path_params["completion_id"]
    await _store(request).delete_chat(caller_of(request.scope), completion_id)
    return JSONResponse({"object": "chat.completion.deleted", "id": completion_id, "deleted": True})


def store_messages(stored: StoredChat) -> list[dict]:
    """The request's messages as OpenAI lists them: each with an id, text parts joined into `content`."""
    messages = []
    for position, message in enumerate(stored.messages):
        content = message.get("content")
        parts = content if isinstance(content, list) else None
        text = "".join(part.get("text", "") for part in parts) if parts is not None else content
        messages.append(
            {
                "id": f"{stored.id}-{position}",
                "role": message.get("role"),
                "content": text,
                "name": message.get("name"),
                "content_parts": parts,
                **{key: message[key] for key in ("tool_calls", "tool_call_id") if message.get(key) is not None},
            }
        )
    return messages


def page_of(items: list[dict], after: str | None, limit: int, order: str, param: str = "after") -> tuple[list, bool]:
    ordered = items if order == "asc" else list(reversed(items))
    if after is not None:
        ids = [item["id"] for item in ordered]
        if after not in ids:
            raise invalid_request(f"No item with id '{after}' in this list.", param=param, code="not_found")
        ordered = ordered[ids.index(after) + 1 :]
    return ordered[:limit], len(ordered) > limit


async def list_chat_completion_messages(request: Request) -> JSONResponse:
    query, _ = _query(request, {"after", "limit", "order"})
    stored = await _get(request)
    data, has_more = page_of(store_messages(stored), query.after, query.limit, query.order)
    return JSONResponse(list_page(data, has_more))
