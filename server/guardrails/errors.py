"""Typed guardrail errors; `api/errors.py` maps them to OpenAI-shaped responses."""

from __future__ import annotations


class GuardrailViolation(Exception):
    """The output broke the request's policy: its text must not reach the client."""

    def __init__(self, reason: str, score: float) -> None:
        super().__init__(reason)
        self.reason = reason
        self.score = score
