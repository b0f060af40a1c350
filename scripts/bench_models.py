"""`models` section of `make bench`: several models behind one server (issue 17).

One server serves the default model (loaded at start) and a second registry entry (`load: on_demand`, a short
keep_alive). Measured: the cold first request of the second model (its engine starts), its wake after an idle
unload (or vLLM sleep mode on a GPU), each beside a warm request (the baseline); then throughput of each model
alone and of both together on the same server (round-robin over the two names), with ratios.
"""

from __future__ import annotations

import asyncio
import statistics
import time
from collections.abc import Callable
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

import httpx
import yaml

KEEP_ALIVE_S = 3  # the second model's idle time before it is unloaded (or put to sleep)


def models_config(config_path: Path, first: str, second: str, out: Path, binds: tuple[str, str] | None = None) -> Path:
    """models.yaml with the second entry loaded on demand and unloaded after KEEP_ALIVE_S idle seconds;
    `binds`: each engine's CPU cores (VLLM_CPU_OMP_THREADS_BIND), else vLLM's auto binding for both."""
    raw = yaml.safe_load(config_path.read_text())
    for entry in raw["models"]:
        names = (entry["name"], *entry.get("aliases", ()))
        if second in names:
            entry.update(load="on_demand", keep_alive=KEEP_ALIVE_S)
        if binds is not None and (first in names or second in names):
            entry["cpu_threads_bind"] = binds[0] if first in names else binds[1]
    out.write_text(yaml.safe_dump(raw))
    return out


def state_of(client: httpx.Client, model: str) -> str:
    return client.get("/health").json()["models"][model]["state"]


def wait_for_state(client: httpx.Client, model: str, state: str, timeout_s: float = 120) -> None:
    deadline = time.monotonic() + timeout_s
    while state_of(client, model) != state:
        if time.monotonic() > deadline:
            raise RuntimeError(f"{model} did not become {state} in {timeout_s}s")
        time.sleep(0.2)


def timed_request(client: httpx.Client, model: str, **extra: object) -> float:
    body = {"model": model, "messages": [{"role": "user", "content": "Say hello."}], "max_tokens": 8, **extra}
    start = time.perf_counter()
    response = client.post("/v1/chat/completions", json=body)
    response.raise_for_status()
    return time.perf_counter() - start


def bench_models(
    serve: Callable[[str, dict[str, str]], AbstractContextManager[Any]],
    run_level: Callable[..., Any],
    api_key: str,
    first: str,
    second: str,
    config: Path,
    output_tokens: int,
    concurrency: int = 4,
    wakes: int = 3,
    split_config: Path | None = None,
) -> dict:
    """`serve(kind, env)`: our server, started with `env` and healthy; `run_level`: bench.py's load generator."""
    env = {"LLM_SERVER_CONFIG": str(config), "LLM_SERVER_MODEL": f"{first},{second}"}
    report: dict = {"first": first, "second": second, "keep_alive_s": KEEP_ALIVE_S, "concurrency": concurrency}
    with serve("ours-models", env) as server:
        headers = {"Authorization": f"Bearer {api_key}"}
        with httpx.Client(base_url=server.base_url, headers=headers, timeout=600) as client:
            assert state_of(client, second) == "unloaded"
            report["cold_first_request_s"] = round(timed_request(client, second), 3)
            warm = [timed_request(client, second) for _ in range(5)]
            report["warm_request_s"] = round(statistics.median(warm), 3)
            wake_times = []
            for _ in range(wakes):
                wait_for_state(client, second, "sleeping" if _sleeps(client, second) else "unloaded")
                wake_times.append(timed_request(client, second))
            report["wake_request_s"] = [round(value, 3) for value in wake_times]
            report["wake_median_s"] = round(statistics.median(wake_times), 3)
            report["sleep_kind"] = "vLLM sleep mode" if _sleeps(client, second) else "full unload (no sleep mode)"
            report["loads"] = client.get("/health").json()["models"][second]["loads"]
            never = {"keep_alive": -1}  # held awake for the throughput runs
            timed_request(client, second, **never)
        requests = max(3 * concurrency, 8)

        def level(models: list[str]) -> dict:
            return asyncio.run(
                run_level(server.base_url, models, concurrency, requests, output_tokens, {"keep_alive": -1})
            ).summary()

        report["alone"] = {first: level([first]), second: level([second])}
        report["together"] = level([first, second])
    _ratios(report, first, second)
    if split_config is not None:  # the same throughput runs, each engine bound to a core of its own
        split: dict = {"config": str(split_config)}
        with serve("ours-models-split", {**env, "LLM_SERVER_CONFIG": str(split_config)}) as server:

            def split_level(models: list[str]) -> dict:
                return asyncio.run(
                    run_level(server.base_url, models, concurrency, requests, output_tokens, {"keep_alive": -1})
                ).summary()

            split["alone"] = {first: split_level([first]), second: split_level([second])}
            split["together"] = split_level([first, second])
        _ratios(split, first, second)
        report["split_cores"] = split
    return report


def _ratios(report: dict, first: str, second: str) -> None:
    alone = [report["alone"][name]["output_tok_per_s"] for name in (first, second)]
    together = report["together"]["output_tok_per_s"]
    report["together_vs_mean_alone"] = round(together / statistics.mean(alone), 3)
    report["together_vs_sum_alone"] = round(together / sum(alone), 3)


def _sleeps(client: httpx.Client, model: str) -> bool:
    """Whether the platform has vLLM's sleep mode (the server says `sleeping` rather than `unloaded` after idle)."""
    return client.get("/health").json().get("sleep_mode", False)


def print_models_table(report: dict) -> None:
    first, second = report["first"], report["second"]
    warm = report["warm_request_s"]
    print(
        f"\nmodels: {first} (loaded at start) + {second} (on demand, keep_alive {report['keep_alive_s']}s) on one"
        f" server; 8-token chat requests; idle: {report['sleep_kind']}"
    )
    print(f"{'request to ' + second:<34} {'seconds':>8} {'vs warm':>8}")
    print(f"{'warm (baseline, median of 5)':<34} {warm:>8.3f} {1.0:>7.2f}x")
    cold = report["cold_first_request_s"]
    print(f"{'cold first request (engine start)':<34} {cold:>8.3f} {cold / warm:>7.1f}x")
    wake = report["wake_median_s"]
    print(
        f"{'after idle (median of ' + str(len(report['wake_request_s'])) + ')':<34} {wake:>8.3f} {wake / warm:>7.1f}x"
    )
    runs = [("vLLM auto CPU binding (both engines on one core)", report)]
    if "split_cores" in report:
        runs.append(("cpu_threads_bind: one core per engine", report["split_cores"]))
    for title, run in runs:
        print(f"\nthroughput, {report['concurrency']} streaming clients, output tok/s; {title}")
        print(f"{'served':<40} {'tok/s':>8} {'TTFT p50 ms':>12}")
        for name, row in run["alone"].items():
            print(f"{name + ' alone':<40} {row['output_tok_per_s']:>8.1f} {row['ttft_p50_ms']:>12.0f}")
        together = run["together"]
        print(
            f"{'both together (round-robin)':<40} {together['output_tok_per_s']:>8.1f} {together['ttft_p50_ms']:>12.0f}"
        )
        print(
            f"together / mean alone: {run['together_vs_mean_alone']:.2f}x;"
            f" together / sum alone: {run['together_vs_sum_alone']:.2f}x"
        )
