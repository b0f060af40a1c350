"""The builtin checker's model: a sentence encoder read over the (policy, text) pair, mean-pooled, one logit.

all-MiniLM-L6-v2 was trained to mean-pool its token states into sentence
meaning; its CLS state and pooler were not trained, so a classifier over them
learns slowly. A guard directory holds `guard.json` (its base and window), the
fine-tuned encoder with its tokenizer, and `head.safetensors`, the logit's weights.
"""

from __future__ import annotations

import torch

GUARD_SPEC = "guard.json"
HEAD_FILE = "head.safetensors"


def pair_logits(encoder: torch.nn.Module, head: torch.nn.Linear, encoded: dict) -> torch.Tensor:
    """One logit per tokenized (policy, text) pair: the head over mean-pooled token states."""
    hidden = encoder(
        input_ids=encoded["input_ids"],
        attention_mask=encoded["attention_mask"],
        token_type_ids=encoded.get("token_type_ids"),
    ).last_hidden_state
    mask = encoded["attention_mask"].unsqueeze(-1).to(hidden.dtype)
    return head((hidden * mask).sum(1) / mask.sum(1)).squeeze(-1)
