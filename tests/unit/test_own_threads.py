"""Our own per-request models (embedder, guardrail checker) run on the torch thread count the config gives."""

from __future__ import annotations

import subprocess
import sys


def test_own_threads_sets_torch_intra_op_threads_for_the_process() -> None:
    # In a fresh interpreter: the thread count is process-wide and the test process's own must stay as it is.
    code = (
        "import asyncio, torch\n"
        "from server.app import own_threads\n"
        "async def main():\n"
        "    async with own_threads(1):\n"
        "        inside = torch.get_num_threads()\n"
        "        torch.ones(256, 256) @ torch.ones(256, 256)\n"
        "    print(inside, torch.get_num_threads())\n"
        "asyncio.run(main())\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120)
    assert result.stdout.split() == ["1", "1"]
