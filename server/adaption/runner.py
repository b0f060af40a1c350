"""The adaption service: counts calls, queues jobs, runs the training worker process, promotes what beats the current adapter.

One job trains at a time, in a child process (`server.adaption.worker`), so the
server's event loop and engine never wait on training. A job left `running` by
a restart is queued again and trained from the start (training is short and
deterministic); the events say so.

STATUS: work in progress on branch wip/adaption (issue 7) - not wired into the app yet.
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
from server.adaption.jobs import Job, JobStore

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


class AdaptionRunner:
    def __init__(self, jobs: JobStore, work_dir: Path, worker_command: list[str] | None = None) -> None:
        self.jobs = jobs
        self.work_dir = work_dir
        self.worker_command = worker_command or [sys.executable, "-m", "server.adaption.worker"]
        self._queue: asyncio.Queue[str] = asyncio.Queue()
        self._process: asyncio.subprocess.Process | None = None
        self._running_job: str | None = None

    async def run_worker(self, job: Job, memories: list[MemoryRecord], spec_base: dict) -> dict:
        """Train `job` in a child process; its progress becomes job events. Returns the worker's `done` fields."""
        hyper = job.hyperparameters
        train, held_out = split_examples(examples_from_memories(memories), hyper["held_out_fraction"], hyper["max_examples"])
        if not train or not held_out:
            raise ValueError(f"memory group {job.memory_group!r} gives {len(train) + len(held_out)} examples; at least 2 are needed")
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
                await self.jobs.add_metrics(job.id, f"Step {event['step']}/{event['total_steps']}: training loss={event['loss']:.4f}", event)
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
