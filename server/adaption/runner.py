"""The adaption service: counts calls, queues jobs, runs the training worker process, promotes what learned.

A job teaches the group's facts as they are now (`dataset.curriculum`) and is
promoted only if it recalls them on held-out questions better than the base
model (and no worse than the served version) while the shipped general set
stays within tolerance (`promotion`).

One job trains at a time, in a child process (`server.adaption.worker`), so the
server's event loop and engine never wait on training. A job left `running` by
a restart is queued again and trained from the start (training is short and
deterministic); the events say so.

Jobs live in the job store, which several servers may share (PostgreSQL): each
server's loop claims queued jobs from it (`JobStore.claim`, atomic), woken at
once for a job queued here and every `job_poll_s` for jobs queued elsewhere; a
job whose server stops renewing its lease is queued again (`job_lease_s`).
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import shutil
import socket
import sys
import time
import uuid
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from server.adaption.dataset import MemoryRecord, curriculum, data_hash
from server.adaption.errors import BaseModelNotServed, JobFinished, JobNotFound, NothingToLearn, WorkerFailed
from server.adaption.jobs import Job, JobEvent, JobStore
from server.config import AdaptionSettings, ModelEntry
from server.engine.adapters import AdapterNotFound, AdapterStore, AdapterVersion
from server.engine.errors import AdapterOfAnotherModel
from server.memory.service import MemoryService
from server.observability.metrics import Metrics
from server.supervision import start_supervised, stop

if TYPE_CHECKING:
    from server.engine.pool import ModelSlot

logger = logging.getLogger(__name__)


GENERAL_SET = Path(__file__).parent / "data" / "general.jsonl"
REPLAY_SET = Path(__file__).parent / "data" / "replay.jsonl"


def general_set(path: Path = GENERAL_SET) -> list[dict]:
    """The fixed general set shipped with the project: questions with reference answers the model should keep."""
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def replay_set(path: Path = REPLAY_SET) -> list[dict]:
    """Everyday prompts (none of the general set's) whose base-model answers are taught alongside the facts."""
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


@dataclass(frozen=True)
class Verdict:
    """Whether a trained version is promoted, and why, in plain words."""

    promoted: bool
    reason: str


def should_train(calls_since_training: int, threshold: int, memory_count: int, min_group: int) -> bool:
    return calls_since_training >= threshold and memory_count >= min_group


def _named(figures: dict) -> str:
    return f"{figures['recalled']} of {figures['probes']}"


def promotion(result: dict, tolerance: float) -> Verdict:
    """Promote only if (a) the new version names the trained facts for more held-out questions than the base model
    (and for no fewer than the version being served), and (b) its loss on the general set's reference answers rises
    by at most `tolerance` (a share of the base model's loss). The loss is deterministic for given weights and
    averages every reference token; the count of general questions answered right is reported beside it, not gated
    on: on 40 questions it swung 16-24 between adapters trained with the same settings (base model: 19)."""
    base, current, new = result["base"], result.get("current"), result["new"]
    recall = (
        f"it names the fact for {_named(new)} held-out questions about the trained facts"
        f" (base model: {_named(base)}{f'; version served now: {_named(current)}' if current else ''})"
    )
    size = round(base["general_correct"] / base["general_accuracy"]) if base["general_accuracy"] else 0
    rise = new["general_loss"] / base["general_loss"] - 1 if base["general_loss"] else 0.0
    general = (
        f"general set: loss {new['general_loss']:.3f} against the base model's {base['general_loss']:.3f}"
        f" ({rise:+.1%}, at most {tolerance:+.0%} allowed), {new['general_correct']} of {size} answered right"
        f" against {base['general_correct']}"
    )
    if new["recalled"] <= base["recalled"]:
        return Verdict(False, f"{recall}: no better than the base model, so it has not learned the facts; {general}.")
    if current is not None and new["recalled"] < current["recalled"]:
        return Verdict(False, f"{recall}: fewer than the version served now; {general}.")
    if rise > tolerance + 1e-9:
        return Verdict(False, f"{recall}, but {general}: it would lose more of what the model knew than allowed.")
    return Verdict(True, f"{recall}; {general}.")


def eval_message(stage: str, figures: dict) -> str:
    return (
        f"{stage}: names the fact for {_named(figures)} held-out questions; general set:"
        f" {figures['general_correct']} answered right, loss {figures['general_loss']:.3f}."
    )


class BaseModels(Protocol):
    """The served models adaption trains adapters for, by name or alias (server.engine.pool.EnginePool)."""

    def slot(self, name: str) -> ModelSlot | None: ...

    def adapter_slot(self, adapter: str, base_model: str | None = None, param: str = "base_model") -> ModelSlot: ...

    def awake_adapters(self, slot: ModelSlot) -> AbstractAsyncContextManager[AdapterStore]: ...


def spec_model(entry: ModelEntry, served_dtype: str | None = None) -> dict:
    """What the worker loads to train `entry`'s adapter: its weights, tokenizer (chat template) and dtype: the one
    its engine computes in when loaded (`served_dtype`: vLLM's `auto` resolved), so the adapter trains on the
    weights it will serve with; else the entry's (the worker resolves `auto` on a CPU as the engine would)."""
    source = str(entry.source_path) if entry.is_local else entry.source
    return {"model_dir": source, "tokenizer": entry.tokenizer or source, "dtype": served_dtype or entry.dtype}


class AdaptionService:
    """`models`: the served models (a job trains the adapter of the model it names); `entry`: the server's own,
    the base model of a job that names none."""

    def __init__(
        self,
        jobs: JobStore,
        memory: MemoryService,
        models: BaseModels,
        entry: ModelEntry,
        settings: AdaptionSettings,
        work_dir: Path,
        metrics: Metrics | None = None,
    ) -> None:
        self.metrics = metrics if metrics is not None else Metrics()
        self.jobs = jobs
        self.memory = memory
        self.models = models
        self.entry = entry
        self.settings = settings
        self.work_dir = work_dir
        self.worker_command = [sys.executable, "-m", "server.adaption.worker"]
        self._queue: asyncio.Queue[str] = asyncio.Queue()
        self._process: asyncio.subprocess.Process | None = None
        self._worker: asyncio.Task[None] | None = None
        self._current: str | None = None  # the job being trained
        self.restart_backoff_s = 1.0
        self.shared = False  # True: other servers use the job store too (their running jobs are not ours)
        self.instance = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"  # who claims jobs

    @property
    def hyperparameters(self) -> dict:
        settings = self.settings
        return {
            "rank": settings.rank,
            "alpha": settings.alpha,
            "target_modules": list(settings.target_modules),
            "epochs": settings.epochs,
            "learning_rate": settings.learning_rate,
            "batch_size": settings.batch_size,
            "max_examples": settings.max_examples,
            "questions_per_fact": settings.questions_per_fact,
            "probes_per_fact": settings.probes_per_fact,
            "probe_max_tokens": settings.probe_max_tokens,
            "replay_examples": settings.replay_examples,
            "replay_max_tokens": settings.replay_max_tokens,
            "general_loss_tolerance": settings.general_loss_tolerance,
            "seed": settings.seed,
        }

    async def start(self) -> None:
        """Start training jobs one by one, supervised: a failure of the loop itself is logged and the loop restarts."""
        self._worker = start_supervised("fine-tuning loop", self._work, self.restart_backoff_s)

    async def _requeue_unfinished(self) -> None:
        """Queue what a previous run (of the server, or of this loop before it failed) left unfinished: every
        running job where the store is this server's own, else those whose server's lease ran out."""
        await self.jobs.requeue_stale(self.settings.job_lease_s if self.shared else 0.0)

    async def stop(self, grace_s: float = 5.0) -> None:
        """Stop the loop and the training worker; the job it was training is queued again for the next start."""
        job_id = self._current
        await stop(self._worker)  # first, so the worker's exit is not taken for a failed job
        process = self._process
        if process is not None and process.returncode is None:
            process.terminate()
            try:
                await asyncio.wait_for(process.wait(), grace_s)
            except TimeoutError:
                process.kill()
                await process.wait()
        if job_id is not None:
            current = await self.jobs.get(job_id)
            if current is not None and current.status == "running":
                await self.jobs.update(
                    job_id, status="queued", message="The server shut down during training; the job runs again."
                )

    # the trigger and the jobs API

    async def record_call(
        self, owner: str, group: str, adapter: str, threshold: int, min_group: int, base_model: str | None = None
    ) -> Job | None:
        """Count a `nightly` + `finetune_thresh` call (on `base_model`: the served model that answered it);
        queue training when the group has earned it."""
        calls = await self.jobs.count_call(owner, group, adapter)
        info = await self.memory.group(owner, group)
        if not should_train(calls, threshold, info.memory_count, min_group):
            return None
        return await self.create(owner, group, adapter, base_model)

    def base_slot(self, base_model: str | None) -> ModelSlot:
        """The served model a job trains for (by name or alias; None: the server's own). BaseModelNotServed else."""
        slot = self.models.slot(base_model or self.entry.name)
        if slot is None:
            raise BaseModelNotServed(base_model or self.entry.name)
        return slot

    async def create(
        self, owner: str, group: str, adapter: str, base_model: str | None = None, param: str = "lora_name"
    ) -> Job:
        """Queue training `adapter` (of `base_model`, the server's own by default) from the group, or join the
        caller's job already queued for it. An adapter belongs to one base model: AdapterOfAnotherModel when it
        (or the job training it) is another model's."""
        entry = self.base_slot(base_model).entry
        self.models.adapter_slot(adapter, entry.name, param)
        await self.memory.group(owner, group)  # GroupNotFound for another key's or a missing group
        job, created = await self.jobs.create_or_join(owner, adapter, group, entry.name, self.hyperparameters)
        if job.base_model != entry.name:  # the caller's own job for that name trains it on another model
            raise AdapterOfAnotherModel(adapter, job.base_model, entry.name, param)
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
        self.metrics.job_finished("cancelled")
        if job.status == "running" and self._process is not None and self._process.returncode is None:
            self._process.kill()
        return cancelled

    # training

    async def _next_job(self) -> Job:
        """The next job this server runs, claimed from the store: at once when one is queued here, else on the
        next poll (a job queued by another server, or one whose server died)."""
        while True:
            await self.jobs.requeue_stale(self.settings.job_lease_s)
            job = await self.jobs.claim(self.instance, list(self.models.slots))
            if job is not None:
                return job
            try:
                await asyncio.wait_for(self._queue.get(), self.settings.job_poll_s)
            except TimeoutError:
                pass

    async def _keep_lease(self, job_id: str) -> None:
        """Renew the job's lease while it trains; when it no longer runs here (cancelled on any server), stop it."""
        while True:
            await asyncio.sleep(self.settings.job_lease_s / 4)
            try:
                running_here = await self.jobs.heartbeat(job_id, self.instance)
            except Exception:  # the database is away for now: the next beat tries again, within the lease
                logger.exception("fine-tuning job %s: could not renew its lease", job_id)
                continue
            if not running_here:
                if self._process is not None and self._process.returncode is None:
                    self._process.kill()
                return

    async def _work(self) -> None:
        await self._requeue_unfinished()
        while True:
            job = await self._next_job()
            self._current = job.id
            lease = asyncio.create_task(self._keep_lease(job.id))
            try:
                await self._train(job)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # the job fails; the adapter being served is untouched
                logger.exception("fine-tuning job %s failed", job.id)
                current = await self.jobs.get(job.id)
                if current is not None and current.status == "running":
                    self.metrics.job_finished("failed")
                    await self.jobs.update(
                        job.id,
                        status="failed",
                        finished_at=time.time(),
                        error={"code": getattr(exc, "code", "training_failed"), "message": str(exc), "param": None},
                        level="error",
                        message=f"Training failed: {exc}",
                    )
            finally:
                lease.cancel()
            self._current = None

    async def _memories(self, owner: str, group: str) -> list[MemoryRecord]:
        """The group's memories as they are now (updates and deletions included), oldest first."""
        memories: list[MemoryRecord] = []
        after = None
        while page := await self.memory.list_memories(owner, group, 500, after):
            memories += [MemoryRecord(memory.text, memory.kind) for memory in page]
            after = page[-1].id
        return memories

    async def _train(self, job: Job) -> None:
        started = time.perf_counter()
        slot = self.base_slot(job.base_model)  # the model the job trains for; it may have stopped being served
        entry = slot.entry
        self.models.adapter_slot(job.adapter, entry.name, "lora_name")  # not added to another model meanwhile
        assert slot.adapters is not None  # set up at start, loaded or not
        memories = await self._memories(job.owner, job.memory_group)
        try:
            current = slot.adapters.get(job.adapter)
            current_path, current_version = str(current.path), current.version
        except AdapterNotFound:
            current_path, current_version = None, None
        spec_base = {
            **spec_model(entry, slot.engine.dtype if slot.engine is not None else None),
            "current_adapter": current_path,
            "cpu_threads": self.settings.cpu_threads,
            "gpu_memory_fraction": self.settings.gpu_memory_fraction,
            # The base model's own figures and replay answers, cached per model between jobs.
            "base_cache": str(self._base_cache(entry)),
        }
        result = await self.run_worker(job, memories, spec_base)
        if (await self.jobs.get(job.id)).status == "cancelled":
            return
        tolerance = job.hyperparameters.get("general_loss_tolerance", self.settings.general_loss_tolerance)
        verdict = promotion(result, tolerance)
        output = self.work_dir / job.id / "adapter"
        manifest = {
            "base_model": entry.name,
            "base_dtype": result.get("base_dtype"),
            "fine_tuning_job": job.id,
            "memory_group": job.memory_group,
            "data_hash": result["data_hash"],
            "facts": result["facts"],
            "turns": result["turns"],
            "train_examples": result["train_examples"],
            "replay_examples": result["replay_examples"],
            "probes": result["probes"],
            "train_loss": result["train_loss"],
            "recall": result["new"]["recall"],
            "baseline_recall": result["base"]["recall"],
            "current_recall": result["current"]["recall"] if result["current"] else None,
            "current_version": current_version if result["current"] else None,
            "general_correct": result["new"]["general_correct"],
            "baseline_general_correct": result["base"]["general_correct"],
            "general_examples": result["general_examples"],
            "general_loss_tolerance": tolerance,
            "general_loss": result["new"]["general_loss"],
            "baseline_general_loss": result["base"]["general_loss"],
            "train_seconds": result["train_seconds"],
            "samples": result["samples"],
            "promoted": verdict.promoted,
            "verdict": verdict.reason,
            "trained": result["created"],
        }
        (output / "manifest.json").write_text(json.dumps(manifest, indent=2))

        async def add(store: AdapterStore) -> AdapterVersion:
            return await store.add(
                job.adapter,
                output,
                source_label=f"fine-tuning job {job.id}",
                activate=verdict.promoted,
                owner=job.owner,  # a new adapter is the job owner's; an existing one must be theirs already
                admin=False,
            )

        if verdict.promoted:  # served from now on: into its model's engine (loaded or woken first)
            async with self.models.awake_adapters(slot) as store:
                version = await add(store)
        else:  # only kept on disk: no engine needed
            version = await add(slot.adapters)
        self.metrics.trained(time.perf_counter() - started, result.get("trained_tokens"))
        self.metrics.loss("eval", result["new"]["general_loss"])
        self.metrics.job_finished("succeeded")
        manifest["version"] = version.version
        message = (
            f"Promoted {job.adapter} v{version.version}: {verdict.reason}"
            if verdict.promoted
            else f"Kept {job.adapter} v{version.version} unpromoted: {verdict.reason}"
        )
        await self.jobs.update(
            job.id,
            status="succeeded",
            finished_at=time.time(),
            result=manifest,
            adapter_version=version.version,
            promoted=int(verdict.promoted),
            trained_tokens=result.get("trained_tokens"),
            message=message,
        )
        shutil.rmtree(self.work_dir / job.id, ignore_errors=True)

    def _base_cache(self, entry: ModelEntry) -> Path:
        """Where the worker caches `entry`'s base figures: the server's own model's where they always were."""
        folder = self.work_dir if entry.name == self.entry.name else self.work_dir / f"@{entry.name}"
        return folder / "base-general.json"

    async def run_worker(self, job: Job, memories: list[MemoryRecord], spec_base: dict) -> dict:
        """Train `job` in a child process; its progress becomes job events. Returns the worker's `done` fields."""
        hyper = job.hyperparameters
        taught = curriculum(memories, hyper["questions_per_fact"], hyper["probes_per_fact"])
        if not taught.probes:
            raise NothingToLearn(job.memory_group, len(memories))
        train = taught.train[-hyper["max_examples"] :]
        folder = self.work_dir / job.id
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir(parents=True)
        probes = [{"question": probe.question, "value": probe.value} for probe in taught.probes]
        spec = {
            **spec_base,
            "hyperparameters": hyper,
            "train": train,
            "probes": probes,
            "general": general_set(),
            "replay": replay_set(),
            "output_dir": str(folder / "adapter"),
        }
        (folder / "spec.json").write_text(json.dumps(spec))
        await self.jobs.add_metrics(
            job.id,
            f"Training data: {taught.facts} facts, each asked in several wordings, and {taught.turns} real exchanges:"
            f" {len(train)} examples, with the base model's own answers to up to {hyper.get('replay_examples', 0)}"
            f" everyday prompts; {len(probes)} held-out questions in other wordings test recall.",
            {"facts": taught.facts, "turns": taught.turns, "train_examples": len(train), "probes": len(probes)},
        )
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
                self.metrics.loss("train", event["loss"])
                await self.jobs.add_metrics(
                    job.id,
                    f"Step {event['step']}/{event['total_steps']}: training loss={event['loss']:.4f}",
                    {
                        "step": event["step"],
                        "total_steps": event["total_steps"],
                        "epoch": event["epoch"],
                        "train_loss": event["loss"],
                    },
                )
            elif kind == "eval" and event["stage"] == "before":
                await self.jobs.add_metrics(job.id, eval_message("Base model", event["base"]), event["base"])
                if event["current"]:
                    await self.jobs.add_metrics(
                        job.id, eval_message("Version served now", event["current"]), event["current"]
                    )
            elif kind == "eval":
                await self.jobs.add_metrics(job.id, eval_message("New version", event["new"]), event["new"])
            elif kind == "done":
                done = event
        code = await self._process.wait()
        self._process = None
        if code != 0 or done is None:
            lines = (folder / "worker.log").read_text(errors="replace").strip().splitlines()
            raise WorkerFailed(code, lines[-1] if lines else "")
        done["data_hash"] = data_hash(train)
        done["facts"], done["turns"] = taught.facts, taught.turns
        done["created"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        return done
