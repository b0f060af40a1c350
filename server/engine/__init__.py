"""The vLLM engine: lifecycle, prompt rendering, sampling, tool calls. Knows nothing of HTTP."""

from server.engine.logprobs import TokenLogprob, TopLogprob
from server.engine.prompt import ChatTurn
from server.engine.runtime import CompletionDelta, Engine, PreparedChat
from server.engine.sampling import GenerationOptions, JsonConstraint
from server.engine.tools import ToolCall, ToolCallChunk, ToolSpec, ToolUse

__all__ = [
    "ChatTurn",
    "CompletionDelta",
    "Engine",
    "GenerationOptions",
    "JsonConstraint",
    "PreparedChat",
    "TokenLogprob",
    "ToolCall",
    "ToolCallChunk",
    "ToolSpec",
    "ToolUse",
    "TopLogprob",
]
