"""Typed guardrail errors, with the HTTP answer each gets (server/errors.py)."""

from __future__ import annotations

from server.errors import ServerError


class GuardrailViolation(ServerError):
    """The output broke the request's policy: its text must not reach the client."""

    status, type, code, param = 400, "guardrail_violation", "guardrail_violation", "guardrail_policy"

    def __init__(self, reason: str, score: float) -> None:
        super().__init__(reason)
        self.reason = reason
        self.score = score
