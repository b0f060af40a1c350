"""Response shapes of the server's resources (endpoints, memory, jobs, adapters, keys, usage, templates),
as typed pydantic models beside the chat ones in `protocol.py`."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel


class Endpoint(BaseModel):
    object: Literal["endpoint"] = "endpoint"
    id: str  # model@provider
    model: str
    provider: str


class EndpointList(BaseModel):
    object: Literal["list"] = "list"
    data: list[Endpoint]
