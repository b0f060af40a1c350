"""Typed failures of the memory service; `api/errors.py` turns them into HTTP errors."""

from __future__ import annotations


class MemoryServiceError(Exception):
    """Base of the memory service's errors."""


class GroupNotFound(MemoryServiceError):
    def __init__(self, name: str) -> None:
        super().__init__(f"Memory group {name!r} does not exist.")
        self.name = name


class MemoryNotFound(MemoryServiceError):
    def __init__(self, group: str, memory_id: int) -> None:
        super().__init__(f"Memory {memory_id} does not exist in group {group!r}.")
        self.memory_id = memory_id
