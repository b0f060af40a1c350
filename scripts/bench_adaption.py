"""Adaption benchmark pieces for scripts/bench.py (`--sections adaption`).

- training time per 100 examples: the real worker process (`server.adaption.worker`)
  on 100 training examples built from memories, one epoch and the configured epochs;
- serving throughput while a fine-tuning job trains vs idle, same load, same server.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import httpx

from server.adaption.dataset import MemoryRecord, examples_from_memories
from server.config import Settings
from tests.memory_corpus import distractors

GROUP = "bench-adaption"


def training_time(settings: Settings, examples: int = 100) -> dict:
    """Seconds the worker takes for `examples` training examples (plus its fixed cost: load, evals, save)."""
    memories = [MemoryRecord(text, "fact") for text in distractors(examples + 20)]
    built = examples_from_memories(memories)
    report: dict = {"train_examples": examples, "held_out_examples": 20}
    for epochs in sorted({1, settings.adaption.epochs}):
        hyper = {
            **settings.adaption.model_dump(),
            "target_modules": list(settings.adaption.target_modules),
            "epochs": epochs,
        }
        with tempfile.TemporaryDirectory() as folder:
            spec = {
                "model_dir": str(settings.served.source_path),
                "current_adapter": None,
                "cpu_threads": settings.adaption.cpu_threads,
                "gpu_memory_fraction": settings.adaption.gpu_memory_fraction,
                "hyperparameters": hyper,
                "train": built[:examples],
                "held_out": built[examples:],
                "output_dir": str(Path(folder) / "adapter"),
            }
            (Path(folder) / "spec.json").write_text(json.dumps(spec))
            started = time.perf_counter()
            output = subprocess.run(
                [sys.executable, "-m", "server.adaption.worker", str(Path(folder) / "spec.json")],
                capture_output=True, text=True, check=True,
            ).stdout  # fmt: skip
            wall = time.perf_counter() - started
        done = json.loads(output.strip().splitlines()[-1])
        report[f"epochs_{epochs}"] = {
            "wall_s": round(wall, 1),
            "steps": done["steps"],
            "train_loss": round(done["train_loss"], 4),
            "eval_loss": round(done["eval_loss"], 4),
            "base_eval_loss": round(done["base_eval_loss"], 4),
        }
        print(f"adaption: {examples} examples x {epochs} epoch(s): {wall:.1f}s", flush=True)
    return report


def throughput_while_training(
    base_url: str, api_key: str, model: str, measure: Callable[[], dict], memories: int = 300
) -> dict:
    """`measure()` (a load run returning its summary) idle, then while a fine-tuning job is running."""
    headers = {"Authorization": f"Bearer {api_key}"}
    idle = measure()
    with httpx.Client(base_url=base_url, headers=headers, timeout=300) as client:
        texts = distractors(memories)
        for start in range(0, len(texts), 256):
            client.post(f"/v1/memory/{GROUP}/memories", json={"text": texts[start : start + 256]}).raise_for_status()
        job = client.post(
            "/v1/fine_tuning/jobs",
            json={"model": model, "training_file": f"memory:{GROUP}", "lora_name": "bench-adapter"},
        ).json()
        while client.get(f"/v1/fine_tuning/jobs/{job['id']}").json()["status"] == "queued":
            time.sleep(0.5)
        training = measure()
        still_running = client.get(f"/v1/fine_tuning/jobs/{job['id']}").json()["status"] == "running"
    return {
        "idle": idle,
        "training": training,
        "job_running_throughout": still_running,
        "throughput_ratio_training_over_idle": round(training["output_tok_per_s"] / idle["output_tok_per_s"], 3),
    }


def print_adaption_table(report: dict) -> None:
    timing = report["training_time"]
    print(f"\nadaption training (worker process, {timing['train_examples']} examples, CPU threads per models.yaml)")
    for key, run in timing.items():
        if key.startswith("epochs_"):
            print(
                f"  {key.removeprefix('epochs_')} epoch(s): {run['wall_s']:.1f}s, {run['steps']} steps, held-out loss "
                f"{run['base_eval_loss']:.3f} -> {run['eval_loss']:.3f}"
            )
    serving = report["serving"]
    print(
        f"serving during training: {serving['training']['output_tok_per_s']:.1f} vs idle {serving['idle']['output_tok_per_s']:.1f}"
        f" tok/s (ratio {serving['throughput_ratio_training_over_idle']:.3f};"
        f" job running throughout: {serving['job_running_throughout']})"
    )
