"""Train the embedded guardrail checker (`builtin:policy-guard`) once, into ~/.cache/llm-server/guardrails.

Deterministic, from server/guardrails/data/train.jsonl; an up-to-date build is kept.

    python scripts/build_guard.py
"""

from __future__ import annotations

from server.guardrails.training import builtin_guard

if __name__ == "__main__":
    print(f"guardrail checker: {builtin_guard()}")
