"""Typed failures of the memory service, with the HTTP answer each gets (server/errors.py)."""

from __future__ import annotations

from server.errors import ServerError


class MemoryServiceError(ServerError):
    """Base of the memory service's errors."""


class GroupNotFound(MemoryServiceError):
    status, type, code, param = 404, "invalid_request_error", "memory_group_not_found", "memory_group"

    def __init__(self, name: str) -> None:
        super().__init__(f"Memory group {name!r} does not exist.")
        self.name = name


class MemoryNotFound(MemoryServiceError):
    status, type, code, param = 404, "invalid_request_error", "memory_not_found", "memory_id"

    def __init__(self, group: str, memory_id: int) -> None:
        super().__init__(f"Memory {memory_id} does not exist in group {group!r}.")
        self.memory_id = memory_id
