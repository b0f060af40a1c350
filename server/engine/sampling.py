"""Turn request options into vLLM sampling parameters, enforcing the context limit."""

from __future__ import annotations

from dataclasses import dataclass, field

from vllm import SamplingParams
from vllm.sampling_params import RequestOutputKind, StructuredOutputsParams

from server.config import SamplingDefaults
from server.engine.errors import ContextLengthExceeded


@dataclass(frozen=True, slots=True)
class JsonConstraint:
    """Output must be JSON: any object (`schema` None) or valid against `schema`."""

    schema: dict | None = None


@dataclass(frozen=True, slots=True)
class GenerationOptions:
    """Sampling choices of one request; None means "use the model's default"."""

    n: int = 1
    max_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    top_k: int | None = None
    min_p: float | None = None
    stop: list[str] = field(default_factory=list)
    stop_token_ids: list[int] = field(default_factory=list)
    seed: int | None = None
    presence_penalty: float | None = None
    frequency_penalty: float | None = None
    repetition_penalty: float | None = None
    min_tokens: int = 0
    ignore_eos: bool = False
    logprobs: int | None = None  # None: no logprobs; k: the sampled token plus the top k
    prompt_logprobs: int | None = None  # the same for the prompt's tokens (legacy completions' `echo`)
    logit_bias: dict[int, float] = field(default_factory=dict)
    json: JsonConstraint | None = None


def completion_budget(requested: int | None, default: int | None, prompt_tokens: int, max_model_len: int) -> int:
    """How many tokens the completion may use.

    An explicit request that does not fit is an error; a model default is
    clamped to what the context leaves.
    """
    room = max_model_len - prompt_tokens
    if requested is not None:
        if requested > room:
            raise ContextLengthExceeded(
                f"This model's maximum context length is {max_model_len} tokens. However, you requested "
                f"{prompt_tokens + requested} tokens ({prompt_tokens} in the messages, {requested} in the "
                "completion). Please reduce the length of the messages or completion."
            )
        return requested
    if room < 1:
        raise ContextLengthExceeded(
            f"This model's maximum context length is {max_model_len} tokens. However, your messages resulted in "
            f"{prompt_tokens} tokens, leaving no room for a completion. Please reduce the length of the messages."
        )
    return min(default, room) if default is not None else room


def structured_outputs(constraint: JsonConstraint | None) -> StructuredOutputsParams | None:
    if constraint is None:
        return None
    if constraint.schema is None:
        return StructuredOutputsParams(json_object=True)
    return StructuredOutputsParams(json=constraint.schema)


def build_sampling_params(
    options: GenerationOptions,
    defaults: SamplingDefaults,
    *,
    prompt_tokens: int,
    max_model_len: int,
    stream: bool,
    skip_special_tokens: bool = True,
) -> SamplingParams:
    return SamplingParams(
        n=options.n,
        temperature=defaults.temperature if options.temperature is None else options.temperature,
        top_p=defaults.top_p if options.top_p is None else options.top_p,
        top_k=0 if options.top_k is None else options.top_k,
        min_p=options.min_p or 0.0,
        seed=options.seed,
        presence_penalty=options.presence_penalty or 0.0,
        frequency_penalty=options.frequency_penalty or 0.0,
        repetition_penalty=options.repetition_penalty or 1.0,
        stop=list(options.stop),
        stop_token_ids=list(options.stop_token_ids),
        max_tokens=completion_budget(options.max_tokens, defaults.max_tokens, prompt_tokens, max_model_len),
        min_tokens=options.min_tokens,
        ignore_eos=options.ignore_eos,
        logprobs=options.logprobs,
        prompt_logprobs=options.prompt_logprobs,
        logit_bias=options.logit_bias or None,
        structured_outputs=structured_outputs(options.json),
        skip_special_tokens=skip_special_tokens,
        output_kind=RequestOutputKind.DELTA if stream else RequestOutputKind.FINAL_ONLY,
    )
