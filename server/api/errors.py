"""OpenAI-shaped errors: `{"error": {"message", "type", "param", "code"}}`.

Capability packages raise their own typed errors and know nothing of HTTP;
this module is the one place that maps them to a status code and error body.
"""

from __future__ import annotations

import json
import logging
import math

from pydantic import ValidationError
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse

from server.adaption.errors import JobFinished, JobNotFound
from server.api.protocol import InvalidParam
from server.engine.adapters import AdapterNotFound, InvalidAdapter
from server.engine.errors import ContextLengthExceeded, EngineUnavailable, InvalidOption, InvalidPrompt
from server.gateway.errors import (
    AdminOnly,
    GatewayError,
    InsufficientCredits,
    KeyNotFound,
    MissingVariable,
    ModelUnavailable,
    NotAllowed,
    ProviderNotFound,
    RateLimited,
    TemplateNameTaken,
    TemplateNotFound,
    UpstreamFailed,
)
from server.guardrails.errors import GuardrailViolation
from server.memory.errors import GroupNotFound, MemoryNotFound

logger = logging.getLogger(__name__)


class APIError(Exception):
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
        self.headers = headers
        self.status = status
        self.message = message
        self.type = type
        self.param = param
        self.code = code

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


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


def to_api_error(exc: Exception) -> APIError:
    """Translate any error raised under a handler into its OpenAI form."""
    known = known_api_error(exc)
    if known is not None:
        return known
    logger.exception("unhandled error", exc_info=exc)
    return APIError(500, "The server had an error while processing your request.", type="server_error")


def status_of(exc: Exception) -> tuple[int, str | None]:
    """The status and code an error will answer with (without logging it: the handler does)."""
    known = known_api_error(exc)
    return (known.status, known.code) if known is not None else (500, None)


def known_api_error(exc: Exception) -> APIError | None:
    if isinstance(exc, APIError):
        return exc
    if isinstance(exc, ValidationError):
        return from_validation_error(exc)
    if isinstance(exc, InvalidParam):
        return invalid_request(str(exc), param=exc.param, code="invalid_value")
    if isinstance(exc, ContextLengthExceeded):
        return invalid_request(str(exc), param="messages", code="context_length_exceeded")
    if isinstance(exc, AdapterNotFound):
        return APIError(404, str(exc), param=exc.param, code="adapter_not_found")
    if isinstance(exc, InvalidAdapter):
        return invalid_request(str(exc), param=exc.param, code="invalid_adapter")
    if isinstance(exc, InvalidOption):
        return invalid_request(str(exc), param=exc.param, code="invalid_value")
    if isinstance(exc, InvalidPrompt):
        return invalid_request(str(exc), param="messages", code="invalid_prompt")
    if isinstance(exc, JobNotFound):
        return APIError(404, str(exc), param="fine_tuning_job_id", code="fine_tuning_job_not_found")
    if isinstance(exc, JobFinished):
        return invalid_request(str(exc), param="fine_tuning_job_id", code="job_already_finished")
    if isinstance(exc, GroupNotFound):
        return APIError(404, str(exc), param="memory_group", code="memory_group_not_found")
    if isinstance(exc, MemoryNotFound):
        return APIError(404, str(exc), param="memory_id", code="memory_not_found")
    if isinstance(exc, GuardrailViolation):
        return invalid_request(
            exc.reason, param="guardrail_policy", code="guardrail_violation", type="guardrail_violation"
        )
    if isinstance(exc, GatewayError):
        return gateway_error(exc)
    if isinstance(exc, EngineUnavailable):
        return APIError(503, str(exc), type="service_unavailable", code="engine_unavailable")
    if isinstance(exc, HTTPException):
        return APIError(exc.status_code, exc.detail, type="invalid_request_error", code=None)
    return None


def gateway_error(exc: GatewayError) -> APIError:
    message = str(exc)
    if isinstance(exc, ModelUnavailable):
        return model_not_found(exc.model)
    if isinstance(exc, NotAllowed):
        return APIError(403, message, type="permission_error", param=exc.param, code="model_not_allowed")
    if isinstance(exc, AdminOnly):
        return APIError(403, message, type="permission_error", code="admin_key_required")
    if isinstance(exc, InsufficientCredits):
        return APIError(402, message, type="insufficient_quota", code="insufficient_credits")
    if isinstance(exc, RateLimited):
        retry_after = str(max(1, math.ceil(exc.retry_after_s)))
        return APIError(
            429, message, type="rate_limit_error", code="rate_limit_exceeded", headers={"Retry-After": retry_after}
        )
    if isinstance(exc, KeyNotFound):
        return APIError(404, message, param="key_id", code="key_not_found")
    if isinstance(exc, TemplateNotFound):
        return APIError(404, message, param="template", code="template_not_found")
    if isinstance(exc, TemplateNameTaken):
        return APIError(409, message, param="name", code="template_exists")
    if isinstance(exc, MissingVariable):
        return APIError(422, message, param=f"variables.{exc.name}", code="missing_variable")
    if isinstance(exc, ProviderNotFound):
        return APIError(404, message, param="model", code="provider_not_found")
    if isinstance(exc, UpstreamFailed):
        if exc.status < 500 and exc.body is not None:  # the provider's own answer to a bad request: passed on
            error = exc.body["error"]
            return APIError(exc.status, error.get("message", message), param=error.get("param"), code=error.get("code"))
        status = exc.status if exc.status in (429, 504) else 502
        return APIError(status, message, type="upstream_error", code="upstream_failed")
    raise AssertionError(f"unmapped gateway error {type(exc).__name__}")


def error_response(exc: Exception, headers: dict[str, str] | None = None) -> JSONResponse:
    error = to_api_error(exc)
    return JSONResponse(error.body(), status_code=error.status, headers={**(error.headers or {}), **(headers or {})})


async def handle_exception(request: Request, exc: Exception) -> JSONResponse:
    # The 500 handler runs outside the request-id middleware: set its header here.
    request_id = request.scope.get("state", {}).get("request_id")
    return error_response(exc, headers={"x-request-id": request_id} if request_id else None)


async def read_json_object(request: Request) -> dict:
    """The request body as a JSON object, or a 400 saying why not."""
    body = await request.body()
    try:
        payload = json.loads(body)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise invalid_request(f"We could not parse the JSON body of your request: {exc}", code="invalid_json") from None
    if not isinstance(payload, dict):
        raise invalid_request("The request body must be a JSON object.", code="invalid_json")
    return payload
