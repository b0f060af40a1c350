"""`POST /v1/moderations`: OpenAI's moderation shape, answered by the guardrail checker against a policy."""

from __future__ import annotations

import uuid

from starlette.requests import Request
from starlette.responses import JSONResponse

from server.api.errors import invalid_request, read_json_object
from server.api.metering import metered, tokens_of
from server.api.protocol import ModerationRequest, ModerationResponse, ModerationResult
from server.config import GuardrailSettings
from server.guardrails.checker import Checker

POLICY_CATEGORY = "policy"


def checked_policy(policy: str | None, limits: GuardrailSettings, param: str) -> str | None:
    """The policy, stripped, or a 400 naming `param` when it is blank or too long."""
    if policy is None:
        return None
    if not policy.strip():
        raise invalid_request(f"`{param}` must be a non-empty policy.", param=param, code="invalid_value")
    if len(policy) > limits.max_policy_chars:
        raise invalid_request(
            f"`{param}` is {len(policy)} characters long; at most {limits.max_policy_chars} are allowed.",
            param=param,
            code="invalid_value",
        )
    return policy.strip()


def checked_inputs(body: ModerationRequest, limits: GuardrailSettings) -> list[str]:
    inputs = body.inputs
    if not inputs:
        raise invalid_request("`input` must hold at least one string.", param="input", code="invalid_value")
    if len(inputs) > limits.max_moderation_inputs:
        raise invalid_request(
            f"`input` holds {len(inputs)} strings; at most {limits.max_moderation_inputs} are allowed.",
            param="input",
            code="invalid_value",
        )
    for index, text in enumerate(inputs):
        if len(text) > limits.max_moderation_chars:
            raise invalid_request(
                f"`input[{index}]` is longer than {limits.max_moderation_chars} characters.",
                param=f"input[{index}]",
                code="invalid_value",
            )
    return inputs


async def create_moderation(request: Request) -> JSONResponse:
    limits: GuardrailSettings = request.app.state.settings.guardrails
    checker: Checker = request.app.state.checker
    body = ModerationRequest.model_validate(await read_json_object(request), strict=True)
    inputs = checked_inputs(body, limits)
    policy = checked_policy(body.policy, limits, "policy") or limits.moderation_policy
    rate = request.app.state.settings.metering.moderation_per_token
    async with metered(request, rate * await tokens_of(request, inputs), "this moderation"):
        verdicts = await checker.check_many(policy, inputs)
    response = ModerationResponse(
        id=f"modr-{uuid.uuid4().hex}",
        model=checker.name,
        results=[
            ModerationResult(
                flagged=verdict.flagged,
                categories={POLICY_CATEGORY: verdict.flagged},
                category_scores={POLICY_CATEGORY: verdict.score},
                category_applied_input_types={POLICY_CATEGORY: ["text"]},
                score=verdict.score,
                reason=verdict.reason,
                kind=verdict.kind,
            )
            for verdict in verdicts
        ],
    )
    return JSONResponse(response.model_dump())
