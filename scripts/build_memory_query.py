"""Train memory's query encoder (`builtin:memory-query`) once, into ~/.cache/llm-server/memory.

Deterministic, from server/memory/data/query_pairs.jsonl; an up-to-date build is kept.

    python scripts/build_memory_query.py
"""

from __future__ import annotations

from server.memory.query_encoder import builtin_query_encoder

if __name__ == "__main__":
    print(f"memory query encoder: {builtin_query_encoder()}")
