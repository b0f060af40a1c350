"""A full data directory (a small tmpfs, mounted as root): writes answer 503 `storage_full`, reads and generation
keep working, nothing is corrupted, and writes resume once space is freed. The server is a second one of its own."""

from __future__ import annotations

import errno
import os
import sqlite3
import subprocess
from collections.abc import Iterator
from contextlib import closing
from pathlib import Path

import httpx
import pytest

from tests.conftest import API_KEY, MODEL, RunningServer, assert_error, server_env, start_server, wait_until

AUTH = {"Authorization": f"Bearer {API_KEY}"}
GROUP = "full-disk"


@pytest.fixture
def small_data_dir(tmp_path: Path) -> Iterator[Path]:
    """A 64 MiB tmpfs for the server's databases (the suite runs as root, as `make test` does here)."""
    mount_point = tmp_path / "data"
    mount_point.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64m", "tmpfs", str(mount_point)], check=True)
    yield mount_point
    subprocess.run(["umount", "-l", str(mount_point)], check=True)


def fill(directory: Path) -> Path:
    """Write a file until the filesystem is full, down to its last bytes; it is the space to free later."""
    filler = directory / "filler"
    descriptor = os.open(filler, os.O_WRONLY | os.O_CREAT)
    try:
        for size in (1 << 20, 1 << 12, 1):
            while True:
                try:
                    os.write(descriptor, b"\0" * size)
                except OSError as exc:
                    assert exc.errno == errno.ENOSPC
                    break
    finally:
        os.close(descriptor)
    return filler


def test_a_full_data_directory_refuses_writes_with_503_and_recovers(tmp_path: Path, small_data_dir: Path) -> None:
    env = server_env(
        LLM_SERVER_API_KEYS=API_KEY,
        LLM_SERVER_DATA_DIR=str(small_data_dir),
        LLM_SERVER_ADAPTERS_DIR=str(tmp_path / "adapters"),
    )
    server = start_server(tmp_path / "server.log", env=env)
    try:
        with httpx.Client(base_url=server.base_url, headers=AUTH, timeout=120) as http:
            run(server, http, small_data_dir)
    finally:
        server.stop()
    for database in small_data_dir.glob("*.sqlite3"):
        with closing(sqlite3.connect(database)) as db:
            assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok", database


def run(server: RunningServer, http: httpx.Client, data_dir: Path) -> None:
    added = http.post(f"/v1/memory/{GROUP}/memories", json={"text": "The blue door opens at nine.", "user_goal": "g"})
    assert added.status_code == 200, added.text
    filler = fill(data_dir)

    # Writes: a clear 503, not a 500.
    refused = http.post(f"/v1/memory/{GROUP}/memories", json={"text": "The red door opens at ten."})
    error = assert_error(refused, 503, "storage_full", None)
    assert "data directory is full" in error["message"] and refused.headers["retry-after"]
    assert_error(http.post("/v1/keys", json={"name": "while-full"}), 503, "storage_full", None)

    # Reads and generation keep working.
    listed = http.get(f"/v1/memory/{GROUP}/memories")
    assert listed.status_code == 200 and [m["text"] for m in listed.json()["data"]] == ["The blue door opens at nine."]
    chat = http.post(
        "/v1/chat/completions",
        json={"model": MODEL, "messages": [{"role": "user", "content": "Say hello."}], "max_tokens": 8},
    )
    assert chat.status_code == 200, chat.text
    assert chat.json()["usage"]["completion_tokens"] > 0
    assert httpx.get(f"{server.base_url}/health", timeout=10).status_code == 200
    assert "usage store: writing" in server.log()  # the usage write failed, was logged and kept

    # Space returns: writes resume, and the usage record kept meanwhile is written.
    filler.unlink()
    resumed = http.post(f"/v1/memory/{GROUP}/memories", json={"text": "The red door opens at ten."})
    assert resumed.status_code == 200, resumed.text
    assert http.post("/v1/keys", json={"name": "after"}).status_code == 201
    request_id = chat.headers["x-request-id"]
    assert wait_until(lambda: http.get(f"/v1/usage/requests/{request_id}").status_code == 200, timeout_s=90)
    texts = sorted(m["text"] for m in http.get(f"/v1/memory/{GROUP}/memories").json()["data"])
    assert texts == ["The blue door opens at nine.", "The red door opens at ten."]
    found = http.post(f"/v1/memory/{GROUP}/search", json={"query": "When does the red door open?"}).json()["data"]
    assert found and found[0]["memory"]["text"] == "The red door opens at ten."
