"""The chat request's wire side: validated JSON -> ChatCall (pure, no server)."""

from __future__ import annotations

from server.api.chat_request import PROVIDER_FIELDS, to_call
from server.api.protocol import ChatCompletionRequest
from server.gateway.keys import Principal
from server.gateway.service import RequestAccount

PAYLOAD = {
    "model": "m",
    "models": ["m@up"],
    "messages": [{"role": "developer", "content": "Be brief."}, {"role": "user", "content": "Hi"}],
    "max_tokens": 5,
    "temperature": 0.2,
    "stream": True,
    "nightly": ["group", "goal"],
    "guardrail_policy": "No insults.",
    "chunk_size": 3,
    "lora_name": "alpha",
    "finetune_thresh": 4,
    "session_id": "s",
    "transforms": ["middle-out"],
}


def test_to_call_reads_every_part_of_the_request() -> None:
    body = ChatCompletionRequest.model_validate(PAYLOAD, strict=True)
    call = to_call(body, PAYLOAD, RequestAccount("req-1", Principal("o", False)), "o")
    assert call.models == ("m", "m@up") and call.stream and call.middle_out
    assert [turn.role for turn in call.turns] == ["system", "user"]
    assert (call.options.max_tokens, call.options.temperature) == (5, 0.2)
    assert (call.memory.group, call.memory.user_goal) == ("group", "goal")
    assert (call.policy.policy, call.policy.chunk_size, call.policy.sliding_window) == ("No insults.", 3, 5)
    assert call.adapter.lora_name == "alpha" and call.adapter.is_target and not call.adapter.run_on_target
    assert (call.adaption.adapter, call.adaption.threshold, call.adaption.min_group) == ("alpha", 4, 5)


def test_providers_get_only_openai_fields() -> None:
    body = ChatCompletionRequest.model_validate(PAYLOAD, strict=True)
    call = to_call(body, PAYLOAD, RequestAccount("req-1", Principal("o", False)), "o")
    assert set(call.provider_body) == {"model", "messages", "max_tokens", "temperature", "stream"}
    for extension in ("nightly", "guardrail_policy", "chunk_size", "lora_name", "finetune_thresh", "models"):
        assert extension not in PROVIDER_FIELDS
