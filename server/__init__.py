"""Self-hosted OpenAI-compatible LLM server: vLLM in-process, behind Starlette."""

__version__ = "0.1.0"
