"""`nightly` memory through the real server: recall into prompts, write-back, the memory API, ownership, curation."""

from __future__ import annotations

import json
import time
import uuid

import httpx
import openai
import pytest

from tests.conftest import MODEL, RunningServer, StateDirs, start_server

GOAL = "A friendly personal assistant that remembers the user's life"


def new_group(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def wait_for_calls(http: httpx.Client, group: str, calls: int, timeout_s: float = 30) -> dict:
    """Write-back runs after the response: wait until the group has counted `calls` exchanges."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        response = http.get(f"/v1/memory/{group}")
        if response.status_code == 200 and response.json()["call_count"] >= calls:
            return response.json()
        time.sleep(0.2)
    raise AssertionError(f"group {group} never reached {calls} calls")


def ask(client: openai.OpenAI, content: str, nightly: list[str] | None = None, **extra):
    return client.chat.completions.with_raw_response.create(
        model=MODEL,
        messages=[{"role": "user", "content": content}],
        temperature=0,
        max_tokens=40,
        extra_body={"nightly": nightly} if nightly else None,
        **extra,
    )


def test_a_chat_recalls_at_most_its_models_memory_top_k(client: openai.OpenAI, http: httpx.Client) -> None:
    """The block's size is the answering model's (`memory_top_k`: the embedded model answers best from one),
    though the group holds more matching memories."""
    from server.config import load_settings

    top_k = load_settings(environ={}).find_model(MODEL).memory_top_k
    group = new_group("dogs")
    dogs = ["My dog is called Rex.", "My other dog is called Bella.", "My neighbour's dog is called Max."]
    assert http.post(f"/v1/memory/{group}/memories", json={"text": dogs}).status_code == 200
    hits = http.post(f"/v1/memory/{group}/search", json={"query": "What are my dogs called?", "limit": 5}).json()
    assert len(hits["data"]) > top_k
    recalled = ask(client, "What are my dogs called?", [group, GOAL])
    assert recalled.headers["x-nightly-memories-used"] == str(top_k)


def test_fact_told_earlier_is_answered_from_memory(client: openai.OpenAI, http: httpx.Client) -> None:
    group = new_group("rex")
    told = ask(client, "My dog is called Rex.", [group, GOAL])
    assert told.headers["x-nightly-memories-used"] == "0"  # nothing remembered yet
    assert told.parse().model_extra["nightly"] == {"memory_group": group, "memories_used": 0}
    info = wait_for_calls(http, group, 1)
    assert info["memory_count"] >= 1 and info["user_goal"] == GOAL
    stored = http.get(f"/v1/memory/{group}/memories").json()["data"]
    assert {"fact", "turn"} <= {memory["kind"] for memory in stored}
    assert all(memory["source_request_id"] == told.headers["x-request-id"] for memory in stored)

    recalled = ask(client, "What is my dog called?", [group, GOAL])
    answer = recalled.parse()
    assert int(recalled.headers["x-nightly-memories-used"]) >= 1
    assert answer.model_extra["nightly"]["memories_used"] >= 1
    assert "Rex" in answer.choices[0].message.content

    without_memory = ask(client, "What is my dog called?").parse()
    assert "nightly" not in (without_memory.model_extra or {})
    assert "Rex" not in without_memory.choices[0].message.content
    other_group = ask(client, "What is my dog called?", [new_group("empty"), GOAL]).parse()
    assert "Rex" not in other_group.choices[0].message.content


def test_streamed_answer_uses_and_feeds_memory(client: openai.OpenAI, http: httpx.Client) -> None:
    group = new_group("stream")
    http.post(f"/v1/memory/{group}/memories", json={"text": "My favourite colour is teal.", "user_goal": GOAL})
    with client.chat.completions.with_streaming_response.create(
        model=MODEL,
        messages=[{"role": "user", "content": "Which colour do I like best?"}],
        temperature=0,
        max_tokens=30,
        stream=True,
        extra_body={"nightly": [group, GOAL]},
    ) as response:
        assert response.headers["x-nightly-memories-used"] == "1"
        chunks = list(response.parse())
    assert all(chunk.model_extra["nightly"] == {"memory_group": group, "memories_used": 1} for chunk in chunks)
    assert "teal" in "".join(chunk.choices[0].delta.content or "" for chunk in chunks if chunk.choices).lower()
    wait_for_calls(http, group, 1)
    turns = [m for m in http.get(f"/v1/memory/{group}/memories").json()["data"] if m["kind"] == "turn"]
    assert len(turns) == 1 and "Which colour do I like best?" in turns[0]["text"]


def test_memory_api_add_list_search_update_delete(http: httpx.Client) -> None:
    group = new_group("crud")
    added = http.post(
        f"/v1/memory/{group}/memories",
        json={
            "text": ["I play the cello on Sundays.", "My car is a red Volvo.", "I am allergic to peanuts."],
            "user_goal": GOAL,
        },
    )
    assert added.status_code == 200, added.text
    ids = [memory["id"] for memory in added.json()["data"]]
    assert len(ids) == 3 and all(memory["kind"] == "note" for memory in added.json()["data"])

    first_page = http.get(f"/v1/memory/{group}/memories", params={"limit": 2}).json()
    assert [m["id"] for m in first_page["data"]] == ids[:2] and first_page["has_more"] is True
    second_page = http.get(f"/v1/memory/{group}/memories", params={"limit": 2, "after": ids[1]}).json()
    assert [m["id"] for m in second_page["data"]] == ids[2:] and second_page["has_more"] is False

    hits = http.post(f"/v1/memory/{group}/search", json={"query": "Which food must I avoid?", "limit": 1}).json()[
        "data"
    ]
    assert hits[0]["memory"]["id"] == ids[2] and hits[0]["score"] > 0

    updated = http.patch(f"/v1/memory/{group}/memories/{ids[1]}", json={"text": "My car is a blue Tesla."})
    assert updated.status_code == 200 and updated.json()["text"] == "My car is a blue Tesla."
    assert http.get(f"/v1/memory/{group}/memories/{ids[1]}").json()["text"] == "My car is a blue Tesla."
    hits = http.post(f"/v1/memory/{group}/search", json={"query": "What car do I drive?", "limit": 1}).json()["data"]
    assert hits[0]["memory"]["text"] == "My car is a blue Tesla."

    assert http.delete(f"/v1/memory/{group}/memories/{ids[0]}").json() == {
        "object": "memory.deleted",
        "id": ids[0],
        "deleted": True,
    }
    assert http.get(f"/v1/memory/{group}/memories/{ids[0]}").status_code == 404
    assert http.get(f"/v1/memory/{group}").json()["memory_count"] == 2

    assert http.delete(f"/v1/memory/{group}").json()["deleted"] is True
    gone = http.get(f"/v1/memory/{group}")
    assert gone.status_code == 404 and gone.json()["error"]["code"] == "memory_group_not_found"


def test_groups_belong_to_the_key_that_created_them(
    client: openai.OpenAI, http: httpx.Client, other_http: httpx.Client
) -> None:
    group = new_group("owned")
    http.post(
        f"/v1/memory/{group}/memories", json={"text": "My bank PIN hint is the year Napoleon died.", "user_goal": GOAL}
    )
    for method, path, body in [
        ("GET", f"/v1/memory/{group}", None),
        ("GET", f"/v1/memory/{group}/memories", None),
        ("POST", f"/v1/memory/{group}/search", {"query": "PIN hint"}),
        ("GET", f"/v1/memory/{group}/audit", None),
        ("POST", f"/v1/memory/{group}/curate", {}),
        ("DELETE", f"/v1/memory/{group}", None),
    ]:
        response = other_http.request(method, path, json=body)
        assert response.status_code == 404, (method, path, response.text)
        assert response.json()["error"]["code"] == "memory_group_not_found"
    own_id = http.get(f"/v1/memory/{group}/memories").json()["data"][0]["id"]
    assert other_http.delete(f"/v1/memory/{group}/memories/{own_id}").status_code == 404
    assert other_http.patch(f"/v1/memory/{group}/memories/{own_id}", json={"text": "x y z"}).status_code == 404

    # The other key naming the same group in a chat gets its own, empty group: nothing is injected.
    injected = other_http.post(
        "/v1/chat/completions",
        json={
            "model": MODEL,
            "messages": [{"role": "user", "content": "What is my bank PIN hint?"}],
            "max_tokens": 5,
            "nightly": [group, GOAL],
        },
    )
    assert injected.status_code == 200 and injected.headers["x-nightly-memories-used"] == "0"
    owner_view = http.get(f"/v1/memory/{group}/memories").json()["data"]
    assert [memory["text"] for memory in owner_view] == ["My bank PIN hint is the year Napoleon died."]


def test_curation_merges_near_duplicates_and_keeps_an_audit(http: httpx.Client) -> None:
    group = new_group("curate")
    texts = ["My dog is called Rex.", "My dog is named Rex.", "I work night shifts at the hospital."]
    ids = [
        m["id"]
        for m in http.post(f"/v1/memory/{group}/memories", json={"text": texts, "user_goal": GOAL}).json()["data"]
    ]
    report = http.post(f"/v1/memory/{group}/curate")
    assert report.status_code == 200, report.text
    merges = [change for change in report.json()["changes"] if change["action"] == "merge_duplicates"]
    assert merges == [{"action": "merge_duplicates", "removed": [ids[0]], "added": [], "reason": merges[0]["reason"]}]
    remaining = {m["id"]: m["text"] for m in http.get(f"/v1/memory/{group}/memories").json()["data"]}
    assert ids[1] in remaining and ids[0] not in remaining
    assert "I work night shifts at the hospital." in remaining.values()
    audit = http.get(f"/v1/memory/{group}/audit").json()["data"]
    merged = next(entry for entry in audit if entry["action"] == "merge_duplicates")
    assert merged["removed"][0]["text"] == "My dog is called Rex."  # what was dropped stays recoverable
    assert merged["run_id"] == report.json()["id"]
    assert http.get(f"/v1/memory/{group}").json()["curated_at"] is not None


def test_curation_consolidates_related_facts_with_the_served_model(http: httpx.Client) -> None:
    group = new_group("consolidate")
    older, newer = "My sister Laura lives in Porto.", "My sister Laura now lives in Lisbon."
    http.post(f"/v1/memory/{group}/memories", json={"text": [older], "user_goal": GOAL})
    http.post(f"/v1/memory/{group}/memories", json={"text": [newer]})
    report = http.post(f"/v1/memory/{group}/curate").json()
    texts = [m["text"] for m in http.get(f"/v1/memory/{group}/memories").json()["data"]]
    consolidations = [change for change in report["changes"] if change["action"] == "consolidate"]
    if consolidations:  # the model's sentence passed the guard: it replaced both and kept the newer details
        [change] = consolidations
        assert len(change["removed"]) == 2 and texts == change["added"]
        assert "Laura" in texts[0] and "Lisbon" in texts[0]
        audit = http.get(f"/v1/memory/{group}/audit").json()["data"]
        assert {m["text"] for m in audit[0]["removed"]} == {older, newer}
    else:  # the guard refused what the model wrote: both facts are untouched
        assert texts == [older, newer]


def test_memories_survive_a_restart(
    http: httpx.Client, test_server_env: dict[str, str], state_dirs: StateDirs, tmp_path
) -> None:
    group = new_group("durable")
    http.post(f"/v1/memory/{group}/memories", json={"text": "My locker code is 4417.", "user_goal": GOAL})
    # A fresh process on the same data directory sees only what reached the disk.
    restarted: RunningServer = start_server(tmp_path / "restarted.log", env=test_server_env)
    try:
        with httpx.Client(base_url=restarted.base_url, headers=http.headers, timeout=60) as again:
            stored = again.get(f"/v1/memory/{group}/memories").json()["data"]
            assert [memory["text"] for memory in stored] == ["My locker code is 4417."]
            hits = again.post(f"/v1/memory/{group}/search", json={"query": "locker combination"}).json()["data"]
            assert hits[0]["memory"]["text"] == "My locker code is 4417."
    finally:
        restarted.stop()


BAD_NIGHTLY = [
    ("not-a-list", "must be a list of two strings"),
    (["only-group"], "must be a list of two strings"),
    (["g", "goal", "extra"], "must be a list of two strings"),
    (["g", 5], "must be a list of two strings"),
    ({"memory_group": "g"}, "must be a list of two strings"),
    (["", "goal"], "non-empty"),
    (["g", "   "], "non-empty"),
    (["bad group/name", "goal"], "memory_group must be"),
    (["g" * 129, "goal"], "memory_group must be"),
    (["g", "x" * 2001], "user_goal must be at most"),
]


@pytest.mark.parametrize(("nightly", "message"), BAD_NIGHTLY)
def test_malformed_nightly_is_a_400_naming_it(http: httpx.Client, nightly: object, message: str) -> None:
    response = http.post(
        "/v1/chat/completions",
        json={"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "nightly": nightly},
    )
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["param"] == "nightly" and message in error["message"] and error["type"] == "invalid_request_error"


def test_memory_api_bad_input(http: httpx.Client) -> None:
    group = new_group("bad")
    http.post(f"/v1/memory/{group}/memories", json={"text": "I like tea."})
    cases = [
        ("POST", f"/v1/memory/{group}/memories", {"text": ""}, "text"),
        ("POST", f"/v1/memory/{group}/memories", {"text": []}, "text"),
        ("POST", f"/v1/memory/{group}/memories", {"text": ["ok", "   "]}, "text"),
        ("POST", f"/v1/memory/{group}/memories", {"text": ["x"] * 257}, "text"),
        ("POST", f"/v1/memory/{group}/memories", {"text": "x" * 4001}, "text"),
        ("POST", f"/v1/memory/{group}/memories", {"text": 5}, "text"),
        ("POST", f"/v1/memory/{group}/memories", {"text": "ok", "colour": "red"}, "colour"),
        ("POST", f"/v1/memory/{group}/memories", {"text": "ok", "user_goal": ""}, "user_goal"),
        ("POST", "/v1/memory/bad%20name/memories", {"text": "ok"}, "memory_group"),
        ("GET", "/v1/memory/" + "g" * 129, None, "memory_group"),
        ("POST", f"/v1/memory/{group}/search", {"query": ""}, "query"),
        ("POST", f"/v1/memory/{group}/search", {"query": "tea", "limit": 0}, "limit"),
        ("POST", f"/v1/memory/{group}/search", {"query": "tea", "limit": "3"}, "limit"),
        ("GET", f"/v1/memory/{group}/memories?limit=0", None, "limit"),
        ("GET", f"/v1/memory/{group}/memories?limit=abc", None, "limit"),
        ("GET", f"/v1/memory/{group}/memories?after=-1", None, "after"),
        ("PATCH", f"/v1/memory/{group}/memories/1", {"text": " "}, "text"),
        ("PATCH", f"/v1/memory/{group}/memories/1", {}, "text"),
    ]
    for method, path, body, param in cases:
        response = http.request(method, path, json=body)
        assert response.status_code == 400, (method, path, body, response.text)
        assert response.json()["error"]["param"] == param, (method, path, body, response.json())
    not_json = http.post(
        f"/v1/memory/{group}/memories", content=b"{not json", headers={"content-type": "application/json"}
    )
    assert not_json.status_code == 400 and not_json.json()["error"]["code"] == "invalid_json"
    missing = http.patch(f"/v1/memory/{group}/memories/999999999", json={"text": "new"})
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "memory_not_found"
    assert http.get(f"/v1/memory/{new_group('absent')}/memories").status_code == 404
    # Nothing stored was lost along the way.
    assert [m["text"] for m in http.get(f"/v1/memory/{group}/memories").json()["data"]] == ["I like tea."]
    assert json.loads(http.get(f"/v1/memory/{group}").text)["memory_count"] == 1


def test_a_wrong_answer_never_becomes_the_top_memory_for_its_question(
    client: openai.OpenAI, http: httpx.Client
) -> None:
    group = new_group("poison")
    http.post(f"/v1/memory/{group}/memories", json={"text": "My cat is called Miso.", "user_goal": GOAL})
    question = "What is my cat called?"
    for calls in (1, 2):  # the model answers whatever it answers, twice; both exchanges are stored
        ask(client, question, [group, GOAL])
        wait_for_calls(http, group, calls)
    turns = [m for m in http.get(f"/v1/memory/{group}/memories").json()["data"] if m["kind"] == "turn"]
    assert len(turns) == 2 and all("Assistant:" in turn["text"] for turn in turns)  # kept, for adaption
    hits = http.post(f"/v1/memory/{group}/search", json={"query": question, "limit": 10}).json()["data"]
    assert hits[0]["memory"]["text"] == "My cat is called Miso."
    assert all(hit["memory"]["kind"] != "turn" for hit in hits)  # a turn that only asked is never retrieved
    answer_words = {word for turn in turns for word in turn["text"].split("Assistant:")[1].split() if len(word) > 3}
    for word in list(answer_words)[:5]:  # the assistant's words are never matched
        found = http.post(f"/v1/memory/{group}/search", json={"query": word, "limit": 10}).json()["data"]
        assert all(hit["memory"]["kind"] != "turn" for hit in found)


def test_a_move_supersedes_where_the_user_lived_when_it_is_said(client: openai.OpenAI, http: httpx.Client) -> None:
    group = new_group("move")
    ask(client, "I live in Lisbon.", [group, GOAL])
    wait_for_calls(http, group, 1)
    ask(client, "Actually I moved to Porto last week.", [group, GOAL])
    wait_for_calls(http, group, 2)
    facts = [m["text"] for m in http.get(f"/v1/memory/{group}/memories").json()["data"] if m["kind"] == "fact"]
    assert facts == ["Actually I moved to Porto last week."]
    [update] = [entry for entry in http.get(f"/v1/memory/{group}/audit").json()["data"] if entry["action"] == "update"]
    assert [memory["text"] for memory in update["removed"]] == ["I live in Lisbon."]
    assert http.get(f"/v1/memory/{group}").json()["curated_at"] is None  # a write-time update, not a curation
    hits = http.post(f"/v1/memory/{group}/search", json={"query": "Where do I live?", "limit": 3}).json()["data"]
    assert "Porto" in hits[0]["memory"]["text"]


def test_statements_about_people_the_user_named_become_attributed_facts(
    client: openai.OpenAI, http: httpx.Client
) -> None:
    group = new_group("ana")
    ask(client, "My wife Ana is a nurse.", [group, GOAL])
    wait_for_calls(http, group, 1)
    ask(client, "Ana is allergic to shellfish too.", [group, GOAL])
    wait_for_calls(http, group, 2)
    stored = http.get(f"/v1/memory/{group}/memories").json()["data"]
    facts = [m["text"] for m in stored if m["kind"] == "fact"]
    assert "My wife Ana is allergic to shellfish too." in facts
    assert all(m["speaker"] == "user" for m in stored)
    hits = http.post(f"/v1/memory/{group}/search", json={"query": "Is my wife allergic to anything?"}).json()["data"]
    assert hits[0]["memory"]["text"] == "My wife Ana is allergic to shellfish too."
