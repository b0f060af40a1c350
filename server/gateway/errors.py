"""Typed failures of the gateway; `api/errors.py` maps them to HTTP errors."""

from __future__ import annotations


class GatewayError(Exception):
    """Base of the gateway's errors."""


class KeyNotFound(GatewayError):
    def __init__(self, key_id: str) -> None:
        super().__init__(f"API key {key_id!r} does not exist.")
        self.key_id = key_id


class AdminOnly(GatewayError):
    def __init__(self) -> None:
        super().__init__("This endpoint needs an admin API key.")


class NotAllowed(GatewayError):
    """The key may not use this model or adapter."""

    def __init__(self, what: str, name: str, param: str) -> None:
        super().__init__(f"This API key is not allowed to use the {what} `{name}`.")
        self.param = param


class InsufficientCredits(GatewayError):
    def __init__(self) -> None:
        super().__init__("This API key has no credits left. Ask an admin to add credits.")


class RateLimited(GatewayError):
    def __init__(self, limit: str, retry_after_s: float) -> None:
        super().__init__(f"Rate limit reached: {limit}. Retry after {retry_after_s:.1f} s.")
        self.retry_after_s = retry_after_s


class TemplateNotFound(GatewayError):
    def __init__(self, reference: str) -> None:
        super().__init__(f"Template {reference!r} does not exist.")
        self.reference = reference


class TemplateNameTaken(GatewayError):
    def __init__(self, name: str) -> None:
        super().__init__(f"A template named {name!r} already exists; update it to make a new version.")


class MissingVariable(GatewayError):
    def __init__(self, name: str) -> None:
        super().__init__(f"The template needs the variable `{name}`, which `variables` does not give.")
        self.name = name


class ProviderNotFound(GatewayError):
    def __init__(self, provider: str) -> None:
        super().__init__(f"No provider named {provider!r} is configured; see GET /v1/endpoints.")
        self.provider = provider


class UpstreamFailed(GatewayError):
    """A provider answered with an error, or could not be reached."""

    def __init__(self, provider: str, status: int, message: str, body: dict | None = None) -> None:
        super().__init__(f"Provider {provider!r}: {message}")
        self.provider = provider
        self.status = status  # the provider's status; 502/504 when it could not be reached
        self.body = body  # the provider's OpenAI-shaped error body, passed on as is when it is one

    @property
    def retryable(self) -> bool:
        """Worth trying the next model: rate limited, a server error, unreachable or timed out."""
        return self.status == 429 or self.status >= 500


class ModelUnavailable(GatewayError):
    """Neither this server nor a provider serves the model (a fallback list goes on to the next)."""

    def __init__(self, model: str) -> None:
        super().__init__(f"The model `{model}` does not exist or you do not have access to it.")
        self.model = model
