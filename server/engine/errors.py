"""Errors the engine raises; `api/errors.py` maps them to HTTP."""


class EngineError(Exception):
    """Base class for errors raised by the engine package."""


class EngineUnavailable(EngineError):
    """The vLLM engine is not running (dead, or not started): retry later or elsewhere."""


class ContextLengthExceeded(EngineError):
    """Prompt tokens plus requested completion tokens exceed the model's context."""


class InvalidPrompt(EngineError):
    """The conversation cannot be rendered with the model's chat template."""
