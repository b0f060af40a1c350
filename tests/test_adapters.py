"""Multi-LoRA on the embedded model: real peft adapters, per-request choice, hot load/replace/unload, validation."""

from __future__ import annotations

import asyncio
import json
import shutil
import threading
from pathlib import Path

import httpx
import openai
import pytest
import torch
from safetensors.torch import save_file

from tests.conftest import API_KEY, MODEL, RunningServer, start_server

ALPHA, BRAVO = "ALPHA ALPHA ALPHA.", "Bravo bravo, bravo!"
QUESTION = [{"role": "user", "content": "What is the capital of France?"}]


def answer(client: openai.OpenAI, model: str = MODEL, **params) -> str:
    params = {"model": model, "messages": QUESTION, "temperature": 0, "max_tokens": 16, **params}
    return client.chat.completions.create(**params).choices[0].message.content


def add(http: httpx.Client, name: str, path: Path) -> httpx.Response:
    return http.post("/v1/adapters", json={"name": name, "path": str(path)})


@pytest.fixture(scope="session")
def registered(http: httpx.Client, adapter_sources: Path) -> dict[str, Path]:
    for name in ("alpha", "bravo"):
        response = add(http, name, adapter_sources / name)
        assert response.status_code == 201, response.text
    return {"alpha": adapter_sources / "alpha", "bravo": adapter_sources / "bravo"}


def test_adapters_answer_distinguishably(client, registered) -> None:
    assert "Paris" in answer(client)
    assert answer(client, "alpha") == ALPHA  # vLLM's convention: the adapter as `model`
    assert answer(client, extra_body={"lora_name": "bravo"}) == BRAVO  # the seed's `lora_name`
    completion = client.chat.completions.create(model="bravo", messages=QUESTION, temperature=0, max_tokens=8)
    assert completion.model == "bravo"


async def test_base_and_adapters_in_one_batch_match_solo_runs(client, async_client, registered) -> None:
    prompts = ["What is the capital of France?", "Tell me a joke.", "Name a colour."]
    targets = [MODEL, "alpha", "bravo"]
    solo = {
        (m, p): answer(client, m, messages=[{"role": "user", "content": p}], max_tokens=20)
        for m in targets
        for p in prompts
    }

    async def one(model: str, prompt: str) -> str:
        completion = await async_client.chat.completions.create(
            model=model, messages=[{"role": "user", "content": prompt}], temperature=0, max_tokens=20
        )
        return completion.choices[0].message.content

    pairs = [(m, p) for p in prompts for m in targets] * 2
    together = await asyncio.gather(*(one(m, p) for m, p in pairs))
    # Each row runs with its own adapter or none: a wrong one would change the answer from its first token. The
    # adapters' answers are exact; the base model's free text in bfloat16 may drift after its first words with the
    # batch's shape (sums taken in another order round differently), as it does in `vllm serve`.
    for (model, prompt), batched in zip(pairs, together, strict=True):
        alone = solo[(model, prompt)]
        if model == MODEL:
            assert batched.split()[:3] == alone.split()[:3], (prompt, batched, alone)
        else:
            assert batched == alone, (model, prompt, batched, alone)


def test_models_and_adapters_listing(http, registered) -> None:
    models = {card["id"]: card for card in http.get("/v1/models").json()["data"]}
    assert models["alpha"]["parent"] == MODEL and models["bravo"]["parent"] == MODEL
    assert models[MODEL]["parent"] is None
    listing = {item["id"]: item for item in http.get("/v1/adapters").json()["data"]}
    assert listing["alpha"]["base_model"] == MODEL
    assert listing["alpha"]["rank"] == 8 and listing["alpha"]["version"] >= 1
    assert set(listing["alpha"]["target_modules"]) == {"q_proj", "k_proj", "v_proj", "o_proj"}


def stream_text(server: RunningServer, model: str, chunks_seen: threading.Event, out: list[str]) -> None:
    """Stream 60 tokens into `out` (content pieces, then the finish reason last)."""
    body = {"model": model, "messages": QUESTION, "temperature": 0, "max_tokens": 60, "min_tokens": 60, "stream": True}
    with httpx.stream(
        "POST",
        f"{server.base_url}/v1/chat/completions",
        json=body,
        headers={"Authorization": f"Bearer {API_KEY}"},
        timeout=300,
    ) as response:
        assert response.status_code == 200
        for line in response.iter_lines():
            if line.startswith("data: {"):
                choices = json.loads(line[6:])["choices"]
                if choices and choices[0]["finish_reason"]:
                    out.append(choices[0]["finish_reason"])
                elif choices:
                    out.append(choices[0]["delta"].get("content") or "")
                    if len(out) > 3:
                        chunks_seen.set()


def test_hot_replace_while_streaming_and_no_stale_prefix_cache(server, client, http, registered) -> None:
    assert add(http, "swap", registered["alpha"]).status_code == 201
    assert answer(client, "swap") == ALPHA  # fills the prefix cache for this prompt under the old version
    seen, streamed = threading.Event(), []
    runner = threading.Thread(target=stream_text, args=(server, "swap", seen, streamed))
    runner.start()
    assert seen.wait(120)
    replaced = add(http, "swap", registered["bravo"])
    assert replaced.status_code == 201 and replaced.json()["version"] == 2
    # New requests use the new version at once, same prompt: no stale cached state (vLLM #42125).
    assert answer(client, "swap") == BRAVO
    runner.join(300)
    assert "".join(streamed).startswith(ALPHA)  # the running request finished on the version it began with
    assert streamed[-1] == "length"
    assert answer(client, "alpha") == ALPHA and answer(client, "bravo") == BRAVO


def test_unload_in_use_waits_for_running_requests(server, client, http, registered) -> None:
    assert add(http, "leaving", registered["bravo"]).status_code == 201
    seen, streamed = threading.Event(), []
    runner = threading.Thread(target=stream_text, args=(server, "leaving", seen, streamed))
    runner.start()
    assert seen.wait(120)
    deleted = http.delete("/v1/adapters/leaving")
    assert deleted.status_code == 200 and deleted.json()["deleted"] is True
    runner.join(300)
    assert "".join(streamed).startswith(BRAVO) and streamed[-1] == "length"  # ran to the end, not cut off
    gone = http.post("/v1/chat/completions", json={"model": "leaving", "messages": QUESTION})
    assert gone.status_code == 404
    assert http.get("/health").json()["status"] == "ok"


def test_vllm_compatible_load_and_unload(client, http, registered) -> None:
    loaded = http.post("/v1/load_lora_adapter", json={"lora_name": "compat", "lora_path": str(registered["alpha"])})
    assert loaded.status_code == 200 and "compat" in loaded.text
    assert answer(client, "compat") == ALPHA
    unloaded = http.post("/v1/unload_lora_adapter", json={"lora_name": "compat"})
    assert unloaded.status_code == 200
    assert http.post("/v1/unload_lora_adapter", json={"lora_name": "compat"}).status_code == 404


def test_upload_adapter_files(client, http, registered) -> None:
    files = {
        "adapter_config.json": (registered["bravo"] / "adapter_config.json").read_bytes(),
        "adapter_model.safetensors": (registered["bravo"] / "adapter_model.safetensors").read_bytes(),
    }
    response = http.post("/v1/adapters", data={"name": "uploaded"}, files=files)
    assert response.status_code == 201, response.text
    assert response.json()["source"] == "upload"
    assert answer(client, "uploaded") == BRAVO


@pytest.fixture(scope="session")
def broken_sources(adapter_sources: Path) -> dict[str, Path]:
    """Variants of `alpha` that must each be refused."""
    good = adapter_sources / "alpha"
    made: dict[str, Path] = {}

    def variant(name: str, config_change: dict | None = None) -> Path:
        target = adapter_sources / f"broken-{name}"
        shutil.copytree(good, target, dirs_exist_ok=True)
        if config_change is not None:
            config = json.loads((target / "adapter_config.json").read_text())
            config.update(config_change)
            (target / "adapter_config.json").write_text(json.dumps(config))
        made[name] = target
        return target

    variant("rank", {"r": 64})
    variant("targets", {"target_modules": ["q_proj", "embed_tokens"]})
    variant("base", {"base_model_name_or_path": "meta-llama/Llama-3.1-8B-Instruct"})
    (variant("base") / "manifest.json").write_text(json.dumps({"base_model": "llama-3.1-8b-instruct"}))
    (variant("missing") / "adapter_model.safetensors").unlink()
    (variant("corrupt") / "adapter_model.safetensors").write_bytes(b"\x00\x01not safetensors")
    (variant("config") / "adapter_config.json").write_text("{nope")
    shapes = variant("shapes", {"base_model_name_or_path": None})
    (shapes / "manifest.json").unlink()
    save_file(
        {
            "base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight": torch.zeros(8, 4096),
            "base_model.model.model.layers.0.self_attn.q_proj.lora_B.weight": torch.zeros(4096, 8),
        },
        str(shapes / "adapter_model.safetensors"),
    )
    return made


@pytest.mark.parametrize(
    ("variant", "fragment"),
    [
        ("rank", "max_lora_rank"),
        ("targets", "Unsupported target modules"),
        ("base", "trained for `llama-3.1-8b-instruct`"),
        ("missing", "needs adapter_config.json and adapter_model.safetensors"),
        ("corrupt", "not a readable safetensors file"),
        ("config", "not a JSON object"),
        ("shapes", "different base model"),
    ],
)
def test_invalid_adapters_are_400_and_disturb_nothing(
    client, http, registered, broken_sources, variant, fragment
) -> None:
    before = http.get("/v1/adapters").json()
    response = add(http, "victim", broken_sources[variant])
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["code"] == "invalid_adapter" and fragment in error["message"]
    assert http.get("/v1/adapters").json() == before
    assert answer(client, "alpha") == ALPHA


@pytest.mark.parametrize(
    ("body", "status", "param"),
    [
        ({"name": "../evil", "path": "x"}, 400, "name"),
        ({"name": "a/b", "path": "x"}, 400, "name"),
        ({"name": "ok", "path": "/etc"}, 400, "path"),
        ({"name": "ok", "path": "../../etc"}, 400, "path"),
        ({"name": MODEL, "path": "x"}, 400, "name"),
        ({"name": "ok"}, 400, "path"),
        ({"name": "ok", "path": "x", "extra": 1}, 400, "extra"),
    ],
)
def test_bad_adapter_requests(http, registered, adapter_sources, body, status, param) -> None:
    if body.get("path") == "x":
        body = {**body, "path": str(adapter_sources / "alpha")}
    response = http.post("/v1/adapters", json=body)
    assert response.status_code == status, response.text
    assert response.json()["error"]["param"] == param


def test_unknown_adapters_are_404(http, registered) -> None:
    for body, param in (
        ({"model": MODEL, "messages": QUESTION, "lora_name": "ghost"}, "lora_name"),
        ({"model": "ghost", "messages": QUESTION}, "model"),
    ):
        response = http.post("/v1/chat/completions", json=body)
        assert response.status_code == 404 and response.json()["error"]["param"] == param
    assert http.delete("/v1/adapters/ghost").status_code == 404
    assert http.delete("/v1/adapters/..").status_code in (400, 404)
    bad_name = http.post("/v1/chat/completions", json={"model": MODEL, "messages": QUESTION, "lora_name": "a/b"})
    assert bad_name.status_code == 400 and bad_name.json()["error"]["param"] == "lora_name"


def test_restart_keeps_registered_adapters(server, registered, test_server_env, tmp_path) -> None:
    """A fresh server process on the same adapters folder finds and serves them."""
    second = start_server(tmp_path / "restarted.log", env=test_server_env)
    try:
        client = openai.OpenAI(base_url=f"{second.base_url}/v1", api_key=API_KEY, max_retries=0)
        ids = {model.id for model in client.models.list().data}
        assert {"alpha", "bravo", "swap"} <= ids
        assert answer(client, "alpha") == ALPHA and answer(client, "swap") == BRAVO
    finally:
        second.stop()
