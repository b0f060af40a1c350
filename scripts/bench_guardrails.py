"""Guardrails section of `make bench`: streaming throughput and time to first token, policy on vs off."""

from __future__ import annotations

import statistics

# The default stream units (chunk_size 10, sliding_window 5) against a policy the bench essay keeps.
GUARDRAIL = {"guardrail_policy": "Never mention competitor products.", "chunk_size": 10, "sliding_window": 5}


def pooled(rounds: list[dict]) -> dict:
    return {
        "output_tok_per_s": statistics.median(r["output_tok_per_s"] for r in rounds),
        "ttft_p50_ms": statistics.median(r["ttft_p50_ms"] for r in rounds),
        "output_tokens": sum(r["output_tokens"] for r in rounds),
        "errors": sum(r["errors"] for r in rounds),
    }


def print_guardrails_table(rounds: dict[str, list[dict]]) -> None:
    print(
        "\nguardrails: streaming with a policy (chunk_size 10, sliding_window 5) vs without, same server"
        " (target: TTFT on/off at most 1.5x; the first unit is one chunk, then units ramp up to chunk_size)"
    )
    print(
        f"{'clients':>7} {'tok/s off':>10} {'tok/s on':>9} {'ratio':>6} {'TTFT off ms':>12} {'TTFT on ms':>11} {'ratio':>6}"
    )
    for key in sorted(k for k in rounds if k.startswith("off-")):
        concurrency = key.removeprefix("off-c")
        off, on = pooled(rounds[key]), pooled(rounds[f"on-c{concurrency}"])
        print(
            f"{concurrency:>7} {off['output_tok_per_s']:>10.1f} {on['output_tok_per_s']:>9.1f} "
            f"{on['output_tok_per_s'] / off['output_tok_per_s']:>5.2f}x {off['ttft_p50_ms']:>12.0f} "
            f"{on['ttft_p50_ms']:>11.0f} {on['ttft_p50_ms'] / off['ttft_p50_ms']:>5.2f}x"
        )
        if on["output_tokens"] < off["output_tokens"]:
            print(f"    note: {off['output_tokens'] - on['output_tokens']} fewer tokens with the policy (cut off)")
