"""Errors the engine raises, with the HTTP answer each gets (server/errors.py)."""

from server.errors import ServerError


class EngineError(ServerError):
    """Base class for errors raised by the engine package."""


class EngineUnavailable(EngineError):
    """The vLLM engine is not running (dead, restarting, or not started): retry later or elsewhere."""

    def __init__(self, message: str, retry_after_s: int = 10) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s

    status, type, code = 503, "service_unavailable", "engine_unavailable"

    def headers(self) -> dict[str, str]:
        return {"Retry-After": str(self.retry_after_s)}


class ContextLengthExceeded(EngineError):
    """Prompt tokens plus requested completion tokens exceed the model's context."""

    status, type, code, param = 400, "invalid_request_error", "context_length_exceeded", "messages"


class InvalidPrompt(EngineError):
    """The conversation cannot be rendered with the model's chat template."""

    status, type, code, param = 400, "invalid_request_error", "invalid_prompt", "messages"


class InvalidOption(EngineError):
    """vLLM refused a request option (e.g. a logit_bias token outside the vocabulary)."""

    status, type, code = 400, "invalid_request_error", "invalid_value"

    def __init__(self, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.param = param


class AdapterOfAnotherModel(EngineError):
    """An adapter named with (or added to) a base model it does not belong to: each adapter has one base model."""

    status, type, code = 400, "invalid_request_error", "adapter_model_mismatch"

    def __init__(self, adapter: str, parent: str, model: str, param: str = "lora_name") -> None:
        super().__init__(f"The adapter `{adapter}` belongs to the model `{parent}`, not `{model}`.")
        self.param = param
