"""Load benchmark for scripts/bench.py (`--sections load`): many concurrent streams, clients that vanish.

One server of ours, after a warm-up. Then, all at once: `streams` clients that read
their stream to the end, `vanishing` clients that close their connection after a few
chunks, and `stalled` clients that stop reading after the first chunk and close later.
Reported: errors (anything but a full stream for the readers), the engine's running
requests once the load is over (must be 0: every request finished or aborted), and the
server's resident memory (process tree) before, at peak and after, beside the baseline of
the same streams with no one vanishing.
"""

from __future__ import annotations

import asyncio
import time

import httpx
import psutil

PROMPT = "Write a short story about a lighthouse keeper and a storm."


def tree_rss_mib(pid: int) -> float:
    """Resident memory of the server and its children (engine core, workers), MiB."""
    try:
        root = psutil.Process(pid)
        processes = [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return 0.0
    total = 0
    for process in processes:
        try:
            total += process.memory_info().rss
        except psutil.NoSuchProcess:
            pass
    return total / (1 << 20)


async def _stream(client: httpx.AsyncClient, model: str, tokens: int, *, stop_after: int | None, stall_s: float) -> str:
    """'ok' for a complete stream, 'left' for a client that went away on purpose, else the error."""
    body = {
        "model": model,
        "messages": [{"role": "user", "content": PROMPT}],
        "max_tokens": tokens,
        "min_tokens": tokens,
        "temperature": 0.8,
        "stream": True,
    }
    try:
        async with client.stream("POST", "/v1/chat/completions", json=body) as response:
            if response.status_code != 200:
                return f"status {response.status_code}"
            chunks = 0
            async for line in response.aiter_lines():
                if not line.startswith("data: "):
                    continue
                if '"error"' in line:
                    return f"error event {line[:200]}"
                chunks += 1
                if stop_after is not None and chunks >= stop_after:
                    if stall_s:
                        await asyncio.sleep(stall_s)  # stops reading; the server's buffers fill
                    return "left"  # leaving the block closes the connection mid-stream
                if line == "data: [DONE]":
                    return "ok"
            return "ended without [DONE]"
    except httpx.HTTPError as exc:
        return f"{type(exc).__name__}: {exc}"


async def _round(
    base_url: str, api_key: str, model: str, pid: int, streams: int, vanishing: int, stalled: int, tokens: int
) -> dict:
    headers = {"Authorization": f"Bearer {api_key}"}
    total = streams + vanishing + stalled
    limits = httpx.Limits(max_connections=total + 8, max_keepalive_connections=total + 8)
    peak = tree_rss_mib(pid)
    async with httpx.AsyncClient(base_url=base_url, headers=headers, limits=limits, timeout=900) as client:
        jobs = [_stream(client, model, tokens, stop_after=None, stall_s=0) for _ in range(streams)]
        jobs += [_stream(client, model, tokens, stop_after=3, stall_s=0) for _ in range(vanishing)]
        jobs += [_stream(client, model, tokens, stop_after=1, stall_s=10) for _ in range(stalled)]
        started = time.perf_counter()
        tasks = [asyncio.create_task(job) for job in jobs]
        while not all(task.done() for task in tasks):
            peak = max(peak, tree_rss_mib(pid))
            await asyncio.sleep(0.5)
        wall = time.perf_counter() - started
        outcomes = [task.result() for task in tasks]
        readers, leavers = outcomes[:streams], outcomes[streams:]
        errors = [o for o in readers if o != "ok"] + [o for o in leavers if o not in ("left", "ok")]
        running = None
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:  # aborts reach the engine within moments
            running = (await client.get("/health")).json().get("running_requests")
            if running == 0:
                break
            await asyncio.sleep(0.5)
    return {
        "streams": streams,
        "vanishing": vanishing,
        "stalled": stalled,
        "completed": readers.count("ok"),
        "errors": len(errors),
        "error_samples": errors[:5],
        "running_after": running,
        "wall_s": round(wall, 1),
        "tokens_per_s": round(readers.count("ok") * tokens / wall, 1),
        "rss_peak_mib": round(peak),
    }


def load_test(
    base_url: str,
    api_key: str,
    model: str,
    pid: int,
    streams: int = 200,
    vanishing: int = 20,
    stalled: int = 5,
    tokens: int = 32,
) -> dict:
    async def run() -> dict:
        async with httpx.AsyncClient(base_url=base_url, headers={"Authorization": f"Bearer {api_key}"}) as client:
            for _ in range(3):  # warm-up: the first requests allocate what the server keeps
                await _stream(client, model, 8, stop_after=None, stall_s=0)
        await asyncio.sleep(2)
        baseline_rss = tree_rss_mib(pid)
        plain = await _round(base_url, api_key, model, pid, streams, 0, 0, tokens)
        await asyncio.sleep(5)
        after_plain = tree_rss_mib(pid)
        load = await _round(base_url, api_key, model, pid, streams, vanishing, stalled, tokens)
        await asyncio.sleep(5)
        return {
            "rss_baseline_mib": round(baseline_rss),
            "plain": plain | {"rss_after_mib": round(after_plain)},
            "load": load | {"rss_after_mib": round(tree_rss_mib(pid))},
        }

    return asyncio.run(run())


def print_load_table(report: dict) -> None:
    print(f"\nload: {report['load']['streams']} concurrent streams; baseline = same streams, no one vanishing")
    print(f"  server memory before any load: {report['rss_baseline_mib']} MiB (server + engine processes)")
    header = f"  {'':34} {'baseline':>12} {'with vanishing':>15}"
    print(header)
    plain, load = report["plain"], report["load"]
    rows = [
        (
            "clients (read / vanish / stall)",
            f"{plain['streams']}/0/0",
            f"{load['streams']}/{load['vanishing']}/{load['stalled']}",
        ),
        ("complete streams", plain["completed"], load["completed"]),
        ("errors", plain["errors"], load["errors"]),
        ("engine running requests after", plain["running_after"], load["running_after"]),
        ("wall time, s", plain["wall_s"], load["wall_s"]),
        ("output tokens/s (complete streams)", plain["tokens_per_s"], load["tokens_per_s"]),
        ("memory peak, MiB", plain["rss_peak_mib"], load["rss_peak_mib"]),
        ("memory after, MiB", plain["rss_after_mib"], load["rss_after_mib"]),
    ]
    for name, base, value in rows:
        print(f"  {name:34} {base!s:>12} {value!s:>15}")
