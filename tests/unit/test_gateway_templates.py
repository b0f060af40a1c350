"""Template rendering and expansion into a request, and the template store (real SQLite and PostgreSQL)."""

from __future__ import annotations

import pytest

from server.gateway.errors import MissingVariable, TemplateNameTaken, TemplateNotFound
from server.gateway.templates import Template, TemplateContent, TemplateStore, expand, render
from tests.conftest import StoreLocation


def test_render_fills_slots_in_string_and_part_content() -> None:
    messages = [
        {"role": "system", "content": "You answer in {{ language }}."},
        {"role": "user", "content": [{"type": "text", "text": "Translate {{text}} please, {{text}}"}]},
        {"role": "assistant", "content": None},
    ]
    rendered = render(messages, {"language": "French", "text": "cat", "unused": "x"})
    assert rendered[0]["content"] == "You answer in French."
    assert rendered[1]["content"][0]["text"] == "Translate cat please, cat"
    assert rendered[2] == {"role": "assistant", "content": None}
    assert messages[0]["content"] == "You answer in {{ language }}."  # the input is not changed


def test_render_names_the_missing_variable() -> None:
    with pytest.raises(MissingVariable) as missing:
        render([{"role": "user", "content": "{{a}} and {{b}}"}], {"a": "1"})
    assert missing.value.name == "b"


def test_render_leaves_text_without_slots_alone() -> None:
    messages = [{"role": "user", "content": "braces { } and {{ not a slot!}}"}]
    assert render(messages, {}) == messages


def _template(**content: object) -> Template:
    return Template(
        id="t-1",
        owner="o",
        name="n",
        version=1,
        content=TemplateContent(**content),  # type: ignore[arg-type]
        created_at=0.0,
        updated_at=0.0,
    )


def test_expand_puts_template_messages_first_and_fills_defaults_the_request_leaves_out() -> None:
    template = _template(
        messages=[{"role": "system", "content": "Be {{tone}}."}],
        model="tmpl-model",
        sampling={"temperature": 0.1, "max_tokens": 5},
    )
    payload = {"messages": [{"role": "user", "content": "Hi {{name}}"}], "max_tokens": 9, "template": "n"}
    expanded = expand(payload, template, {"tone": "brief", "name": "Ann"})
    assert expanded["messages"] == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Hi Ann"},
    ]
    assert expanded["model"] == "tmpl-model"
    assert expanded["temperature"] == 0.1
    assert expanded["max_tokens"] == 9  # the request's own value wins
    assert expand({"model": "mine"}, template, {"tone": "x"})["model"] == "mine"


async def test_store_versions_names_uuids_and_owners(store_location: StoreLocation) -> None:
    store = TemplateStore(store_location("templates.sqlite3"))
    await store.open()
    try:
        first = await store.create("alice", "greet", TemplateContent(messages=[{"role": "user", "content": "v1"}]))
        assert first.version == 1
        with pytest.raises(TemplateNameTaken):
            await store.create("alice", "greet", TemplateContent(messages=[]))
        await store.create("bob", "greet", TemplateContent(messages=[{"role": "user", "content": "bob's"}]))
        second = await store.update(
            "greet", "alice", TemplateContent(messages=[{"role": "user", "content": "v2"}]), admin=False
        )
        assert (second.id, second.version) == (first.id, 2)
        assert (await store.find(first.id, "alice", admin=False)).content.messages[0]["content"] == "v2"
        with pytest.raises(TemplateNotFound):
            await store.find(first.id, "bob", admin=False)  # another owner's UUID is not found
        assert (await store.find(first.id, "root", admin=True)).name == "greet"
        assert [t.owner for t in await store.list("alice", admin=False)] == ["alice"]
        assert len(await store.list("root", admin=True)) == 2
        await store.delete("greet", "alice", admin=False)
        with pytest.raises(TemplateNotFound):
            await store.find("greet", "alice", admin=False)
        assert (await store.find("greet", "bob", admin=False)).content.messages[0]["content"] == "bob's"
    finally:
        await store.close()


async def test_an_update_that_loses_the_race_for_its_version_to_another_server_tries_the_next(
    store_location: StoreLocation,
) -> None:
    """Two stores on one database (two servers): a rival's version lands between this update's read and write."""
    first, second = (TemplateStore(store_location("templates.sqlite3")) for _ in range(2))
    for store in (first, second):
        await store.open()
    try:
        created = await first.create("alice", "raced", TemplateContent(messages=[]))
        rival = TemplateContent(messages=[{"role": "user", "content": "rival"}])
        add_version = first._add_version

        def rival_first(*args: object) -> None:
            if (second._find(created.id, "alice", False)).version == 1:
                second._add_next_version(created.id, "alice", rival, False)
            add_version(*args)  # type: ignore[arg-type]

        first._add_version = rival_first  # type: ignore[method-assign]
        mine = await first.update(
            "raced", "alice", TemplateContent(messages=[{"role": "user", "content": "mine"}]), admin=False
        )
        assert mine.version == 3 and mine.content.messages[0]["content"] == "mine"
        assert (await second.find(created.id, "alice", admin=False)).version == 3
    finally:
        for store in (first, second):
            await store.close()
