"""Typed errors of the conversation stores."""

from __future__ import annotations


class ConversationError(Exception):
    """Base of this package's errors."""


class StoredCompletionNotFound(ConversationError):
    def __init__(self, completion_id: str) -> None:
        super().__init__(f"No stored chat completion with id '{completion_id}' found.")
        self.completion_id = completion_id


class StoredResponseNotFound(ConversationError):
    def __init__(self, response_id: str, param: str = "response_id") -> None:
        super().__init__(f"No response with id '{response_id}' found.")
        self.response_id = response_id
        self.param = param
