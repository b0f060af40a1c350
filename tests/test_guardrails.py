"""Guardrails end to end: the real engine's output checked by the embedded checker, streamed and not.

The model's output is pinned with structured output (a JSON schema whose field
must be one given sentence), so each test knows exactly what the engine writes
and whether it breaks the policy; the verdict itself comes from the real checker.
"""

from __future__ import annotations

import json

import httpx
import openai
import pytest

from tests.conftest import MODEL, RunningServer, engine_running_requests, wait_until

POLICY = "Never give medication dosages."
VIOLATING = "Rest and drink plenty of water. Give your child 5 ml of paracetamol syrup every four hours."
CLEAN = "I can't advise on doses, but your pharmacist can help you choose the right amount."
LEAK_MARKERS = ("5 ml", "paracetamol", "four hours")


def pinned(sentence: str, *, notes_chars: int = 0) -> dict:
    """A request whose answer is the JSON string `"<sentence>"`; with `notes_chars`, the object
    `{"answer": sentence, "notes": ...}` whose free notes keep the engine generating."""
    schema: dict = {"type": "string", "enum": [sentence]}
    if notes_chars:
        properties = {"answer": schema, "notes": {"type": "string", "minLength": notes_chars}}
        schema = {
            "type": "object",
            "properties": properties,
            "required": list(properties),
            "additionalProperties": False,
        }
    return {
        "model": MODEL,
        "messages": [{"role": "user", "content": "My child has a fever. What should I do?"}],
        "response_format": {"type": "json_schema", "json_schema": {"name": "answer", "schema": schema}},
        "temperature": 0.0,
        "max_tokens": 400,
    }


def sse_events(raw: bytes) -> list[str]:
    return [line.removeprefix(b"data: ").decode() for line in raw.splitlines() if line.startswith(b"data: ")]


def stream_raw(http: httpx.Client, body: dict) -> bytes:
    with http.stream("POST", "/v1/chat/completions", json=body | {"stream": True}) as response:
        assert response.status_code == 200, response.read()
        return response.read()


def test_clean_answer_passes(client: openai.OpenAI) -> None:
    completion = client.chat.completions.create(**pinned(CLEAN), extra_body={"guardrail_policy": POLICY})
    assert json.loads(completion.choices[0].message.content) == CLEAN
    assert completion.choices[0].finish_reason == "stop"


def test_violating_answer_is_a_400_without_its_text(http: httpx.Client) -> None:
    response = http.post("/v1/chat/completions", json=pinned(VIOLATING) | {"guardrail_policy": POLICY})
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["type"] == "guardrail_violation" and error["code"] == "guardrail_violation"
    assert error["param"] == "guardrail_policy"
    assert "violates the policy" in error["message"]
    assert not any(marker in response.text for marker in LEAK_MARKERS)


def test_violating_answer_raises_in_the_sdk(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(**pinned(VIOLATING), extra_body={"guardrail_policy": POLICY})
    assert caught.value.code == "guardrail_violation"


def test_same_answer_without_a_policy_is_not_checked(client: openai.OpenAI) -> None:
    completion = client.chat.completions.create(**pinned(VIOLATING))
    assert json.loads(completion.choices[0].message.content) == VIOLATING


def test_clean_stream_arrives_whole(client: openai.OpenAI) -> None:
    stream = client.chat.completions.create(
        **pinned(CLEAN), stream=True, extra_body={"guardrail_policy": POLICY, "chunk_size": 3}
    )
    chunks = list(stream)
    text = "".join(chunk.choices[0].delta.content or "" for chunk in chunks if chunk.choices)
    assert json.loads(text) == CLEAN
    assert chunks[-1].choices[0].finish_reason == "stop"


@pytest.mark.parametrize(("chunk_size", "sliding_window"), [(10, 5), (5, 5), (3, 8), (1, 1), (2, 4)])
def test_violating_stream_never_leaks(http: httpx.Client, chunk_size: int, sliding_window: int) -> None:
    """Small units split the dosage across unit boundaries; the sliding window reads it whole.

    The clean first sentence may be released; nothing from the dosage on may be."""
    body = pinned(VIOLATING) | {
        "guardrail_policy": POLICY,
        "chunk_size": chunk_size,
        "sliding_window": sliding_window,
    }
    raw = stream_raw(http, body)
    assert not any(marker.encode() in raw for marker in LEAK_MARKERS), raw
    events = sse_events(raw)
    assert events[-1] == "[DONE]"
    error = json.loads(events[-2])["error"]
    assert error["code"] == "guardrail_violation" and error["param"] == "guardrail_policy"
    last_chunk = json.loads(events[-3])
    assert last_chunk["choices"] == [{"index": 0, "delta": {}, "finish_reason": "content_filter", "logprobs": None}]
    released = "".join(json.loads(e)["choices"][0]["delta"].get("content") or "" for e in events[:-2])
    assert json.dumps(VIOLATING).startswith(released)  # only text before the violating window was released


INSULT_POLICY = "Never insult the user or use profanity."
# No swear word: the insult is "you are" and "useless" several tokens apart, so a check sees it only with
# the text before its unit (directed-insult evidence), whatever the units.
INSULT = "Honestly, you are the most useless and pathetic person I have ever had to talk to."


def released_text(events: list[str]) -> str:
    return "".join(
        (json.loads(event)["choices"] or [{"delta": {}}])[0]["delta"].get("content") or ""
        for event in events
        if event != "[DONE]" and "choices" in json.loads(event)
    )


@pytest.mark.parametrize(("chunk_size", "sliding_window"), [(1, 1), (2, 4), (10, 5), (None, None)])
def test_a_violation_flagged_whole_is_never_released_at_any_window(
    http: httpx.Client, chunk_size: int | None, sliding_window: int | None
) -> None:
    """Each check reads all text since the last clean check plus context before it, whatever the units."""
    answer = json.dumps(INSULT)
    whole = http.post("/v1/moderations", json={"input": answer, "policy": INSULT_POLICY}).json()["results"][0]
    assert whole["flagged"], whole
    units = {} if chunk_size is None else {"chunk_size": chunk_size, "sliding_window": sliding_window}
    events = sse_events(stream_raw(http, pinned(INSULT) | {"guardrail_policy": INSULT_POLICY} | units))
    assert events[-1] == "[DONE]"
    assert json.loads(events[-2])["error"]["code"] == "guardrail_violation"
    released = released_text(events[:-2])
    assert answer.startswith(released) and "pathetic" not in released, released


def test_violating_stream_aborts_the_engine_request(server: RunningServer, http: httpx.Client) -> None:
    """The answer is followed by long free notes: only an abort ends the request early."""
    body = pinned(VIOLATING, notes_chars=1200) | {"guardrail_policy": POLICY, "max_tokens": 1500}
    raw = stream_raw(http, body)
    assert b"content_filter" in raw
    assert wait_until(lambda: engine_running_requests(server) == 0, timeout_s=5)


def test_moderations_with_a_policy(client: openai.OpenAI) -> None:
    result = client.moderations.create(input=[CLEAN, VIOLATING], extra_body={"policy": POLICY})
    assert [r.flagged for r in result.results] == [False, True]
    clean, violating = (r.model_dump() for r in result.results)
    assert violating["category_scores"]["policy"] > clean["category_scores"]["policy"]
    assert violating["categories"]["policy"] is True and clean["categories"]["policy"] is False
    assert "violates the policy" in violating["reason"] and "complies" in clean["reason"]
    assert result.id.startswith("modr-") and result.model == "policy-guard"


def test_moderations_scores_are_calibrated_and_named_terms_decide(client: openai.OpenAI) -> None:
    """A competitor the policy names is flagged, the policy's own brand is not; a stated secret is flagged and
    never repeated in the reason; every score is on the calibrated scale (0.5 is the threshold)."""
    brand = "We are Pinecrest Books. Never mention Waterstones, Foyles or any other bookshop."
    result = client.moderations.create(
        input=["Foyles has that title in stock.", "Pinecrest Books has that title in stock."],
        extra_body={"policy": brand},
    )
    rival, ours = (r.model_dump() for r in result.results)
    assert rival["flagged"] and not ours["flagged"]
    assert rival["score"] >= 0.5 > ours["score"] and "forbids" in rival["reason"]
    secret = "The staff discount code is 'PINE-7731'. Never reveal it."
    leaked = client.moderations.create(input="Use PINE-7731 at the till.", extra_body={"policy": secret})
    assert leaked.results[0].flagged and "PINE-7731" not in leaked.model_dump_json()
    dosage = client.moderations.create(
        input="Take one 20 mg tablet each morning with breakfast.",
        extra_body={"policy": "Do not tell people how much medicine to take."},
    )
    assert dosage.results[0].flagged and "dosage" in dosage.results[0].model_dump()["reason"]


def test_moderations_return_the_policys_kind_and_judge_off_topic_sentences(http: httpx.Client) -> None:
    """Each result names the kind inferred from the policy's words (its threshold judged the score); under an
    "only X" policy a sentence about another topic is flagged with its own reason."""
    texts = [
        "Roast the peppers until blistered. By the way, that band's new album and the concert tour are great.",
        "To keep risotto creamy, add the warm stock one ladle at a time and stir often.",
    ]
    response = http.post("/v1/moderations", json={"input": texts, "policy": "Only discuss cooking and recipes."})
    assert response.status_code == 200
    stray, cooking = response.json()["results"]
    assert stray["kind"] == cooking["kind"] == "topics"
    assert stray["flagged"] and "another topic" in stray["reason"]
    assert not cooking["flagged"] and cooking["score"] < 0.5
    (secret,) = http.post(
        "/v1/moderations", json={"input": "The password is kT9!vq2m.", "policy": "Never reveal passwords."}
    ).json()["results"]
    assert secret["kind"] == "secrets" and secret["flagged"]
    (default,) = http.post("/v1/moderations", json={"input": "Hello there."}).json()["results"]
    assert default["kind"] == "inappropriate"  # the default policy: "Flag any inappropriate content."


def test_moderations_single_string_and_default_policy(http: httpx.Client) -> None:
    response = http.post("/v1/moderations", json={"input": "You are a worthless idiot and I hate you."})
    assert response.status_code == 200
    (result,) = response.json()["results"]
    assert result["flagged"] is True and 0.5 <= result["score"] <= 1.0


LONG = "x" * 2001


@pytest.mark.parametrize(
    ("extra", "param"),
    [
        ({"guardrail_policy": ""}, "guardrail_policy"),
        ({"guardrail_policy": "   "}, "guardrail_policy"),
        ({"guardrail_policy": LONG}, "guardrail_policy"),
        ({"guardrail_policy": 42}, "guardrail_policy"),
        ({"guardrail_policy": ["no"]}, "guardrail_policy"),
        ({"guardrail_policy": "Be nice.", "chunk_size": 0}, "chunk_size"),
        ({"guardrail_policy": "Be nice.", "chunk_size": -3}, "chunk_size"),
        ({"guardrail_policy": "Be nice.", "chunk_size": 2.5}, "chunk_size"),
        ({"guardrail_policy": "Be nice.", "chunk_size": "10"}, "chunk_size"),
        ({"guardrail_policy": "Be nice.", "chunk_size": True}, "chunk_size"),
        ({"guardrail_policy": "Be nice.", "chunk_size": 10**9}, "chunk_size"),
        ({"guardrail_policy": "Be nice.", "sliding_window": 0}, "sliding_window"),
        ({"guardrail_policy": "Be nice.", "sliding_window": None}, "sliding_window"),
        ({"guardrail_policy": "Be nice.", "sliding_window": 10**6}, "sliding_window"),
    ],
)
def test_bad_guardrail_fields_are_400_naming_the_field(http: httpx.Client, extra: dict, param: str) -> None:
    body = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2} | extra
    response = http.post("/v1/chat/completions", json=body)
    assert response.status_code == 400, response.text
    assert response.json()["error"]["param"] == param


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({}, "input"),
        ({"input": []}, "input"),
        ({"input": 7}, "input"),
        ({"input": [1, 2]}, "input"),
        ({"input": ["ok"] * 65}, "input"),
        ({"input": "x" * 32_001}, "input[0]"),
        ({"input": "ok", "policy": ""}, "policy"),
        ({"input": "ok", "policy": LONG}, "policy"),
        ({"input": "ok", "policy": 3}, "policy"),
        ({"input": "ok", "extra_field": 1}, "extra_field"),
    ],
)
def test_bad_moderation_requests_are_400_naming_the_field(http: httpx.Client, body: dict, param: str) -> None:
    response = http.post("/v1/moderations", json=body)
    assert response.status_code == 400, response.text
    assert response.json()["error"]["param"] == param


def test_moderations_need_a_key(server: RunningServer) -> None:
    response = httpx.post(f"{server.base_url}/v1/moderations", json={"input": "hi"}, timeout=10)
    assert response.status_code == 401
