"""Prompt templates: CRUD by name or UUID, versions, rendering into chat requests, per-key isolation."""

from __future__ import annotations

import uuid

import httpx
import openai

from tests.conftest import MODEL, RunningServer, assert_error, keyed_http, new_key

GREETER = [{"role": "system", "content": "You are a greeter. Always answer in {{language}}."}]


def unique(name: str) -> str:
    return f"{name}-{uuid.uuid4().hex[:8]}"


def test_create_get_update_list_delete_by_name_and_uuid(http: httpx.Client) -> None:
    name = unique("greeter")
    created = http.post("/v1/templates", json={"name": name, "messages": GREETER, "description": "v1"})
    assert created.status_code == 201, created.text
    template = created.json()
    assert template["version"] == 1 and template["name"] == name
    assert http.get(f"/v1/templates/{template['id']}").json()["name"] == name
    updated = http.post(f"/v1/templates/{name}", json={"messages": GREETER, "description": "v2", "model": MODEL})
    assert updated.status_code == 200, updated.text
    assert (updated.json()["id"], updated.json()["version"], updated.json()["model"]) == (template["id"], 2, MODEL)
    assert http.get(f"/v1/templates/{name}").json()["description"] == "v2"
    assert name in {item["name"] for item in http.get("/v1/templates").json()["data"]}
    deleted = http.delete(f"/v1/templates/{template['id']}").json()
    assert deleted == {"object": "template.deleted", "id": template["id"], "name": name, "deleted": True}
    assert_error(http.get(f"/v1/templates/{name}"), 404, "template_not_found", "template")


def test_template_endpoints_bad_input(http: httpx.Client) -> None:
    assert_error(http.post("/v1/templates", json={"messages": GREETER}), 400, "missing_required_parameter", "name")
    assert_error(
        http.post("/v1/templates", json={"name": "bad name!", "messages": GREETER}), 400, "invalid_value", "name"
    )
    assert_error(
        http.post("/v1/templates", json={"name": unique("t"), "messages": []}), 400, "invalid_value", "messages"
    )
    assert_error(
        http.post("/v1/templates", json={"name": unique("t"), "messages": [{"role": "robot", "content": "x"}]}),
        400,
        "invalid_value",
        "messages[0].role",
    )
    bad_sampling = {"name": unique("t"), "messages": GREETER, "sampling": {"temperature": 5}}
    assert_error(http.post("/v1/templates", json=bad_sampling), 400, "invalid_value", "sampling.temperature")
    unknown = {"name": unique("t"), "messages": GREETER, "sampling": {"colour": 1}}
    assert_error(http.post("/v1/templates", json=unknown), 400, "invalid_value", "sampling.colour")
    name = unique("dup")
    assert http.post("/v1/templates", json={"name": name, "messages": GREETER}).status_code == 201
    assert_error(http.post("/v1/templates", json={"name": name, "messages": GREETER}), 409, "template_exists", "name")
    assert_error(http.post(f"/v1/templates/{name}", json={"messages": "hi"}), 400, "invalid_value", "messages")
    for method in ("get", "delete"):
        assert_error(getattr(http, method)("/v1/templates/nope-404"), 404, "template_not_found", "template")
    assert_error(http.post("/v1/templates/nope-404", json={"messages": GREETER}), 404, "template_not_found", "template")


def test_chat_renders_the_template_with_its_defaults(client: openai.OpenAI, http: httpx.Client) -> None:
    name = unique("short")
    http.post(
        "/v1/templates",
        json={"name": name, "messages": GREETER, "model": MODEL, "sampling": {"max_tokens": 3, "temperature": 0}},
    ).raise_for_status()
    body = {
        "template": name,
        "variables": {"language": "French", "who": "Marie", "unused": "fine"},
        "messages": [{"role": "user", "content": "Greet {{who}}."}],
    }
    raw = http.post("/v1/chat/completions", json=body)  # no model: the template's
    assert raw.status_code == 200, raw.text
    assert raw.json()["model"] == MODEL and raw.json()["usage"]["completion_tokens"] <= 3
    (record,) = http.get(f"/v1/usage/requests/{raw.headers['x-request-id']}").json()["data"]
    assert "Always answer in French." in record["query_body"] and "Greet Marie." in record["query_body"]
    # The official SDK: extension fields through extra_body.
    completion = client.chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": "Hi"}],
        extra_body={"template": name, "variables": {"language": "German"}},
    )
    assert completion.usage.completion_tokens <= 3


def test_template_errors_in_chat(http: httpx.Client) -> None:
    name = unique("slots")
    http.post("/v1/templates", json={"name": name, "messages": GREETER}).raise_for_status()
    chat = {"model": MODEL, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 2}
    assert_error(
        http.post("/v1/chat/completions", json={**chat, "template": name}),
        422,
        "missing_variable",
        "variables.language",
    )
    assert_error(
        http.post("/v1/chat/completions", json={**chat, "template": "no-such-template"}),
        404,
        "template_not_found",
        "template",
    )
    assert_error(
        http.post("/v1/chat/completions", json={**chat, "template": name, "variables": {"language": 3}}),
        400,
        "invalid_value",
        "variables.language",
    )


def test_keys_never_see_each_others_templates(server: RunningServer, http: httpx.Client) -> None:
    mine, theirs = new_key(http, name="tpl-a"), new_key(http, name="tpl-b")
    name = unique("private")
    with keyed_http(server, mine["key"]) as session:
        template = session.post("/v1/templates", json={"name": name, "messages": GREETER}).json()
    with keyed_http(server, theirs["key"]) as session:
        for reference in (name, template["id"]):
            assert_error(session.get(f"/v1/templates/{reference}"), 404, "template_not_found", "template")
            assert_error(session.delete(f"/v1/templates/{reference}"), 404, "template_not_found", "template")
        assert name not in {item["name"] for item in session.get("/v1/templates").json()["data"]}
        chat = {"model": MODEL, "messages": [{"role": "user", "content": "Hi"}], "template": template["id"]}
        assert_error(session.post("/v1/chat/completions", json=chat), 404, "template_not_found", "template")
        # The same name is free for another key.
        assert session.post("/v1/templates", json={"name": name, "messages": GREETER}).status_code == 201
    assert http.get(f"/v1/templates/{template['id']}").json()["name"] == name  # an admin reaches it by UUID
