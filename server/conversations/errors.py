"""Typed errors of the conversation stores, with the HTTP answer each gets (server/errors.py)."""

from __future__ import annotations

from server.errors import ServerError


class ConversationError(ServerError):
    """Base of this package's errors."""


class StoredCompletionNotFound(ConversationError):
    status, type, code = 404, "invalid_request_error", "not_found"

    def __init__(self, completion_id: str, param: str = "completion_id") -> None:
        super().__init__(f"No stored chat completion with id '{completion_id}' found.")
        self.completion_id = completion_id
        self.param = param


class StoredResponseNotFound(ConversationError):
    status, type, code = 404, "invalid_request_error", "not_found"

    def __init__(self, response_id: str, param: str = "response_id") -> None:
        super().__init__(f"No response with id '{response_id}' found.")
        self.response_id = response_id
        self.param = param
