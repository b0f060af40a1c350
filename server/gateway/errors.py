"""Typed failures of the gateway, with the HTTP answer each gets (server/errors.py)."""

from __future__ import annotations

import math

from server.errors import ServerError


class GatewayError(ServerError):
    """Base of the gateway's errors."""

    status, type = 400, "invalid_request_error"


class KeyNotFound(GatewayError):
    status, code, param = 404, "key_not_found", "key_id"

    def __init__(self, key_id: str) -> None:
        super().__init__(f"API key {key_id!r} does not exist.")
        self.key_id = key_id


class AdminOnly(GatewayError):
    status, type, code = 403, "permission_error", "admin_key_required"

    def __init__(self) -> None:
        super().__init__("This endpoint needs an admin API key.")


class NotAllowed(GatewayError):
    """The key may not use this model or adapter."""

    status, type, code = 403, "permission_error", "model_not_allowed"

    def __init__(self, what: str, name: str, param: str) -> None:
        super().__init__(f"This API key is not allowed to use the {what} `{name}`.")
        self.param = param


class InsufficientCredits(GatewayError):
    status, type, code = 402, "insufficient_quota", "insufficient_credits"

    def __init__(self, needed: int | None = None, left: int | None = None) -> None:
        if needed is None:
            super().__init__("This API key has no credits left. Ask an admin to add credits.")
        else:
            super().__init__(
                f"This request may use up to {needed} tokens and this API key has {left} credits left. "
                "Lower `max_tokens`, or ask an admin to add credits."
            )


class WorkNotCovered(InsufficientCredits):
    """Metered work (moderation, memory, fine-tuning) costs more credits than the key has left (402)."""

    def __init__(self, what: str, needed: int) -> None:
        ServerError.__init__(
            self, f"This API key has too few credits left for {what} ({needed} needed). Ask an admin to add credits."
        )


class AdapterHidden(GatewayError):
    """Another key's adapter that was not shared: answered as if it did not exist."""

    status, code = 404, "adapter_not_found"

    def __init__(self, name: str, param: str) -> None:
        super().__init__(f"The adapter `{name}` does not exist.")
        self.param = param


class AdapterNotOwned(GatewayError):
    """A shared adapter of another key: usable, but only its owner or an admin may change it."""

    status, type, code = 403, "permission_error", "adapter_not_owned"

    def __init__(self, name: str, param: str) -> None:
        super().__init__(f"The adapter `{name}` belongs to another API key; only its owner or an admin may change it.")
        self.param = param


class QuotaExceeded(GatewayError):
    """A key owns as many of something as its quota allows."""

    status, type, code = 403, "permission_error", "quota_exceeded"

    def __init__(self, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.param = param

    @classmethod
    def of(cls, what: str, quota: int, param: str | None = None) -> QuotaExceeded:
        return cls(f"This API key has reached its quota of {quota} {what}; delete some first.", param)


class RateLimited(GatewayError):
    status, type, code = 429, "rate_limit_error", "rate_limit_exceeded"

    def __init__(self, limit: str, retry_after_s: float) -> None:
        super().__init__(f"Rate limit reached: {limit}. Retry after {retry_after_s:.1f} s.")
        self.retry_after_s = retry_after_s

    def headers(self) -> dict[str, str]:
        return {"Retry-After": str(max(1, math.ceil(self.retry_after_s)))}


class TooManyInFlight(GatewayError):
    """The key has as many requests (or streams) in flight as it may (429; one may end within a second)."""

    status, type, code = 429, "rate_limit_error", "too_many_concurrent_requests"

    def __init__(self, what: str) -> None:
        super().__init__(f"This API key already has {what} in flight; wait for one to finish.")

    def headers(self) -> dict[str, str]:
        return {"Retry-After": "1"}


class TemplateNotFound(GatewayError):
    status, code, param = 404, "template_not_found", "template"

    def __init__(self, reference: str) -> None:
        super().__init__(f"Template {reference!r} does not exist.")
        self.reference = reference


class TemplateNameTaken(GatewayError):
    status, code, param = 409, "template_exists", "name"

    def __init__(self, name: str) -> None:
        super().__init__(f"A template named {name!r} already exists; update it to make a new version.")


class MissingVariable(GatewayError):
    status, code = 422, "missing_variable"

    def __init__(self, name: str) -> None:
        super().__init__(f"The template needs the variable `{name}`, which `variables` does not give.")
        self.name = name
        self.param = f"variables.{name}"


class ProviderNotFound(GatewayError):
    status, code, param = 404, "provider_not_found", "model"

    def __init__(self, provider: str) -> None:
        super().__init__(f"No provider named {provider!r} is configured; see GET /v1/endpoints.")
        self.provider = provider


class UpstreamFailed(GatewayError):
    """A provider answered with an error, or could not be reached.

    A provider's own OpenAI-shaped answer to a bad request (4xx) is passed on as is;
    otherwise 429 and 504 keep their status and anything else is a 502."""

    def __init__(self, provider: str, status: int, message: str, body: dict | None = None) -> None:
        super().__init__(f"Provider {provider!r}: {message}")
        self.provider = provider
        self.upstream_status = status  # the provider's status; 502/504 when it could not be reached
        self.body = body  # the provider's OpenAI-shaped error body, passed on as is when it is one
        error = body.get("error") if isinstance(body, dict) else None
        if status < 500 and isinstance(error, dict):
            self.status, self.type, self.code, self.param = status, "invalid_request_error", None, None
            self._message = error.get("message", str(self))
            self.param, self.code = error.get("param"), error.get("code")
        else:
            self.status = status if status in (429, 504) else 502
            self.type, self.code, self.param, self._message = "upstream_error", "upstream_failed", None, str(self)

    @property
    def message(self) -> str:
        return self._message

    @property
    def retryable(self) -> bool:
        """Worth trying the next model: rate limited, a server error, unreachable or timed out."""
        return self.upstream_status == 429 or self.upstream_status >= 500


class ModelUnavailable(GatewayError):
    """Neither this server nor a provider serves the model (a fallback list goes on to the next)."""

    status, code, param = 404, "model_not_found", "model"

    def __init__(self, model: str) -> None:
        super().__init__(f"The model `{model}` does not exist or you do not have access to it.")
        self.model = model
