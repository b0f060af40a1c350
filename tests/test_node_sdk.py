"""The official Node `openai` SDK against the real server (tests/node/smoke.mjs)."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

from tests.conftest import API_KEY, MODEL, RunningServer

NODE_DIR = Path(__file__).resolve().parent / "node"


def test_node_sdk_plain_streamed_and_tool_call(server: RunningServer) -> None:
    assert (NODE_DIR / "node_modules" / "openai").is_dir(), "run `make install` (npm ci in tests/node)"
    result = subprocess.run(
        ["node", "smoke.mjs"],
        cwd=NODE_DIR,
        env=dict(os.environ, BASE_URL=f"{server.base_url}/v1", API_KEY=API_KEY, MODEL=MODEL),
        capture_output=True,
        text=True,
        timeout=300,
        check=False,  # asserted below, with node's stderr
    )
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert "Paris" in report["plain"]
    assert report["tool_call"]["name"] == "get_weather"
