"""Per-token log probabilities in OpenAI's shape, from vLLM's per-position dictionaries."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from vllm.logprobs import Logprob

# JSON has no -inf; OpenAI reports impossible tokens as -9999.0.
LOGPROB_FLOOR = -9999.0


@dataclass(frozen=True, slots=True)
class TopLogprob:
    token: str
    logprob: float
    bytes: list[int]


@dataclass(frozen=True, slots=True)
class TokenLogprob:
    token: str
    logprob: float
    bytes: list[int]
    top_logprobs: list[TopLogprob]


def _entry(token_id: int, logprob: Logprob) -> TopLogprob:
    token = logprob.decoded_token if logprob.decoded_token is not None else f"<token {token_id}>"
    return TopLogprob(token=token, logprob=max(logprob.logprob, LOGPROB_FLOOR), bytes=list(token.encode("utf-8")))


def token_logprobs(
    token_ids: Sequence[int], positions: Sequence[Mapping[int, Logprob]], top_n: int
) -> list[TokenLogprob]:
    """One entry per sampled token; each position's map holds the sampled token and the top-ranked ones."""
    entries = []
    for token_id, position in zip(token_ids, positions, strict=False):
        sampled = _entry(token_id, position[token_id])
        ranked = sorted(
            (item for item in position.items() if item[1].rank is not None),
            key=lambda item: item[1].rank,  # type: ignore[arg-type, return-value]
        )
        top = [_entry(other_id, other) for other_id, other in ranked[:top_n]]
        entries.append(TokenLogprob(sampled.token, sampled.logprob, sampled.bytes, top))
    return entries
