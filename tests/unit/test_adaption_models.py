"""Adaption per served model: a job trains an adapter of the model it names (that model's weights, tokenizer and
dtype go to the worker), an adapter belongs to one base model, a model not served is refused. The training itself,
on two real models: tests/test_multi_model.py."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from server.adaption.errors import BaseModelNotServed
from server.adaption.jobs import JobStore
from server.adaption.runner import AdaptionService, spec_model
from server.adaption.worker import torch_dtype
from server.config import AdaptionSettings
from server.engine import pool as pool_module
from server.engine.adapters import AdapterStore
from server.engine.errors import AdapterOfAnotherModel
from server.engine.pool import EnginePool, PoolSettings
from tests.unit.test_engine_pool import QuickEngine, entry

OWN = entry("own", dtype="float32")
SECOND = entry("second", aliases=("two",), dtype="bfloat16", load="on_demand", tokenizer="./tok")


class StoreEngine(QuickEngine):
    """A quick engine with a real adapter store (on disk, no engine behind it)."""

    @classmethod
    async def start(cls, entry, adapters_dir: Path, adapters=None, **_: object) -> StoreEngine:  # type: ignore[override]
        engine = cls(entry)
        engine.adapters = adapters or AdapterStore(adapters_dir, entry, {}, None)
        return engine


@dataclass
class Group:
    memory_count: int = 5


class Memory:
    async def group(self, owner: str, name: str) -> Group:
        return Group()


@pytest.fixture
async def service(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[AdaptionService]:
    monkeypatch.setattr(pool_module, "Engine", StoreEngine)
    monkeypatch.setattr(pool_module, "unloaded_adapters", lambda entry, root: AdapterStore(root, entry, {}, None))
    pool = EnginePool([OWN, SECOND], lambda e: tmp_path / "adapters" / e.name, PoolSettings(), is_gpu=False)
    await pool.start()
    jobs = JobStore(tmp_path / "adaption.sqlite3")
    await jobs.open()
    try:
        yield AdaptionService(jobs, Memory(), pool, OWN, AdaptionSettings(), tmp_path / "work")  # type: ignore[arg-type]
    finally:
        await jobs.close()
        await pool.close()


async def test_a_job_trains_an_adapter_of_the_model_it_names(service: AdaptionService, tmp_path: Path) -> None:
    job = await service.create("owner", "g", "fresh", "two")  # by alias
    assert job.base_model == "second"
    assert (await service.create("owner", "g", "mine")).base_model == "own"  # none named: the server's own
    called = await service.record_call("owner", "g", "counted", threshold=1, min_group=1, base_model="second")
    assert called is not None and called.base_model == "second"
    with pytest.raises(BaseModelNotServed) as refused:
        await service.create("owner", "g", "other", "llama-3.1-8b")
    assert (refused.value.status, refused.value.code, refused.value.param) == (404, "model_not_found", "model")


async def test_an_adapter_belongs_to_one_base_model(service: AdaptionService, tmp_path: Path) -> None:
    await service.create("owner", "g", "fresh", "second")
    # Its job (queued) trains it on `second`: the same name on another model is refused, naming the param.
    with pytest.raises(AdapterOfAnotherModel, match="belongs to the model `second`, not `own`") as refused:
        await service.create("owner", "g", "fresh", "own", param="suffix")
    assert refused.value.param == "suffix" and refused.value.status == 400
    # An adapter already on disk (served or not) of one model is trained only there.
    (tmp_path / "adapters" / "second" / "held").mkdir(parents=True)
    with pytest.raises(AdapterOfAnotherModel):
        await service.create("owner", "g", "held", "own")
    assert (await service.create("owner", "g", "held", "second")).base_model == "second"


async def test_a_job_for_a_model_no_longer_served_fails_in_plain_words(service: AdaptionService) -> None:
    job, _ = await service.jobs.create_or_join("owner", "orphan", "g", "gone-model", service.hyperparameters)
    with pytest.raises(BaseModelNotServed, match="`gone-model` is not served here"):
        await service._train(job)


def test_the_worker_gets_the_models_weights_tokenizer_and_dtype(service: AdaptionService) -> None:
    import torch

    assert spec_model(SECOND) == {"model_dir": "nowhere", "tokenizer": "./tok", "dtype": "bfloat16"}
    auto = SECOND.model_copy(update={"dtype": "auto"})
    assert spec_model(auto)["dtype"] == "auto"  # not loaded: the worker resolves it
    assert spec_model(auto, "bfloat16")["dtype"] == "bfloat16"  # loaded: what vLLM resolved it to
    assert spec_model(OWN)["tokenizer"] == "nowhere"  # none of its own: the weights' folder
    hub = OWN.model_copy(update={"source": "org/model"})
    assert spec_model(hub)["model_dir"] == "org/model"  # a repo id stays one (loaded from the HF cache)
    assert service._base_cache(SECOND) != service._base_cache(OWN)  # base figures cached per model
    assert service._base_cache(OWN) == service.work_dir / "base-general.json"
    assert [torch_dtype(d) for d in ("bfloat16", "float16", "float32", None, "auto")] == [
        torch.bfloat16, torch.float16, torch.float32, torch.float32, "auto"
    ]  # fmt: skip
