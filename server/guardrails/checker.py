"""`check(policy, text) -> Verdict`: one interface, backends chosen in models.yaml (`guardrails:`).

- `classifier`: a cross-encoder reading (policy, text): the builtin format (a
  mean-pooled sentence encoder and one logit, trained by `training.py`), or any
  sequence-classification model with one logit or a violation/entailment label.
- `llama-guard`: a causal safety model in Llama Guard 3's prompt format, the policy
  as its one custom category; the score is P("unsafe") for the first answer token.

Scoring is blocking model work: it runs on one thread, batched across concurrent
checks (`ThreadBatcher`). Text longer than the model's window is checked in
overlapping segments and scores the most violating one.

With `evidence` on, what the policy names explicitly decides first (`evidence.py`:
named competitors and stated secrets in the text, credentials of a kind it names, a dosage, personal data,
profanity, the language of each sentence); the model scores the rest, with the
policy's own brand masked. Scores are calibrated: the raw score at the configured
threshold (chosen on the dev set, never the test set) reads 0.5; the threshold is the one of the policy's
kind (`kinds.py`, inferred from its words; `kind_thresholds`), else the global `threshold`.
"""

from __future__ import annotations

import json
import time
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import torch
from transformers import (
    AutoModel,
    AutoModelForCausalLM,
    AutoModelForSequenceClassification,
    AutoTokenizer,
    PreTrainedTokenizerBase,
)

from server.batching import ThreadBatcher
from server.config import GuardrailSettings, PolicyKind
from server.guardrails.encoder import GUARD_SPEC, HEAD_FILE, pair_logits
from server.guardrails.evidence import (
    Evidence,
    Finding,
    PolicyTerms,
    evidence,
    masked_own_brand,
    policy_terms,
    redacted,
)
from server.guardrails.kinds import GENERAL, kind_threshold, policy_kind
from server.guardrails.topics import TopicJudge, allowed_topic
from server.guardrails.training import BUILTIN_NAME, builtin_guard
from server.model_sources import resolve_packaged
from server.observability.metrics import Metrics

BUILTIN_PREFIX = "builtin:"
SEGMENT_OVERLAP_TOKENS = 32  # a violation cut by a segment boundary is still whole in one segment
CLASSIFIER_MAX_TOKENS = 256
VIOLATION_LABELS = ("violation", "violates", "unsafe", "entailment", "flagged")
EVIDENCE_SCORES = {Evidence.VIOLATES: 0.99, Evidence.COMPLIES: 0.01}
NO_TERMS = PolicyTerms()
OFF_TOPIC = Finding(Evidence.VIOLATES, "a sentence is about another topic than the one the policy allows")
PARSED_POLICIES = 256  # a stream checks one policy many times: it is parsed once


@dataclass(frozen=True, slots=True)
class Verdict:
    flagged: bool
    score: float  # 0..1, how surely the text violates the policy
    reason: str
    kind: PolicyKind = GENERAL  # the policy's kind, inferred from its words: it chose the threshold
    # Decided by what the policy names explicitly (`evidence.py`: a forbidden name, a dosage, a credential, ...),
    # not by a model's judgement: a stream acts on such a verdict however short the window it read.
    explicit: bool = False


def verdict_reason(policy: str, flagged: bool, because: str | None = None) -> str:
    """A short reason that quotes the policy (the caller's own words), never the checked text
    (nor a secret the policy states: `because` names only the kind of evidence)."""
    quoted = policy if len(policy) <= 120 else policy[:117] + "..."
    reason = (
        f'The output violates the policy "{quoted}"' if flagged else f'The output complies with the policy "{quoted}"'
    )
    return f"{reason}: {because}." if because else f"{reason}."


def calibrated(score: float, threshold: float) -> float:
    """The raw score rescaled piecewise-linearly so that `threshold` reads 0.5 (and 0 and 1 stay put)."""
    if score < threshold:
        return 0.5 * score / threshold
    return 0.5 + 0.5 * (score - threshold) / (1.0 - threshold)


class PairScorer(Protocol):
    def score_pairs(self, pairs: list[tuple[str, str]]) -> list[float]:
        """Blocking: one violation probability per (policy, text) pair."""
        ...


class Checker:
    """Checks text against policies with one scorer, off the event loop, in batches."""

    def __init__(
        self,
        name: str,
        scorer: PairScorer,
        threshold: float,
        max_batch: int,
        use_evidence: bool,
        metrics: Metrics | None = None,
        kind_thresholds: dict[PolicyKind, float] | None = None,
        topics: TopicJudge | None = None,
    ) -> None:
        self.metrics = metrics if metrics is not None else Metrics()  # the app's, set when it wires the checker
        self.name = name
        self.threshold = threshold
        self.kind_thresholds = dict(kind_thresholds or {})
        self.topics = topics  # with evidence on: off-topic sentences under "only X" policies
        self.use_evidence = use_evidence
        self._parsed: OrderedDict[str, tuple[PolicyTerms, PolicyKind, str | None]] = OrderedDict()
        self._batcher: ThreadBatcher[tuple[str, str], float] = ThreadBatcher(
            scorer.score_pairs, max_batch, "guardrails"
        )

    async def check(self, policy: str, text: str) -> Verdict:
        return (await self.check_many(policy, [text]))[0]

    async def check_many(self, policy: str, texts: Sequence[str]) -> list[Verdict]:
        if not texts:
            return []
        started = time.perf_counter()
        terms, kind, topic = self.parsed(policy)
        shown = redacted(policy, terms)  # the policy as a reason quotes it
        if not self.use_evidence:
            terms, topic = NO_TERMS, None
        findings = [evidence(terms, text) for text in texts]
        undecided = [index for index, finding in enumerate(findings) if finding is None]
        if topic is not None and self.topics is not None and undecided:
            strays = await self.topics.off_topic(topic, [texts[index] for index in undecided])
            for index, stray in zip(undecided, strays):
                findings[index] = OFF_TOPIC if stray else None
            undecided = [index for index, finding in enumerate(findings) if finding is None]
        pairs = [(policy, masked_own_brand(terms, texts[index])) for index in undecided]
        model_scores = dict(zip(undecided, await self._batcher.run(pairs))) if pairs else {}
        verdicts = [
            self.verdict(shown, model_scores[index], kind)
            if finding is None
            else evidence_verdict(shown, finding, kind)
            for index, finding in enumerate(findings)
        ]
        violations = sum(verdict.flagged for verdict in verdicts)
        self.metrics.guardrail_checked(self.name, violations, len(verdicts) - violations, time.perf_counter() - started)
        return verdicts

    def parsed(self, policy: str) -> tuple[PolicyTerms, PolicyKind, str | None]:
        """The policy's explicit terms, its kind and the topic it confines replies to, parsed once per policy
        (the latest `PARSED_POLICIES` kept)."""
        parsed = self._parsed.pop(policy, None) or (policy_terms(policy), policy_kind(policy), allowed_topic(policy))
        self._parsed[policy] = parsed
        if len(self._parsed) > PARSED_POLICIES:
            self._parsed.popitem(last=False)
        return parsed

    def verdict(self, policy: str, raw_score: float, kind: PolicyKind = GENERAL) -> Verdict:
        """`policy` as the reason quotes it; `raw_score` the model's, judged at its kind's threshold."""
        score = calibrated(raw_score, kind_threshold(kind, self.kind_thresholds, self.threshold))
        flagged = score >= 0.5
        return Verdict(flagged, round(float(score), 4), verdict_reason(policy, flagged), kind)

    async def close(self) -> None:
        await self._batcher.close()


def evidence_verdict(policy: str, finding: Finding, kind: PolicyKind = GENERAL) -> Verdict:
    flagged = finding.evidence is Evidence.VIOLATES
    reason = verdict_reason(policy, flagged, finding.because)
    return Verdict(flagged, EVIDENCE_SCORES[finding.evidence], reason, kind, explicit=finding is not OFF_TOPIC)


class ClassifierScorer:
    """(policy, text) -> sigmoid(logit), or the violation label's softmax probability."""

    def __init__(self, path: str, quantize: bool) -> None:
        self.tokenizer = AutoTokenizer.from_pretrained(path)
        self.model = int8_linears(AutoModelForSequenceClassification.from_pretrained(path).eval(), quantize)
        labels = {name.lower(): index for index, name in self.model.config.id2label.items()}
        self.violation_index = next((labels[name] for name in VIOLATION_LABELS if name in labels), None)
        if self.model.config.num_labels > 1 and self.violation_index is None:
            raise ValueError(f"classifier {path} has no label among {VIOLATION_LABELS}")
        self.max_tokens = min(self.tokenizer.model_max_length, CLASSIFIER_MAX_TOKENS)

    @torch.inference_mode()
    def score_pairs(self, pairs: list[tuple[str, str]]) -> list[float]:
        encoded, owner = segments(self.tokenizer, pairs, self.max_tokens)
        logits = self.model(**encoded).logits
        if self.model.config.num_labels == 1:
            segment_scores = torch.sigmoid(logits[:, 0])
        else:
            segment_scores = torch.softmax(logits, dim=-1)[:, self.violation_index]
        return worst_segment(segment_scores, owner, len(pairs))


class PolicyGuardScorer:
    """The builtin format (`encoder.py`): a fine-tuned sentence encoder, mean-pooled, one logit."""

    def __init__(self, path: str, quantize: bool) -> None:
        from safetensors.torch import load_file

        spec = json.loads((Path(path) / GUARD_SPEC).read_text())
        self.tokenizer = AutoTokenizer.from_pretrained(path)
        self.encoder = int8_linears(AutoModel.from_pretrained(path, add_pooling_layer=False).eval(), quantize)
        self.head = torch.nn.Linear(self.encoder.config.hidden_size, 1)
        self.head.load_state_dict(load_file(str(Path(path) / HEAD_FILE)))
        # Segments as long as the training texts: in a longer one, a short violation is diluted by the mean.
        self.max_tokens = int(spec["recipe"]["max_tokens"])

    @torch.inference_mode()
    def score_pairs(self, pairs: list[tuple[str, str]]) -> list[float]:
        encoded, owner = segments(self.tokenizer, pairs, self.max_tokens)
        segment_scores = torch.sigmoid(pair_logits(self.encoder, self.head, encoded))
        return worst_segment(segment_scores, owner, len(pairs))


def int8_linears(model: torch.nn.Module, quantize: bool) -> torch.nn.Module:
    """With `quantize`, linear layers run in int8 (dynamic quantization: CPU only, about 1.5x faster here)."""
    if not quantize:
        return model
    return torch.ao.quantization.quantize_dynamic(model, {torch.nn.Linear}, dtype=torch.qint8)


def segments(
    tokenizer: PreTrainedTokenizerBase, pairs: list[tuple[str, str]], max_tokens: int
) -> tuple[dict, list[int]]:
    """The pairs tokenized, long texts split into overlapping segments; and which pair each segment is of."""
    encoded = tokenizer(
        [policy for policy, _ in pairs],
        [text for _, text in pairs],
        truncation="only_second",
        max_length=max_tokens,
        stride=SEGMENT_OVERLAP_TOKENS,
        return_overflowing_tokens=True,
        padding=True,
        return_tensors="pt",
    )
    return encoded, encoded.pop("overflow_to_sample_mapping").tolist()


def worst_segment(segment_scores: torch.Tensor, owner: list[int], pairs: int) -> list[float]:
    """Per pair, the highest score among its segments."""
    scores = [0.0] * pairs
    for segment, pair in enumerate(owner):
        scores[pair] = max(scores[pair], float(segment_scores[segment]))
    return scores


def llama_guard_prompt(policy: str, text: str) -> str:
    """Llama Guard 3's task prompt with the policy as its only category, judging the agent's text."""
    return (
        "Task: Check if there is unsafe content in 'Agent' messages in conversations according to our "
        "safety policy with the below categories.\n\n"
        "<BEGIN UNSAFE CONTENT CATEGORIES>\n"
        f"S1: Breaking this rule: {policy}\n"
        "<END UNSAFE CONTENT CATEGORIES>\n\n"
        "<BEGIN CONVERSATION>\n\n"
        f"Agent: {text}\n\n"
        "<END CONVERSATION>\n\n"
        "Provide your safety assessment for ONLY THE LAST Agent message in the above conversation:\n"
        " - First line must read 'safe' or 'unsafe'.\n"
        " - If unsafe, a second line must include a comma-separated list of violated categories."
    )


class LlamaGuardScorer:
    """P("unsafe") against P("safe") for the first token of the model's answer."""

    def __init__(self, path: str) -> None:
        self.device = "cuda" if torch.cuda.is_available() else "cpu"
        self.tokenizer = AutoTokenizer.from_pretrained(path)
        self.tokenizer.padding_side = "left"  # the next-token logits are then at position -1 for every row
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        dtype = torch.bfloat16 if self.device == "cuda" else torch.float32
        self.model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype).to(self.device).eval()
        self.safe_id = self._first_token("safe")
        self.unsafe_id = self._first_token("unsafe")

    def _first_token(self, word: str) -> int:
        return self.tokenizer.encode(word, add_special_tokens=False)[0]

    @torch.inference_mode()
    def score_pairs(self, pairs: list[tuple[str, str]]) -> list[float]:
        prompts = [
            self.tokenizer.apply_chat_template(
                [{"role": "user", "content": llama_guard_prompt(policy, text)}],
                tokenize=False,
                add_generation_prompt=True,
            )
            for policy, text in pairs
        ]
        encoded = self.tokenizer(prompts, padding=True, add_special_tokens=False, return_tensors="pt").to(self.device)
        last = self.model(**encoded).logits[:, -1, :].float()
        pair_logits = torch.stack([last[:, self.safe_id], last[:, self.unsafe_id]], dim=-1)
        return torch.softmax(pair_logits, dim=-1)[:, 1].tolist()


def checker_model_path(source: str) -> str:
    """`builtin:policy-guard` (trained on first use), a local directory, or a Hugging Face repo id."""
    if source == BUILTIN_PREFIX + BUILTIN_NAME:
        return str(builtin_guard())
    if source.startswith(BUILTIN_PREFIX):
        raise ValueError(f"unknown builtin checker {source!r}; the builtin one is {BUILTIN_PREFIX}{BUILTIN_NAME}")
    return resolve_packaged(source)


def open_scorer(settings: GuardrailSettings, model_path: Path | str) -> PairScorer:
    """The configured backend's model on `model_path` (blocking: loads it)."""
    if settings.backend == "llama-guard":
        return LlamaGuardScorer(str(model_path))
    if (Path(model_path) / GUARD_SPEC).exists():
        return PolicyGuardScorer(str(model_path), settings.quantize)
    return ClassifierScorer(str(model_path), settings.quantize)


def open_checker(
    settings: GuardrailSettings,
    model_path: Path | str,
    scorer: PairScorer | None = None,
    topics: TopicJudge | None = None,
) -> Checker:
    """The configured backend on `model_path` (blocking: loads the model, unless `scorer` is it already);
    `topics`: off-topic evidence for "only X" policies (sentence embeddings, `topics.py`)."""
    scorer = scorer or open_scorer(settings, model_path)
    name = settings.model.removeprefix(BUILTIN_PREFIX).rstrip("/").rsplit("/", 1)[-1]
    return Checker(
        name,
        scorer,
        settings.threshold,
        settings.max_batch,
        settings.evidence,
        kind_thresholds=settings.kind_thresholds,
        topics=topics,
    )
