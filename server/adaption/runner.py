"""The adaption service: counts calls, queues jobs, runs the training worker process, promotes what beats the current adapter.

One job trains at a time, in a child process (`server.adaption.worker`), so the
server's event loop and engine never wait on training. A job left `running` by
a restart is queued again and trained from the start (training is short and
deterministic); the events say so.
"""

from __future__ import annotations

import asyncio
import json
import logging
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from server.adaption.dataset import MemoryRecord, data_hash, examples_from_memories, split_examples
from server.adaption.errors import JobFinished, JobNotFound
from server.adaption.jobs import Job, JobEvent, JobStore
from server.config import AdaptionSettings, ModelEntry
from server.engine.adapters import AdapterNotFound, AdapterStore
from server.memory.service import MemoryService

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrainingOutcome:
    eval_loss: float
    baseline_loss: float
    promoted: bool


def should_train(calls_since_training: int, threshold: int, memory_count: int, min_group: int) -> bool:
    return calls_since_training >= threshold and memory_count >= min_group


def promotion(result: dict) -> TrainingOutcome:
    """A new version is promoted only if its held-out loss beats the current version's (or the base model's)."""
    baseline = result["current_eval_loss"] if result.get("current_eval_loss") is not None else result["base_eval_loss"]
    return TrainingOutcome(result["eval_loss"], baseline, result["eval_loss"] < baseline)


class AdaptionService:
    def __init__(
        self,
        jobs: JobStore,
        memory: MemoryService,
        adapters: AdapterStore,
        entry: ModelEntry,
        settings: AdaptionSettings,
        work_dir: Path,
    ) -> None:
        self.jobs = jobs
        self.memory = memory
        self.adapters = adapters
        self.entry = entry
        self.settings = settings
        self.work_dir = work_dir
        self.worker_command = [sys.executable, "-m", "server.adaption.worker"]
        self._queue: asyncio.Queue[str] = asyncio.Queue()
        self._process: asyncio.subprocess.Process | None = None
        self._worker: asyncio.Task[None] | None = None

    @property
    def hyperparameters(self) -> dict:
        settings = self.settings
        return {
            "rank": settings.rank,
            "alpha": settings.alpha,
            "target_modules": list(settings.target_modules),
            "epochs": settings.epochs,
            "learning_rate": settings.learning_rate,
            "max_examples": settings.max_examples,
            "held_out_fraction": settings.held_out_fraction,
            "seed": settings.seed,
        }

    async def start(self) -> None:
        """Queue what a previous run left unfinished, then start training jobs one by one."""
        for job in await self.jobs.active():
            if job.status == "running":
                await self.jobs.update(
                    job.id,
                    status="queued",
                    message="The server restarted during training; the job runs again from the start.",
                )
            self._queue.put_nowait(job.id)
        self._worker = asyncio.create_task(self._work())

    async def stop(self) -> None:
        if self._process is not None and self._process.returncode is None:
            self._process.kill()  # the job stays `running` in the store: the next start runs it again
        if self._worker is not None:
            self._worker.cancel()
            await asyncio.gather(self._worker, return_exceptions=True)

    # the trigger and the jobs API

    async def record_call(self, owner: str, group: str, adapter: str, threshold: int, min_group: int) -> Job | None:
        """Count a `nightly` + `finetune_thresh` call; queue training when the group has earned it."""
        calls = await self.jobs.count_call(owner, group, adapter)
        info = await self.memory.group(owner, group)
        if not should_train(calls, threshold, info.memory_count, min_group):
            return None
        return await self.create(owner, group, adapter)

    async def create(self, owner: str, group: str, adapter: str) -> Job:
        await self.memory.group(owner, group)  # GroupNotFound for another key's or a missing group
        job, created = await self.jobs.create_or_join(owner, adapter, group, self.entry.name, self.hyperparameters)
        if created:
            await self.jobs.reset_calls(owner, group, adapter)
            self._queue.put_nowait(job.id)
        return job

    async def get(self, owner: str, job_id: str) -> Job:
        job = await self.jobs.get(job_id)
        if job is None or job.owner != owner:
            raise JobNotFound(job_id)
        return job

    async def list(self, owner: str, limit: int, after: str | None) -> list[Job]:
        return await self.jobs.list(owner, limit, after)

    async def events(self, owner: str, job_id: str, limit: int, after: int | None) -> list[JobEvent]:
        await self.get(owner, job_id)
        return await self.jobs.events(job_id, limit, after)

    async def cancel(self, owner: str, job_id: str) -> Job:
        job = await self.get(owner, job_id)
        if job.status not in ("queued", "running"):
            raise JobFinished(job_id, job.status)
        cancelled = await self.jobs.update(
            job_id, status="cancelled", finished_at=time.time(), message="Job cancelled."
        )
        if job.status == "running" and self._process is not None and self._process.returncode is None:
            self._process.kill()
        return cancelled

    # training

    async def _work(self) -> None:
        while True:
            job = await self.jobs.get(await self._queue.get())
            if job is None or job.status != "queued":
                continue  # cancelled while waiting
            try:
                await self._train(job)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # the job fails; the adapter being served is untouched
                logger.exception("fine-tuning job %s failed", job.id)
                current = await self.jobs.get(job.id)
                if current is not None and current.status == "running":
                    await self.jobs.update(
                        job.id,
                        status="failed",
                        finished_at=time.time(),
                        error={"code": "training_failed", "message": str(exc), "param": None},
                        level="error",
                        message=f"Training failed: {exc}",
                    )

    async def _train(self, job: Job) -> None:
        await self.jobs.update(job.id, status="running", started_at=time.time(), message="Training started.")
        snapshot = await self.memory.store.snapshot(await self.memory.group(job.owner, job.memory_group))
        memories = [MemoryRecord(memory.text, memory.kind) for memory in snapshot.memories]
        try:
            current_path = str(self.adapters.get(job.adapter).path)
        except AdapterNotFound:
            current_path = None
        spec_base = {
            "model_dir": str(self.entry.source_path),
            "current_adapter": current_path,
            "cpu_threads": self.settings.cpu_threads,
            "gpu_memory_fraction": self.settings.gpu_memory_fraction,
        }
        result = await self.run_worker(job, memories, spec_base)
        if (await self.jobs.get(job.id)).status == "cancelled":
            return
        outcome = promotion(result)
        output = self.work_dir / job.id / "adapter"
        manifest = {
            "base_model": self.entry.name,
            "fine_tuning_job": job.id,
            "memory_group": job.memory_group,
            "data_hash": result["data_hash"],
            "train_examples": result["train_examples"],
            "held_out_examples": result["held_out_examples"],
            "train_loss": result["train_loss"],
            "eval_loss": result["eval_loss"],
            "baseline_eval_loss": outcome.baseline_loss,
            "trained": result["created"],
        }
        (output / "manifest.json").write_text(json.dumps(manifest, indent=2))
        version = await self.adapters.add(
            job.adapter,
            output,
            source_label=f"fine-tuning job {job.id}",
            activate=outcome.promoted,
            owner=job.owner,  # a new adapter is the job owner's; an existing one must be theirs already
            admin=False,
        )
        verdict = (
            f"Promoted {job.adapter} v{version.version}: held-out loss {outcome.eval_loss:.4f} < {outcome.baseline_loss:.4f}."
            if outcome.promoted
            else f"Kept {job.adapter} v{version.version} unpromoted: held-out loss {outcome.eval_loss:.4f}"
            f" does not beat {outcome.baseline_loss:.4f}."
        )
        await self.jobs.update(
            job.id,
            status="succeeded",
            finished_at=time.time(),
            result=manifest,
            adapter_version=version.version,
            promoted=int(outcome.promoted),
            trained_tokens=result.get("trained_tokens"),
            message=verdict,
        )
        shutil.rmtree(self.work_dir / job.id, ignore_errors=True)

    async def run_worker(self, job: Job, memories: list[MemoryRecord], spec_base: dict) -> dict:
        """Train `job` in a child process; its progress becomes job events. Returns the worker's `done` fields."""
        hyper = job.hyperparameters
        train, held_out = split_examples(
            examples_from_memories(memories), hyper["held_out_fraction"], hyper["max_examples"]
        )
        if not train or not held_out:
            raise ValueError(
                f"memory group {job.memory_group!r} gives {len(train) + len(held_out)} examples; at least 2 are needed"
            )
        folder = self.work_dir / job.id
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir(parents=True)
        spec = {
            **spec_base,
            "hyperparameters": hyper,
            "train": train,
            "held_out": held_out,
            "output_dir": str(folder / "adapter"),
        }
        (folder / "spec.json").write_text(json.dumps(spec))
        stderr = (folder / "worker.log").open("w")
        self._process = await asyncio.create_subprocess_exec(
            *self.worker_command, str(folder / "spec.json"), stdout=asyncio.subprocess.PIPE, stderr=stderr
        )
        done: dict | None = None
        assert self._process.stdout is not None
        async for raw in self._process.stdout:
            event = json.loads(raw)
            kind = event.pop("event")
            if kind == "step":
                await self.jobs.add_metrics(
                    job.id, f"Step {event['step']}/{event['total_steps']}: training loss={event['loss']:.4f}", event
                )
            elif kind == "eval_before":
                await self.jobs.add_metrics(job.id, "Held-out loss before training", event)
            elif kind == "done":
                done = event
        code = await self._process.wait()
        self._process = None
        if code != 0 or done is None:
            tail = (folder / "worker.log").read_text(errors="replace")[-500:]
            raise RuntimeError(f"training worker exited with code {code}: {tail}")
        done["data_hash"] = data_hash(train + held_out)
        done["created"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        return done
