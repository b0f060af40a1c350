"""Tenant isolation and billing integrity on the real server, with two or three keys: adapter ownership on every
path that selects or changes weights, metered endpoints, the admin credits endpoint, least exposure."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import httpx
import pytest

from tests.conftest import (
    MODEL,
    RunningServer,
    StateDirs,
    assert_error,
    keyed_http,
    keys_cli,
    new_key,
)

QUESTION = [{"role": "user", "content": "What is the capital of France?"}]


def chat(session: httpx.Client, **fields: object) -> httpx.Response:
    return session.post(
        "/v1/chat/completions", json={"model": MODEL, "messages": QUESTION, "max_tokens": 4, "temperature": 0, **fields}
    )


@pytest.fixture(scope="module")
def tenants(server: RunningServer, http: httpx.Client):
    """Two ordinary (non-admin) stored keys."""
    first, second = new_key(http, name="tenant-a"), new_key(http, name="tenant-b")
    with keyed_http(server, first["key"]) as a, keyed_http(server, second["key"]) as b:
        yield a, b


@pytest.fixture(scope="module")
def shared_adapter(http: httpx.Client, adapter_sources: Path) -> str:
    """An admin's adapter: shared with every key by default."""
    response = http.post("/v1/adapters", json={"name": "house", "path": str(adapter_sources / "alpha")})
    assert response.status_code == 201, response.text
    assert response.json()["shared"] is True
    return "house"


def test_adapter_belongs_to_its_creator_and_is_hidden_from_other_keys(
    tenants, adapter_sources: Path, state_dirs: StateDirs
) -> None:
    a, b = tenants
    created = a.post("/v1/adapters", json={"name": "private-a", "path": str(adapter_sources / "bravo")})
    assert created.status_code == 201, created.text
    body = created.json()
    assert body["owned"] is True and body["shared"] is False
    assert body["source"] == "path" and "owner" not in body  # no filesystem path for a non-admin key
    assert "private-a" in {item["id"] for item in a.get("/v1/adapters").json()["data"]}
    assert chat(a, model="private-a").status_code == 200
    assert chat(a, lora_name="private-a").status_code == 200

    # The other tenant: cannot see, use, replace, unload, delete or train it.
    assert "private-a" not in {item["id"] for item in b.get("/v1/adapters").json()["data"]}
    assert "private-a" not in {card["id"] for card in b.get("/v1/models").json()["data"]}
    assert "private-a" not in {item["model"] for item in b.get("/v1/endpoints").json()["data"]}
    assert_error(chat(b, model="private-a"), 404, "adapter_not_found", "lora_name")
    assert_error(chat(b, lora_name="private-a"), 404, "adapter_not_found", "lora_name")
    over = b.post("/v1/adapters", json={"name": "private-a", "path": str(adapter_sources / "alpha")})
    assert_error(over, 404, "adapter_not_found", "name")
    assert_error(b.delete("/v1/adapters/private-a"), 404, "adapter_not_found", "name")
    unload = b.post("/v1/unload_lora_adapter", json={"lora_name": "private-a"})
    assert_error(unload, 404, "adapter_not_found", "lora_name")
    load = b.post("/v1/load_lora_adapter", json={"lora_name": "private-a", "lora_path": str(adapter_sources / "alpha")})
    assert_error(load, 404, "adapter_not_found", "lora_name")
    job = b.post("/v1/fine_tuning/jobs", json={"model": MODEL, "training_file": "memory:g", "suffix": "private-a"})
    assert_error(job, 404, "adapter_not_found", "suffix")
    # Nor copy its weights out under a new name: the folder of another key's adapter is no source.
    stolen = b.post("/v1/adapters", json={"name": "stolen", "path": str(state_dirs.adapters / "private-a" / "v1")})
    assert_error(stolen, 400, "invalid_adapter", "path")

    # The owner still has it, untouched, and may delete it.
    assert chat(a, model="private-a").status_code == 200
    assert a.delete("/v1/adapters/private-a").json()["deleted"] is True


def test_shared_adapter_is_usable_but_only_its_owner_or_an_admin_changes_it(
    tenants, http: httpx.Client, shared_adapter: str, adapter_sources: Path
) -> None:
    a, _ = tenants
    assert chat(a, model=shared_adapter).status_code == 200
    listed = {item["id"]: item for item in a.get("/v1/adapters").json()["data"]}
    assert listed[shared_adapter]["shared"] is True and listed[shared_adapter]["owned"] is False
    assert_error(a.delete(f"/v1/adapters/{shared_adapter}"), 403, "adapter_not_owned", "name")
    replace = a.post("/v1/adapters", json={"name": shared_adapter, "path": str(adapter_sources / "bravo")})
    assert_error(replace, 403, "adapter_not_owned", "name")
    assert_error(
        a.post("/v1/unload_lora_adapter", json={"lora_name": shared_adapter}), 403, "adapter_not_owned", "lora_name"
    )
    job = a.post("/v1/fine_tuning/jobs", json={"model": MODEL, "training_file": "memory:g", "suffix": shared_adapter})
    assert_error(job, 403, "adapter_not_owned", "suffix")
    trained = chat(
        a,
        lora_name=shared_adapter,
        nightly=["g", "learn"],
        finetune_thresh=1,
    )
    assert_error(trained, 403, "adapter_not_owned", "lora_name")
    # Only an admin may share.
    shared = a.post(
        "/v1/adapters", json={"name": "mine-shared", "path": str(adapter_sources / "alpha"), "shared": True}
    )
    assert_error(shared, 400, "invalid_value", "shared")
    admin_view = {item["id"]: item for item in http.get("/v1/adapters").json()["data"]}
    assert admin_view[shared_adapter]["source"].startswith("/")  # admins see paths and owners
    assert "owner" in admin_view[shared_adapter]


def test_allowed_adapters_hold_on_every_path_that_selects_weights(
    server: RunningServer, http: httpx.Client, shared_adapter: str
) -> None:
    key = new_key(http, allowed_adapters=["some-other"])
    with keyed_http(server, key["key"]) as session:
        assert_error(chat(session, model=shared_adapter), 403, "model_not_allowed", "lora_name")
        assert_error(chat(session, lora_name=shared_adapter), 403, "model_not_allowed", "lora_name")
        adaption = chat(session, lora_name=shared_adapter, adaption_inference=True)
        assert_error(adaption, 403, "model_not_allowed", "lora_name")
        job = session.post(
            "/v1/fine_tuning/jobs", json={"model": MODEL, "training_file": "memory:g", "suffix": "not-listed"}
        )
        assert_error(job, 403, "model_not_allowed", "suffix")


def test_metered_endpoints_charge_atomically_and_admins_add_credits(
    server: RunningServer, http: httpx.Client, test_server_env: dict[str, str]
) -> None:
    key = new_key(http, credits=40)

    def balance() -> int:
        return http.get(f"/v1/keys/{key['id']}").json()["credits"]

    with keyed_http(server, key["key"]) as session:
        long_text = "The quick brown fox jumps over the lazy dog. " * 20  # far more than 40 tokens
        refused = session.post("/v1/moderations", json={"input": long_text})
        assert_error(refused, 402, "insufficient_credits", None)
        assert balance() == 40  # refused before any work, nothing taken
        assert session.post("/v1/moderations", json={"input": "hello there"}).status_code == 200
        after_moderation = balance()
        assert 0 < 40 - after_moderation <= 4
        added = session.post("/v1/memory/billing/memories", json={"text": "I like green tea."})
        assert added.status_code == 200, added.text
        after_memory = balance()
        assert 0 < after_moderation - after_memory <= 10
        assert session.post("/v1/memory/billing/search", json={"query": "tea"}).status_code == 200
        assert balance() < after_memory
        curate = session.post("/v1/memory/billing/curate")  # 500 credits a run: more than the balance
        assert_error(curate, 402, "insufficient_credits", None)
        job = session.post(
            "/v1/fine_tuning/jobs", json={"model": MODEL, "training_file": "memory:billing", "suffix": "b"}
        )
        assert_error(job, 402, "insufficient_credits", None)

        # Only admins top keys up: by the endpoint and by the CLI.
        assert_error(
            session.post(f"/v1/keys/{key['id']}/credits", json={"amount": 10}), 403, "admin_key_required", None
        )
        before = balance()
        topped = http.post(f"/v1/keys/{key['id']}/credits", json={"amount": 1000})
        assert topped.status_code == 200 and topped.json()["credits"] == before + 1000
        out = json.loads(keys_cli(test_server_env, "credit", key["id"], "5"))
        assert out["credits"] == before + 1005
        assert_error(http.post(f"/v1/keys/{key['id']}/credits", json={"amount": 0}), 400, "invalid_value", "amount")
        assert_error(http.post("/v1/keys/key-missing/credits", json={"amount": 5}), 404, "key_not_found", "key_id")


def test_memories_and_templates_stay_with_their_key(tenants) -> None:
    a, b = tenants
    assert a.post("/v1/memory/notes-a/memories", json={"text": "secret of a"}).status_code == 200
    assert_error(b.get("/v1/memory/notes-a"), 404, "memory_group_not_found", "memory_group")
    assert_error(
        b.post("/v1/memory/notes-a/search", json={"query": "secret"}), 404, "memory_group_not_found", "memory_group"
    )
    template = a.post("/v1/templates", json={"name": "tpl-a", "messages": [{"role": "system", "content": "x"}]})
    assert template.status_code == 201, template.text
    assert "tpl-a" not in {item["name"] for item in b.get("/v1/templates").json()["data"]}
    assert all(job["training_file"] != "memory:notes-a" for job in b.get("/v1/fine_tuning/jobs").json()["data"])


def test_files_the_server_creates_are_private(
    server: RunningServer, state_dirs: StateDirs, shared_adapter: str
) -> None:
    # The session server keeps its databases in PostgreSQL: what it writes itself is the data directory (work files
    # of training, any SQLite store) and the adapters' folders.
    adapter_files = list((state_dirs.adapters / shared_adapter).rglob("*"))
    assert adapter_files
    for path in [state_dirs.data, *state_dirs.data.rglob("*"), *adapter_files]:
        mode = stat.S_IMODE(os.stat(path).st_mode)
        assert mode & 0o077 == 0, f"{path} is mode {oct(mode)}"
