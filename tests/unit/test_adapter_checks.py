"""Adapter names, allowed paths and expected LoRA shapes (pure checks, no engine)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from server.engine.adapters import InvalidAdapter, check_name, module_shapes, path_under
from tests.conftest import StoreLocation


@pytest.mark.parametrize("name", ["alpha", "my-adapter_2", "A" * 64])
def test_identifier_names_pass(name: str) -> None:
    assert check_name(name) == name


@pytest.mark.parametrize("name", ["", "../x", "a/b", "a\\\\b", ".hidden", "1abc", "a" * 65, "sp ace", None, 5])
def test_other_names_fail(name) -> None:
    with pytest.raises(InvalidAdapter) as raised:
        check_name(name, "lora_name")
    assert raised.value.param == "lora_name"


def test_paths_must_stay_under_a_root(tmp_path: Path) -> None:
    root, outside = tmp_path / "root", tmp_path / "outside"
    (root / "a").mkdir(parents=True)
    outside.mkdir()
    (root / "link").symlink_to(outside)
    assert path_under((root,), str(root / "a")) == (root / "a").resolve()
    for candidate in (str(outside), str(root / ".." / "outside"), str(root / "link"), "/etc"):
        with pytest.raises(InvalidAdapter):
            path_under((root,), candidate)
    assert path_under((root, outside), str(outside)) == outside.resolve()


def test_module_shapes_follow_the_model_config() -> None:
    smollm2 = {"hidden_size": 576, "num_attention_heads": 9, "num_key_value_heads": 3, "intermediate_size": 1536}
    shapes = module_shapes(smollm2)
    assert shapes["q_proj"] == (576, 576)
    assert shapes["k_proj"] == (576, 192) and shapes["v_proj"] == (576, 192)
    assert shapes["down_proj"] == (1536, 576)


def test_store_skips_adapters_that_do_not_fit_the_served_model(tmp_path: Path) -> None:
    import json

    from server.config import load_settings
    from server.engine.adapters import AdapterStore

    entry = load_settings(environ={}).served
    config = {"hidden_size": 576, "num_attention_heads": 9, "num_key_value_heads": 3, "intermediate_size": 1536}
    broken = tmp_path / "broken" / "v1"
    broken.mkdir(parents=True)
    (broken / "adapter_config.json").write_text(json.dumps({"r": 8, "target_modules": ["q_proj"]}))
    (broken / "adapter_model.safetensors").write_bytes(b"junk")
    (tmp_path / "empty").mkdir()
    store = AdapterStore(tmp_path, entry, config, engine_client=None)
    store.load_existing()
    assert store.list() == []


def test_adapter_ownership_rules() -> None:
    from server.engine.adapters import OPERATOR_OWNED, Ownership

    private = Ownership(owner="key_a", shared=False)
    assert private.may_use("key_a", False) and private.may_change("key_a", False)
    assert not private.may_use("key_b", False) and not private.may_change("key_b", False)
    assert private.may_use("key_b", True) and private.may_change("key_b", True)
    shared = Ownership(owner="key_a", shared=True)
    assert shared.may_use("key_b", False) and not shared.may_change("key_b", False)
    assert OPERATOR_OWNED.may_use("key_b", False) and not OPERATOR_OWNED.may_change("key_b", False)


class RecordingEngine:
    """Stands in for vLLM's add_lora/remove_lora (the unit tests have no engine)."""

    def __init__(self) -> None:
        self.loaded: set[int] = set()

    async def add_lora(self, request) -> None:
        self.loaded.add(request.lora_int_id)

    async def remove_lora(self, engine_id: int) -> None:
        self.loaded.discard(engine_id)


def write_adapter(folder: Path) -> Path:
    import json

    import torch
    from safetensors.torch import save_file

    folder.mkdir(parents=True)
    (folder / "adapter_config.json").write_text(json.dumps({"r": 2, "target_modules": ["q_proj"]}))
    save_file(
        {
            "base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight": torch.zeros(2, 576),
            "base_model.model.model.layers.0.self_attn.q_proj.lora_B.weight": torch.zeros(576, 2),
        },
        str(folder / "adapter_model.safetensors"),
    )
    return folder


def recording_store(tmp_path: Path):
    """A store of the embedded model's adapters on a recording engine, and an adapter folder to add from."""
    from server.config import load_settings
    from server.engine.adapters import AdapterStore

    entry = load_settings(environ={}).served
    config = {"hidden_size": 576, "num_attention_heads": 9, "num_key_value_heads": 3, "intermediate_size": 1536}
    engine = RecordingEngine()
    store = AdapterStore(tmp_path / "adapters", entry, config, engine_client=engine)
    store.load_existing()
    return store, engine, write_adapter(tmp_path / "source")


async def test_store_records_owners_and_enforces_them_and_quotas(tmp_path: Path) -> None:
    from server.engine.adapters import AdapterNotFound, AdapterOwned, AdapterQuotaExceeded

    store, _, source = recording_store(tmp_path)
    mine = {"owner": "key_a", "admin": False, "max_versions": 2, "max_adapters": 2}
    await store.add("alpha", source, source_label="upload", **mine)
    ownership = store.ownership("alpha")
    assert ownership is not None and ownership.owner == "key_a" and not ownership.shared
    assert store.owned_by("key_a") == ["alpha"]
    with pytest.raises(AdapterOwned):
        await store.add("alpha", source, source_label="upload", owner="key_b", admin=False)
    await store.add("alpha", source, source_label="upload", **mine)
    with pytest.raises(AdapterQuotaExceeded):  # a third version
        await store.add("alpha", source, source_label="upload", **mine)
    await store.add("bravo", source, source_label="upload", **mine)
    with pytest.raises(AdapterQuotaExceeded):  # a third adapter
        await store.add("charlie", source, source_label="upload", **mine)
    await store.add("alpha", source, source_label="upload", owner="key_admin", admin=True)  # admins may
    assert store.ownership("alpha").owner == "key_a"  # and the owner stays
    assert store.is_inside_adapter((tmp_path / "adapters" / "alpha" / "v1").resolve()) == "alpha"
    assert store.is_inside_adapter(source.resolve()) is None
    with pytest.raises(AdapterNotFound):  # another key's private adapter: as if missing
        await store.remove("alpha", owner="key_b", admin=False)
    await store.add("shared", source, source_label="upload", owner="key_admin", admin=True, shared=True)
    with pytest.raises(AdapterOwned):
        await store.remove("shared", owner="key_b", admin=False)
    await store.remove("alpha", owner="key_a", admin=False)
    assert "alpha" not in store and store.ownership("alpha") is None


async def test_stores_of_two_servers_on_one_database_serve_what_either_changed(
    tmp_path: Path, store_location: StoreLocation
) -> None:
    """Two servers' stores on one adapters directory with the registry in their shared database: what one adds,
    promotes or removes, the other serves within a poll; versions taken at once get distinct numbers; a name made by
    two owners at once has one; a removal on one is a 404 on the other."""
    import asyncio
    from contextlib import AsyncExitStack

    from server.config import load_settings
    from server.engine.adapters import AdapterNotFound, AdapterOwned, AdapterStore
    from server.engine.registry import POLL_S, shared_adapter_registry

    entry = load_settings(environ={}).served
    config = {"hidden_size": 576, "num_attention_heads": 9, "num_key_value_heads": 3, "intermediate_size": 1536}
    source = write_adapter(tmp_path / "source")
    engines = RecordingEngine(), RecordingEngine()
    first, second = (AdapterStore(tmp_path / "adapters", entry, config, engine_client=engine) for engine in engines)
    location = store_location("adapters.sqlite3")

    async def soon(check) -> None:  # the other server's poll
        for _ in range(int(10 / POLL_S)):
            if check():
                return
            await asyncio.sleep(POLL_S / 2)
        assert check()

    async with AsyncExitStack() as stack:
        for store in (first, second):
            store.load_existing()
            await stack.enter_async_context(shared_adapter_registry(location, [store]))
        await first.add("alpha", source, source_label="upload", owner="key_a", admin=False)
        assert first.registered["alpha"].active == 1  # in the database: no owner file, no active file
        assert not (tmp_path / "adapters" / "alpha" / "owner.json").exists()
        await soon(lambda: "alpha" in second)
        assert [version.name for version in second.list()] == ["alpha"] and second.get("alpha").version == 1
        assert second.ownership("alpha").owner == "key_a"
        await second.add("alpha", source, source_label="upload", owner="key_a", admin=False)
        await soon(lambda: first.get("alpha").version == 2)  # promoted on the other server: served here too
        await first.add("alpha", source, source_label="upload", owner="key_a", admin=False, activate=False)
        await soon(lambda: len(second.versions("alpha")) == 3)
        assert second.get("alpha").version == 2  # stored unpromoted: still v2 everywhere
        await asyncio.gather(
            *(
                store.add("alpha", source, source_label="upload", owner="key_a", admin=False)
                for store in (first, second)
            )
        )
        await soon(lambda: first.get("alpha").version == second.get("alpha").version)
        assert [number for number, _ in first.versions("alpha")] == [1, 2, 3, 4, 5]
        assert sorted(path.name for path in (tmp_path / "adapters" / "alpha").iterdir()) == [
            f"v{n}" for n in range(1, 6)
        ]
        outcomes = await asyncio.gather(
            *(
                store.add("bravo", source, source_label="upload", owner=owner, admin=False)
                for store, owner in ((first, "key_a"), (second, "key_b"))
            ),
            return_exceptions=True,
        )
        [made] = [outcome for outcome in outcomes if not isinstance(outcome, Exception)]
        assert [type(outcome) for outcome in outcomes if isinstance(outcome, Exception)] == [AdapterOwned]
        await soon(lambda: first.ownership("bravo") == second.ownership("bravo"))
        assert made.version == 1
        alphas = first.get("alpha").engine_id, second.get("alpha").engine_id
        assert alphas[0] in engines[0].loaded or alphas[1] in engines[1].loaded
        await second.remove("alpha", owner="key_a", admin=False)
        await soon(lambda: "alpha" not in first)
        assert [version.name for version in first.list()] == ["bravo"]
        assert not (tmp_path / "adapters" / "alpha").exists()
        with pytest.raises(AdapterNotFound):
            await first.remove("alpha", owner="key_a", admin=False)
        await soon(lambda: alphas[0] not in engines[0].loaded and alphas[1] not in engines[1].loaded)  # retired


async def test_owner_files_are_claimed_whole(tmp_path: Path) -> None:
    """One server alone: its registry is the directory; an owner file is claimed whole or not at all."""
    from server.config import load_settings
    from server.engine.adapters import AdapterStore, _create_atomically

    entry = load_settings(environ={}).served
    config = {"hidden_size": 576, "num_attention_heads": 9, "num_key_value_heads": 3, "intermediate_size": 1536}
    store = AdapterStore(tmp_path / "adapters", entry, config, engine_client=RecordingEngine())
    store.load_existing()
    await store.add("bravo", write_adapter(tmp_path / "source"), source_label="upload", owner="key_a", admin=False)
    # the owner file is claimed whole or not at all: a second claim leaves the first's
    owner_file = tmp_path / "adapters" / "bravo" / "owner.json"
    before = owner_file.read_text()
    assert not _create_atomically(owner_file, '{"owner": "key_c", "shared": true}\n')
    assert owner_file.read_text() == before and not list(owner_file.parent.glob(".*.tmp"))
    assert store.ownership("bravo").owner == "key_a"


async def test_a_registry_reading_taken_before_the_stores_own_change_is_ignored(tmp_path: Path) -> None:
    """The poll reads the registry, then waits for the store while it adds a version: that older reading must not
    bring the previous version back (nor swap the engine's LoRA ids back and forth)."""
    from server.engine.registry import shared_adapter_registry

    store, _, source = recording_store(tmp_path)
    async with shared_adapter_registry(tmp_path / "registry.sqlite3", [store]) as registry:
        await store.add("alpha", source, source_label="upload", owner="key_a", admin=False)
        stale = await registry.load()  # alpha v1 active
        served = await store.add("alpha", source, source_label="upload", owner="key_a", admin=False)
        await store.apply_registry(stale[0], stale[1][store.entry.name])
        assert store.get("alpha") is served and served.version == 2
        generation, models = await registry.load()
        await store.apply_registry(generation, models[store.entry.name])
        assert store.get("alpha") is served


async def test_store_without_lora_asks_for_it_before_loading_and_never_removes_from_the_engine(tmp_path: Path) -> None:
    """LoRA `auto`: a store whose engine has no LoRA slots asks for them (`ensure_lora`) before loading a version;
    a stored-only version asks nothing; an engine without slots is never asked to remove one."""

    store, engine, source = recording_store(tmp_path)
    await store.attach(engine, lora=False)
    asked: list[str] = []

    async def ensure_lora(reason: str) -> None:
        asked.append(reason)
        await store.attach(engine, lora=True)  # what the engine's switch does once restarted with LoRA

    store.ensure_lora = ensure_lora
    await store.add("alpha", source, source_label="upload", activate=False)
    assert asked == [] and engine.loaded == set()
    version = await store.add("alpha", source, source_label="upload")
    assert asked == ["adapter alpha added"] and engine.loaded == {version.engine_id} and store.lora_on
    await store.add("bravo", source, source_label="upload")
    assert len(asked) == 1  # slots once; later adapters load straight away
    await store.attach(engine, lora=False)  # (an engine restarted without slots)
    await store.remove("alpha")
    assert version.engine_id in engine.loaded  # not asked of an engine without LoRA


async def test_a_version_retired_after_a_request_was_prepared_gives_way_to_the_active_one(tmp_path: Path) -> None:
    """A request prepared on v1 that reaches the engine after v2 was promoted runs on v2: leasing the retired v1
    would load its weights into vLLM again. A busy version is kept until its requests end; a removed adapter's
    prepared request gets AdapterNotFound."""
    from server.engine.adapters import AdapterNotFound

    store, engine, source = recording_store(tmp_path)
    first = await store.add("alpha", source, source_label="upload")
    prepared = store.get("alpha")
    second = await store.add("alpha", source, source_label="upload")
    await asyncio.gather(*store._retiring)
    assert first.retired and first.engine_id not in engine.loaded
    async with store.lease(prepared) as leased:
        assert leased is second and second.in_flight == 1
        third = await store.add("alpha", source, source_label="upload")
        await asyncio.sleep(0.05)
        assert second.retired and second.engine_id in engine.loaded  # busy: kept until its request ends
    await asyncio.gather(*store._retiring)
    assert second.engine_id not in engine.loaded and third.engine_id in engine.loaded
    prepared = store.get("alpha")
    await store.remove("alpha")
    with pytest.raises(AdapterNotFound):
        async with store.lease(prepared):
            pass
