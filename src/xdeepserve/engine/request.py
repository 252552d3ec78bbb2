"""Requests and their data contracts: sampling parameters, engine-side state, output deltas."""

from __future__ import annotations

import enum
import time
from dataclasses import dataclass, field

import torch


class InvalidRequestError(ValueError):
    """A request the engine cannot serve as given (the HTTP edge maps it to a 400)."""


@dataclass(frozen=True)
class SamplingParams:
    """How to pick tokens and when to stop. ``temperature == 0`` means greedy."""

    max_tokens: int = 16
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0  # 0: disabled
    seed: int | None = None
    stop: tuple[str, ...] = ()
    stop_token_ids: tuple[int, ...] = ()
    ignore_eos: bool = False
    min_tokens: int = 0
    logprobs: int | None = None  # None: no logprobs; k >= 0: the chosen token's plus the top k
    include_stop_str_in_output: bool = False

    def __post_init__(self) -> None:
        if self.max_tokens < 1:
            raise InvalidRequestError(f"max_tokens must be at least 1, got {self.max_tokens}")
        if not (0.0 <= self.temperature <= 100.0):
            raise InvalidRequestError(f"temperature must be in [0, 100], got {self.temperature}")
        if not (0.0 < self.top_p <= 1.0):
            raise InvalidRequestError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.top_k < 0:
            raise InvalidRequestError(f"top_k must be >= 0 (0 disables it), got {self.top_k}")
        if self.logprobs is not None and not (0 <= self.logprobs <= 20):
            raise InvalidRequestError(f"logprobs must be in [0, 20], got {self.logprobs}")
        if self.min_tokens < 0 or self.min_tokens > self.max_tokens:
            raise InvalidRequestError(f"min_tokens must be in [0, max_tokens], got {self.min_tokens}")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0

    def to_wire(self) -> dict:
        d = self.__dict__.copy()
        d["stop"] = list(self.stop)
        d["stop_token_ids"] = list(self.stop_token_ids)
        return d

    @classmethod
    def from_wire(cls, d: dict) -> SamplingParams:
        return cls(**{**d, "stop": tuple(d.get("stop", ())), "stop_token_ids": tuple(d.get("stop_token_ids", ()))})


def check_prompt(
    prompt_token_ids: list[int], *, max_model_len: int, vocab_size: int, max_tokens: int | None = None
) -> None:
    """Refuse prompts the engine cannot serve. With ``max_tokens`` (the HTTP edge), prompt plus
    ``max_tokens`` must fit the context; without (the engine), one token must be left to generate."""
    n = len(prompt_token_ids)
    if n == 0:
        raise InvalidRequestError("the prompt is empty")
    if max_tokens is not None and n + max_tokens > max_model_len:
        raise InvalidRequestError(
            f"this model's maximum context length is {max_model_len} tokens, but the request asks "
            f"for {n + max_tokens} ({n} in the prompt + {max_tokens} max_tokens)"
        )
    if n >= max_model_len:
        raise InvalidRequestError(
            f"the prompt has {n} tokens but this model's context length is {max_model_len} "
            f"(at least one token must be left to generate)"
        )
    bad = next((t for t in prompt_token_ids if not (0 <= t < vocab_size)), None)
    if bad is not None:
        raise InvalidRequestError(f"token id {bad} is outside the vocabulary [0, {vocab_size})")


class FinishReason(str, enum.Enum):
    STOP = "stop"  # EOS, a stop token id or a stop string
    LENGTH = "length"  # max_tokens or the context limit
    ABORT = "abort"  # cancelled by the client or the server
    ERROR = "error"  # the engine failed this request


class RequestStatus(enum.Enum):
    WAITING = enum.auto()
    RUNNING = enum.auto()
    FINISHED = enum.auto()
    PARKED = enum.auto()  # prefill done on a prefill-only engine: blocks kept until the KV is pulled
    AWAITING_KV = enum.auto()  # on a decode engine: waiting for blocks, or for its KV to arrive


@dataclass(eq=False)
class Request:
    """Engine-side state of one request. Owned by the scheduler; identity-compared."""

    request_id: str
    prompt_token_ids: list[int]
    sampling: SamplingParams
    eos_token_ids: tuple[int, ...] = ()
    arrival_time: float = field(default_factory=time.monotonic)
    output_token_ids: list[int] = field(default_factory=list)
    num_computed_tokens: int = 0
    block_ids: list[int] = field(default_factory=list)
    num_cached_tokens: int = 0  # prompt tokens served from the prefix cache at the last admission
    num_preemptions: int = 0
    status: RequestStatus = RequestStatus.WAITING
    finish_reason: FinishReason | None = None
    generator: torch.Generator | None = None
    # MTP speculative decoding: the draft for the token after the next one, proposed by the last step
    # and verified in the next (valid for that step only)
    draft_token_ids: list[int] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.sampling.seed is not None:
            self.generator = torch.Generator().manual_seed(self.sampling.seed)

    @property
    def num_prompt_tokens(self) -> int:
        return len(self.prompt_token_ids)

    @property
    def num_tokens(self) -> int:
        return len(self.prompt_token_ids) + len(self.output_token_ids)

    @property
    def all_token_ids(self) -> list[int]:
        return self.prompt_token_ids + self.output_token_ids

    def token_at(self, i: int) -> int:
        n = len(self.prompt_token_ids)
        return self.prompt_token_ids[i] if i < n else self.output_token_ids[i - n]


@dataclass(frozen=True)
class TokenLogprob:
    token_id: int
    logprob: float
    top: tuple[tuple[int, float], ...] = ()  # (token id, logprob), best first


@dataclass(frozen=True)
class EngineOutput:
    """What the engine core emits for one request after one step (new tokens since the last output)."""

    request_id: str
    new_token_ids: tuple[int, ...]
    finish_reason: FinishReason | None = None
    logprobs: tuple[TokenLogprob, ...] = ()
    num_prompt_tokens: int = 0
    num_cached_tokens: int = 0
    error: str | None = None
    # prefill-only engines: the request is parked with this many tokens of KV ready to be pulled
    kv_ready_tokens: int = 0

    @property
    def finished(self) -> bool:
        return self.finish_reason is not None


@dataclass(frozen=True)
class RequestOutput:
    """A detokenised delta, as streamed to the frontend by the output process."""

    request_id: str
    text: str  # new text since the previous delta
    token_ids: tuple[int, ...]
    finish_reason: FinishReason | None = None
    logprobs: tuple[TokenLogprob, ...] = ()
    num_prompt_tokens: int = 0
    num_output_tokens: int = 0  # cumulative
    num_cached_tokens: int = 0
    error: str | None = None

    @property
    def finished(self) -> bool:
        return self.finish_reason is not None
