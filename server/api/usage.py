"""`GET /v1/usage`: request and token totals grouped by session, tag, user, model, key or day.

A key sees its own usage; an admin key sees everyone's. `GET
/v1/usage/requests/{request_id}` returns one request's records, with the
bodies when they were logged.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict
from typing import get_args

from starlette.requests import Request
from starlette.responses import Response

from server.api.errors import APIError, invalid_request
from server.api.middleware import principal_of
from server.api.protocol_resources import ListOf, RequestUsage, UsageReport, UsageRow, json_response
from server.gateway.usage import GroupBy, UsageQuery, UsageStore

GROUP_NAMES = get_args(GroupBy)


def _group_by(request: Request) -> tuple[GroupBy, ...]:
    raw = request.query_params.get("group_by", "")
    names = [name.strip() for name in raw.split(",") if name.strip()]
    unknown = [name for name in names if name not in GROUP_NAMES]
    if unknown or len(set(names)) != len(names):
        raise invalid_request(
            f"`group_by` takes distinct names from: {', '.join(GROUP_NAMES)}; got {raw!r}.", param="group_by"
        )
    return tuple(names)  # type: ignore[return-value]  # checked against GroupBy above


def _time(request: Request, name: str, default: float) -> float:
    raw = request.query_params.get(name)
    if raw is None:
        return default
    try:
        value = float(raw)
    except ValueError:
        value = -1.0
    if not math.isfinite(value) or value < 0:
        raise invalid_request(f"`{name}` must be a Unix time in seconds.", param=name)
    return value


async def get_usage(request: Request) -> Response:
    principal = principal_of(request.scope)
    group_by = _group_by(request)
    start = _time(request, "start", 0.0)
    end = _time(request, "end", time.time() + 1)
    if end <= start:
        raise invalid_request("`end` must be after `start`.", param="end")
    store: UsageStore = request.app.state.usage
    query = UsageQuery(group_by, start, end, owner=None if principal.admin else principal.owner)
    rows = await store.aggregate(query)
    data = [UsageRow(**row, total_tokens=(row["prompt_tokens"] or 0) + (row["completion_tokens"] or 0)) for row in rows]
    return json_response(UsageReport(group_by=list(group_by), start=start, end=end, data=data))


async def get_request_usage(request: Request) -> Response:
    principal = principal_of(request.scope)
    request_id = request.path_params["request_id"]
    store: UsageStore = request.app.state.usage
    records = await store.find(request_id, owner=None if principal.admin else principal.owner)
    if not records:
        raise APIError(
            404, f"No usage recorded for request {request_id!r}.", param="request_id", code="request_not_found"
        )
    return json_response(
        ListOf(data=[RequestUsage(**{**asdict(record), "tags": list(record.tags)}) for record in records])
    )
