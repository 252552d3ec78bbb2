"""The OpenAI HTTP contract: request and response models, and their translation into engine requests.

Requests are parsed strictly (``max_tokens: "10"`` is a type error, not an int) because a silently
coerced parameter is a wrong answer the user never sees. Unknown fields are kept so that the ones which
would change the meaning of a request (``tools``, ``logit_bias``, ``suffix``...) can be rejected by name;
the rest (``user``, ``metadata``, ...) are ignored, as the OpenAI API itself ignores them.

Field names and response shapes follow the OpenAI API reference (``/v1/completions``,
``/v1/chat/completions``, ``/v1/models``). Extensions shared with vLLM: ``top_k``, ``min_tokens``,
``stop_token_ids``, ``ignore_eos``, ``include_stop_str_in_output``.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_serializer, model_validator

from xdeepserve.engine.request import SamplingParams

# One API request may fan out into at most this many engine requests (n choices x batched prompts), so a
# single call cannot fill the scheduler's whole batch by itself.
MAX_CHOICES = 128
MAX_LOGPROBS = 20  # as SamplingParams allows
MAX_STOP_SEQUENCES = 16
DEFAULT_COMPLETION_MAX_TOKENS = 16  # the OpenAI default for /v1/completions

_INT64_MIN, _INT64_MAX = -(2**63), 2**63 - 1


class APIError(Exception):
    """An error the HTTP edge returns as an OpenAI error body with ``status_code``."""

    def __init__(
        self,
        message: str,
        *,
        status_code: int = 400,
        type: str = "invalid_request_error",
        param: str | None = None,
        code: str | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.status_code = status_code
        self.type = type
        self.param = param
        self.code = code

    def to_response(self) -> ErrorResponse:
        return ErrorResponse(error=ErrorInfo(message=self.message, type=self.type, param=self.param, code=self.code))


def unsupported(param: str, why: str) -> APIError:
    return APIError(f"'{param}' is not supported by this server: {why}", param=param, code="unsupported_parameter")


# ---------------------------------------------------------------------------------------------------------
# Errors


class ErrorInfo(BaseModel):
    message: str
    type: str
    param: str | None = None
    code: str | None = None


class ErrorResponse(BaseModel):
    error: ErrorInfo


def _loc_to_param(loc: tuple[str | int, ...]) -> str | None:
    """('messages', 0, 'content', 'str') -> 'messages[0].content'.

    Pydantic appends the member of a union it tried ('str', 'list[int]', 'TextContentPart') to the location;
    those are type names, not parameters, so the path stops at the first one.
    """
    param = ""
    for part in loc:
        if isinstance(part, int):
            param += f"[{part}]"
        elif "[" in part or part in {"str", "int", "float", "bool", "list", "dict"} or part[:1].isupper():
            break
        else:
            param += f".{part}" if param else part
    return param or None


def validation_error_to_api_error(exc: ValidationError) -> APIError:
    """The first problem in a pydantic ValidationError, as a 400 that names the parameter."""
    errors = exc.errors(include_url=False)
    first = errors[0]
    param = _loc_to_param(first["loc"])
    if first["type"] == "json_invalid":
        return APIError(f"Request body is not valid JSON: {first['ctx']['error']}", code="invalid_json")
    if param is None:
        return APIError(f"Request body must be a JSON object: {first['msg']}")
    if first["type"] == "missing":
        return APIError(f"Missing required parameter '{param}'", param=param, code="missing_required_parameter")
    # A union (prompt, stop, content) fails once per member; list each distinct complaint once.
    same_param = [e["msg"] for e in errors if _loc_to_param(e["loc"]) == param]
    reasons = "; or ".join(dict.fromkeys(same_param))
    given = first["input"]
    shown = f" {given!r}" if isinstance(given, (str, int, float)) and len(repr(given)) <= 40 else ""
    return APIError(f"Invalid value{shown} for '{param}': {reasons}", param=param, code="invalid_value")


# ---------------------------------------------------------------------------------------------------------
# Requests

# Parameters this server does not implement and that would change the answer if silently ignored. Each maps
# to a test of whether the given value is the no-op default (then it is accepted).
def _is_empty(v: Any) -> bool:
    return v is None or v is False or v in ("", [], {})


_UNSUPPORTED_PARAMETERS: dict[str, tuple[Callable[[Any], bool], str]] = {
    "tools": (_is_empty, "tool calling is not implemented"),
    "tool_choice": (lambda v: v in (None, "none"), "tool calling is not implemented"),
    "functions": (_is_empty, "function calling is not implemented"),
    "function_call": (lambda v: v in (None, "none"), "function calling is not implemented"),
    "response_format": (lambda v: v is None or v == {"type": "text"}, "only plain text output is implemented"),
    "logit_bias": (_is_empty, "logit biasing is not implemented"),
    "presence_penalty": (lambda v: v in (None, 0), "penalties are not implemented"),
    "frequency_penalty": (lambda v: v in (None, 0), "penalties are not implemented"),
    "repetition_penalty": (lambda v: v in (None, 1), "penalties are not implemented"),
    "min_p": (lambda v: v in (None, 0), "min-p sampling is not implemented"),
    "suffix": (_is_empty, "insertion (fill-in-the-middle) is not implemented"),
    "audio": (_is_empty, "audio output is not implemented"),
    "modalities": (lambda v: v in (None, ["text"]), "only text output is implemented"),
    "prediction": (_is_empty, "predicted outputs are not implemented"),
    "web_search_options": (_is_empty, "web search is not implemented"),
    "use_beam_search": (_is_empty, "beam search is not implemented"),
    "prompt_logprobs": (_is_empty, "prompt logprobs are not implemented"),
    "guided_json": (_is_empty, "structured output is not implemented"),
    "guided_regex": (_is_empty, "structured output is not implemented"),
    "guided_choice": (_is_empty, "structured output is not implemented"),
    "guided_grammar": (_is_empty, "structured output is not implemented"),
    "structured_outputs": (_is_empty, "structured output is not implemented"),
}


class StreamOptions(BaseModel):
    model_config = ConfigDict(strict=True, extra="ignore")

    include_usage: bool = False


class _SamplingRequest(BaseModel):
    """Fields /v1/completions and /v1/chat/completions share."""

    model_config = ConfigDict(strict=True, extra="allow", allow_inf_nan=False)

    model: str
    n: int = Field(default=1, ge=1, le=MAX_CHOICES)
    temperature: float | None = Field(default=None, ge=0.0, le=2.0)
    top_p: float | None = Field(default=None, gt=0.0, le=1.0)
    seed: int | None = Field(default=None, ge=_INT64_MIN, le=_INT64_MAX - MAX_CHOICES)
    stop: str | list[str] | None = None
    stream: bool | None = False
    stream_options: StreamOptions | None = None
    user: str | None = None
    # extensions (vLLM's names)
    top_k: int | None = Field(default=None, ge=-1)  # -1 or 0: disabled
    min_tokens: int = Field(default=0, ge=0)
    stop_token_ids: list[int] | None = None
    ignore_eos: bool = False
    include_stop_str_in_output: bool = False

    @model_validator(mode="after")
    def _check_supported(self) -> _SamplingRequest:
        for name, value in (self.model_extra or {}).items():
            if name in _UNSUPPORTED_PARAMETERS:
                is_noop, why = _UNSUPPORTED_PARAMETERS[name]
                if not is_noop(value):
                    raise unsupported(name, why)
        stops = [self.stop] if isinstance(self.stop, str) else self.stop or []
        if len(stops) > MAX_STOP_SEQUENCES:
            raise APIError(f"'stop' may hold at most {MAX_STOP_SEQUENCES} sequences, got {len(stops)}", param="stop")
        if any(s == "" for s in stops):
            raise APIError("'stop' sequences must be non-empty strings", param="stop")
        if self.stream_options is not None and not self.stream:
            raise APIError("'stream_options' is only allowed when 'stream' is true", param="stream_options")
        return self

    @property
    def include_usage_in_stream(self) -> bool:
        return self.stream_options is not None and self.stream_options.include_usage

    @property
    def stop_sequences(self) -> tuple[str, ...]:
        return (self.stop,) if isinstance(self.stop, str) else tuple(self.stop or ())

    @property
    def requested_max_tokens(self) -> int | None:
        raise NotImplementedError

    @property
    def max_tokens_param(self) -> str:
        """The name under which the client gave the completion length (for error messages)."""
        return "max_tokens"

    @property
    def engine_logprobs(self) -> int | None:
        """How many top alternatives the engine should return per token (None: no logprobs)."""
        raise NotImplementedError

    def to_sampling_params(self, max_tokens: int) -> SamplingParams:
        """The engine's view of this request; ``max_tokens`` is resolved by the caller, which knows the
        prompt length and the context size. Raises InvalidRequestError (a 400) on inconsistent values."""
        return SamplingParams(
            max_tokens=max_tokens,
            temperature=1.0 if self.temperature is None else self.temperature,
            top_p=1.0 if self.top_p is None else self.top_p,
            top_k=max(self.top_k or 0, 0),
            seed=self.seed,
            stop=self.stop_sequences,
            stop_token_ids=tuple(self.stop_token_ids or ()),
            ignore_eos=self.ignore_eos,
            min_tokens=self.min_tokens,
            logprobs=self.engine_logprobs,
            include_stop_str_in_output=self.include_stop_str_in_output,
        )


Prompt = str | list[int] | list[str] | list[list[int]]


class CompletionRequest(_SamplingRequest):
    prompt: Prompt
    max_tokens: int | None = Field(default=None, ge=1)
    logprobs: int | None = Field(default=None, ge=0, le=MAX_LOGPROBS)
    echo: bool = False
    best_of: int | None = Field(default=None, ge=1)

    @model_validator(mode="after")
    def _check_completion(self) -> CompletionRequest:
        if self.best_of is not None and self.best_of != self.n:
            raise unsupported("best_of", f"best_of ({self.best_of}) must equal n ({self.n}); "
                                         "server-side best-of sampling is not implemented")
        if self.echo and self.logprobs is not None:
            raise unsupported("echo", "echo together with logprobs needs prompt logprobs, which are not implemented")
        if len(self.prompts) * self.n > MAX_CHOICES:
            raise APIError(f"{len(self.prompts)} prompts x n={self.n} exceeds the limit of {MAX_CHOICES} "
                           "completions per request", param="n")
        return self

    @property
    def prompts(self) -> list[str | list[int]]:
        """The batch of prompts: a bare string or token list is a batch of one."""
        if isinstance(self.prompt, str):
            return [self.prompt]
        if not self.prompt or isinstance(self.prompt[0], int):
            return [self.prompt]  # a token list (possibly empty: rejected later as an empty prompt)
        return list(self.prompt)

    @property
    def requested_max_tokens(self) -> int | None:
        return self.max_tokens

    @property
    def engine_logprobs(self) -> int | None:
        return self.logprobs


class TextContentPart(BaseModel):
    model_config = ConfigDict(strict=True, extra="allow")

    type: str
    text: str | None = None


class ChatMessage(BaseModel):
    model_config = ConfigDict(strict=True, extra="allow")

    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[TextContentPart]
    name: str | None = None

    @property
    def text(self) -> str:
        if isinstance(self.content, str):
            return self.content
        return "\n".join(part.text or "" for part in self.content)


class ChatCompletionRequest(_SamplingRequest):
    messages: list[ChatMessage] = Field(min_length=1)
    max_tokens: int | None = Field(default=None, ge=1)  # deprecated by OpenAI, still widely sent
    max_completion_tokens: int | None = Field(default=None, ge=1)
    logprobs: bool | None = False
    top_logprobs: int | None = Field(default=None, ge=0, le=MAX_LOGPROBS)

    @model_validator(mode="after")
    def _check_chat(self) -> ChatCompletionRequest:
        if (self.model_extra or {}).get("echo"):
            raise unsupported("echo", "chat completions do not echo the prompt")
        if self.top_logprobs is not None and not self.logprobs:
            raise APIError("'top_logprobs' requires 'logprobs' to be true", param="top_logprobs")
        for i, message in enumerate(self.messages):
            for field in ("tool_calls", "function_call", "tool_call_id", "audio"):
                if not _is_empty((message.model_extra or {}).get(field)):
                    raise unsupported(f"messages[{i}].{field}", "tool and audio messages are not implemented")
            if isinstance(message.content, list):
                for j, part in enumerate(message.content):
                    if part.type != "text" or part.text is None:
                        raise unsupported(f"messages[{i}].content[{j}]",
                                          f"only text content parts are accepted, got type {part.type!r}")
        return self

    def template_messages(self) -> list[dict[str, str]]:
        """The conversation as the plain role/content dicts chat templates expect."""
        return [{"role": m.role, "content": m.text} for m in self.messages]

    @property
    def requested_max_tokens(self) -> int | None:
        return self.max_completion_tokens if self.max_completion_tokens is not None else self.max_tokens

    @property
    def max_tokens_param(self) -> str:
        return "max_completion_tokens" if self.max_completion_tokens is not None else "max_tokens"

    @property
    def engine_logprobs(self) -> int | None:
        return (self.top_logprobs or 0) if self.logprobs else None


def parse_request(model: type[_SamplingRequest], body: bytes) -> Any:
    """Parse a raw JSON body; every problem comes out as an APIError (a 400 naming the parameter)."""
    try:
        return model.model_validate_json(body)
    except ValidationError as exc:
        raise validation_error_to_api_error(exc) from None


# ---------------------------------------------------------------------------------------------------------
# Fan-out: one API request -> one engine request per choice


@dataclass(frozen=True)
class ChoiceRequest:
    """One engine request behind choice ``index`` of an API response."""

    index: int
    request_id: str
    prompt_index: int
    prompt_token_ids: list[int]
    sampling: SamplingParams


def fan_out(request_id: str, prompts: list[tuple[list[int], SamplingParams]], n: int) -> list[ChoiceRequest]:
    """n engine requests per (prompt, sampling) pair, with ids ``{request_id}-{index}``; choice
    ``index = prompt * n + i`` (the OpenAI layout for batched prompts). With a seed, choice i gets ``seed + i``:
    the n samples differ from each other, and the same request with the same seed reproduces all of them."""
    choices = []
    for p, (prompt_token_ids, sampling) in enumerate(prompts):
        for i in range(n):
            index = p * n + i
            seed = None if sampling.seed is None else sampling.seed + i
            choices.append(ChoiceRequest(index=index, request_id=f"{request_id}-{index}", prompt_index=p,
                                         prompt_token_ids=prompt_token_ids,
                                         sampling=dataclasses.replace(sampling, seed=seed)))
    return choices


# ---------------------------------------------------------------------------------------------------------
# Responses

FinishReasonName = Literal["stop", "length", "abort", "error"]


class PromptTokensDetails(BaseModel):
    cached_tokens: int = 0


class Usage(BaseModel):
    prompt_tokens: int = 0
    completion_tokens: int = 0
    total_tokens: int = 0
    prompt_tokens_details: PromptTokensDetails | None = None


class CompletionLogprobs(BaseModel):
    text_offset: list[int] = Field(default_factory=list)
    token_logprobs: list[float | None] = Field(default_factory=list)
    tokens: list[str] = Field(default_factory=list)
    top_logprobs: list[dict[str, float] | None] = Field(default_factory=list)


class CompletionChoice(BaseModel):
    index: int
    text: str
    logprobs: CompletionLogprobs | None = None
    finish_reason: FinishReasonName | None = None


class CompletionResponse(BaseModel):
    id: str
    object: Literal["text_completion"] = "text_completion"
    created: int = Field(default_factory=lambda: int(time.time()))
    model: str
    choices: list[CompletionChoice]
    usage: Usage | None = None
    system_fingerprint: str | None = None


class CompletionStreamResponse(CompletionResponse):
    """A streamed chunk has the same shape as the full response (object ``text_completion``)."""


class TopLogprob(BaseModel):
    token: str
    logprob: float
    bytes: list[int] | None = None


class ChatCompletionTokenLogprob(TopLogprob):
    top_logprobs: list[TopLogprob] = Field(default_factory=list)


class ChatChoiceLogprobs(BaseModel):
    content: list[ChatCompletionTokenLogprob] | None = None
    refusal: list[ChatCompletionTokenLogprob] | None = None


class AssistantMessage(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str
    refusal: str | None = None


class ChatCompletionChoice(BaseModel):
    index: int
    message: AssistantMessage
    logprobs: ChatChoiceLogprobs | None = None
    finish_reason: FinishReasonName | None = None


class ChatCompletionResponse(BaseModel):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int = Field(default_factory=lambda: int(time.time()))
    model: str
    choices: list[ChatCompletionChoice]
    usage: Usage | None = None
    system_fingerprint: str | None = None


class DeltaMessage(BaseModel):
    role: Literal["assistant"] | None = None
    content: str | None = None

    @model_serializer(mode="wrap")
    def _omit_absent(self, handler: Any) -> dict[str, Any]:
        # A delta lists only what changed: the closing chunk's delta is {} (as OpenAI sends it).
        return {k: v for k, v in handler(self).items() if v is not None}


class ChatCompletionStreamChoice(BaseModel):
    index: int
    delta: DeltaMessage
    logprobs: ChatChoiceLogprobs | None = None
    finish_reason: FinishReasonName | None = None


class ChatCompletionStreamResponse(BaseModel):
    id: str
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    created: int = Field(default_factory=lambda: int(time.time()))
    model: str
    choices: list[ChatCompletionStreamChoice]
    usage: Usage | None = None
    system_fingerprint: str | None = None


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str = "xdeepserve"
    max_model_len: int  # extension (vLLM's name): prompt + completion tokens the server accepts
    vocab_size: int  # extension: valid token ids are [0, vocab_size)


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]
