"""Adapter names, allowed paths and expected LoRA shapes (pure checks, no engine)."""

from __future__ import annotations

from pathlib import Path

import pytest

from server.engine.adapters import InvalidAdapter, check_name, module_shapes, path_under


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
