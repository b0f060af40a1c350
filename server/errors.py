"""The root of the server's own errors, and how each answers over HTTP.

Every capability package's errors derive from `ServerError` and say, as class
attributes, the status, OpenAI error type, code and param they answer with;
`api/errors.py` turns any of them into an OpenAI error object, the gateway
records the same status in usage. Nothing here knows of HTTP frameworks.
"""

from __future__ import annotations

import asyncio

CLIENT_CLOSED = 499  # nginx's status for a client that left before the answer
CLIENT_CLOSED_CODE = "client_closed_request"


class ServerError(Exception):
    """Base of the server's typed errors; subclasses override the class attributes."""

    status: int = 500
    type: str = "server_error"
    code: str | None = None
    param: str | None = None

    @property
    def message(self) -> str:
        return str(self)

    def headers(self) -> dict[str, str]:
        """Extra response headers (e.g. Retry-After)."""
        return {}


class InvalidParam(ServerError):
    """A request whose fields contradict each other; raised through pydantic as is, naming the param."""

    status, type, code = 400, "invalid_request_error", "invalid_value"

    def __init__(self, param: str, message: str) -> None:
        super().__init__(message)
        self.param = param


def outcome_of(exc: BaseException | None) -> tuple[int, str | None]:
    """(status, code) a request ends with: 200, the typed error's, 499 when the client left, else 500."""
    if exc is None:
        return 200, None
    if isinstance(exc, ServerError):
        return exc.status, exc.code
    if isinstance(exc, GeneratorExit | asyncio.CancelledError):
        return CLIENT_CLOSED, CLIENT_CLOSED_CODE
    return 500, None
