"""The vLLM engine: lifecycle, prompt rendering, sampling. Knows nothing of HTTP."""

from server.engine.prompt import ChatTurn
from server.engine.runtime import CompletionDelta, Engine, PreparedChat
from server.engine.sampling import GenerationOptions

__all__ = ["ChatTurn", "CompletionDelta", "Engine", "GenerationOptions", "PreparedChat"]
