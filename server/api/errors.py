"""OpenAI-shaped errors: `{"error": {"message", "type", "param", "code"}}`.

Capability packages raise their own typed errors (`server.errors.ServerError`,
which carry their status, type, code and param) and know nothing of HTTP; this
module turns those, pydantic's validation errors and Starlette's HTTP errors
into the one error body.
"""

from __future__ import annotations

import json
import logging

from pydantic import ValidationError
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse

from server.diskfull import DISK_FULL_MESSAGE, is_disk_full
from server.engine.adapters import AdapterQuotaExceeded
from server.errors import ServerError
from server.gateway.errors import QuotaExceeded

logger = logging.getLogger(__name__)


class APIError(ServerError):
    """An error the HTTP layer itself raises (bad query parameters, bad JSON, a missing key)."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        type: str = "invalid_request_error",
        param: str | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.type = type
        self.param = param
        self.code = code
        self._headers = headers or {}
        self._message = message

    @property
    def message(self) -> str:
        return self._message

    def headers(self) -> dict[str, str]:
        return self._headers

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}

    @classmethod
    def of(cls, error: ServerError) -> APIError:
        if isinstance(error, APIError):
            return error
        return cls(
            error.status, error.message, type=error.type, param=error.param, code=error.code, headers=error.headers()
        )


def invalid_request(
    message: str, param: str | None = None, code: str | None = None, type: str = "invalid_request_error"
) -> APIError:
    return APIError(400, message, type=type, param=param, code=code)


def model_not_found(model: str) -> APIError:
    return APIError(
        404,
        f"The model `{model}` does not exist or you do not have access to it.",
        param="model",
        code="model_not_found",
    )


def invalid_api_key() -> APIError:
    return APIError(
        401,
        "Incorrect or missing API key. Send it as `Authorization: Bearer <key>`.",
        type="authentication_error",
        code="invalid_api_key",
    )


_TYPE_NAMES = frozenset({"str", "int", "float", "bool", "dict", "list", "none"})


def _is_union_branch(part: str) -> bool:
    """Pydantic names the union member it tried (`str`, `literal[...]`, `NamedToolChoice`); clients never do."""
    return not part.isidentifier() or part[0].isupper() or part in _TYPE_NAMES


def _param_path(loc: tuple) -> str:
    """Pydantic's ('messages', 0, 'role') -> OpenAI's 'messages[0].role'."""
    path = ""
    for part in loc:
        if isinstance(part, int):
            path += f"[{part}]"
        elif _is_union_branch(part):
            continue
        else:
            path += f".{part}" if path else part
    return path


def from_validation_error(error: ValidationError) -> APIError:
    first = error.errors()[0]
    param = _param_path(first["loc"])
    message = first["msg"].removeprefix("Value error, ")
    if first["type"] == "missing":
        message = f"Missing required parameter: '{param}'."
    else:
        message = f"Invalid value for '{param}': {message}."
    return invalid_request(
        message, param=param, code="missing_required_parameter" if first["type"] == "missing" else "invalid_value"
    )


def to_api_error(exc: BaseException) -> APIError:
    """Translate any error raised under a handler into its OpenAI form."""
    known = known_api_error(exc)
    if known is not None:
        return known
    logger.exception("unhandled error", exc_info=exc)
    return APIError(500, "The server had an error while processing your request.", type="server_error")


def status_of(exc: BaseException) -> tuple[int, str | None]:
    """The status and code an error will answer with (without logging it: the handler does)."""
    known = known_api_error(exc)
    return (known.status, known.code) if known is not None else (500, None)


def known_api_error(exc: BaseException) -> APIError | None:
    if isinstance(exc, ServerError):
        return APIError.of(exc)
    if isinstance(exc, ValidationError):
        return from_validation_error(exc)
    if isinstance(exc, HTTPException):
        return APIError(exc.status_code, exc.detail, type="invalid_request_error", code=None)
    if is_disk_full(exc):
        return APIError(503, DISK_FULL_MESSAGE, type="service_unavailable", code="storage_full", headers=RETRY_LATER)
    return None


RETRY_LATER = {"Retry-After": "60"}
QUOTA_ERRORS = (QuotaExceeded, AdapterQuotaExceeded)


def error_response(exc: Exception, headers: dict[str, str] | None = None) -> JSONResponse:
    error = to_api_error(exc)
    return JSONResponse(error.body(), status_code=error.status, headers={**error.headers(), **(headers or {})})


async def handle_exception(request: Request, exc: Exception) -> JSONResponse:
    state = request.scope.get("state", {})
    if isinstance(exc, QUOTA_ERRORS) and "principal" in state:
        key = state["principal"].key
        request.app.state.metrics.refused("quota", key.id if key else None)
    # The 500 handler runs outside the request-id middleware: set its header here.
    request_id = state.get("request_id")
    return error_response(exc, headers={"x-request-id": request_id} if request_id else None)


async def read_json_object(request: Request) -> dict:
    """The request body as a JSON object, or a 400 saying why not (parsed by the request guard middleware when
    it ran: bounded in size and depth, large bodies off the event loop)."""
    state = request.scope.get("state", {})
    if "json_body" in state:
        payload = state["json_body"]
    else:
        body = await request.body()
        try:
            payload = json.loads(body)
        except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as exc:
            raise invalid_request(
                f"We could not parse the JSON body of your request: {exc}", code="invalid_json"
            ) from None
    if not isinstance(payload, dict):
        raise invalid_request("The request body must be a JSON object.", code="invalid_json")
    return payload
