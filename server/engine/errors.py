"""Errors the engine raises; `api/errors.py` maps them to HTTP."""


class EngineError(Exception):
    """Base class for errors raised by the engine package."""


class EngineUnavailable(EngineError):
    """The vLLM engine is not running (dead, or not started): retry later or elsewhere."""


class ContextLengthExceeded(EngineError):
    """Prompt tokens plus requested completion tokens exceed the model's context."""


class InvalidPrompt(EngineError):
    """The conversation cannot be rendered with the model's chat template."""


class InvalidOption(EngineError):
    """vLLM refused a request option (e.g. a logit_bias token outside the vocabulary)."""

    def __init__(self, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.param = param
