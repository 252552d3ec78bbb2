"""The OpenAI-compatible HTTP server: /v1/completions, /v1/chat/completions, /v1/models, /health, /metrics.

One API request becomes one engine request per choice (``n`` x batched prompts, see ``protocol.fan_out``);
their output streams are merged and rendered as a JSON response or as server-sent events. Everything that
can go wrong with a request is answered as an OpenAI error body with a 4xx (503 when the engine is gone),
and a client that goes away has its engine requests aborted at once, so it stops holding KV-cache blocks.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import logging
import signal
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Iterable
from dataclasses import dataclass, field
from typing import TypeVar

import anyio
import jinja2
import uvicorn
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response, StreamingResponse
from prometheus_client import CONTENT_TYPE_LATEST
from pydantic import BaseModel
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect
from starlette.types import Receive, Scope, Send

from xdeepserve.api.metrics import FrontendMetrics
from xdeepserve.api.protocol import (
    DEFAULT_COMPLETION_MAX_TOKENS,
    APIError,
    AssistantMessage,
    ChatChoiceLogprobs,
    ChatCompletionChoice,
    ChatCompletionRequest,
    ChatCompletionResponse,
    ChatCompletionStreamChoice,
    ChatCompletionStreamResponse,
    ChatCompletionTokenLogprob,
    ChoiceRequest,
    CompletionChoice,
    CompletionLogprobs,
    CompletionRequest,
    CompletionResponse,
    CompletionStreamResponse,
    DeltaMessage,
    ModelCard,
    ModelList,
    PromptTokensDetails,
    TopLogprob,
    Usage,
    fan_out,
    parse_request,
)
from xdeepserve.engine.client import AsyncEngineClient, EngineDeadError
from xdeepserve.engine.config import EngineConfig
from xdeepserve.engine.request import FinishReason, InvalidRequestError, RequestOutput, TokenLogprob

log = logging.getLogger(__name__)

DISCONNECT_POLL_S = 0.5  # how often a non-streaming request checks that its client is still there
CLIENT_CLOSED_REQUEST = 499  # nginx's status for "client went away"; nobody reads it, the logs do

T = TypeVar("T")
ChoiceOutput = tuple[ChoiceRequest, RequestOutput]  # an engine output, tagged with the choice it belongs to


class ClientGone(Exception):
    """The HTTP client disconnected before its response was ready."""


# ---------------------------------------------------------------------------------------------------------
# Errors


def to_api_error(exc: BaseException) -> APIError:
    """Every exception a request can raise, as the OpenAI error it is answered with."""
    if isinstance(exc, APIError):
        return exc
    if isinstance(exc, RequestValidationError):
        first = exc.errors()[0]
        param = ".".join(str(p) for p in first.get("loc", ())[1:]) or None
        return APIError(f"Invalid request: {first.get('msg', 'validation failed')}", param=param)
    if isinstance(exc, json.JSONDecodeError):
        return APIError(f"Request body is not valid JSON: {exc}", code="invalid_json")
    if isinstance(exc, InvalidRequestError):
        return APIError(str(exc))
    if isinstance(exc, EngineDeadError):
        return APIError(f"The inference engine is not running: {exc}", status_code=503,
                        type="service_unavailable_error", code="engine_dead")
    if isinstance(exc, StarletteHTTPException):
        kind = "invalid_request_error" if exc.status_code < 500 else "server_error"
        return APIError(str(exc.detail), status_code=exc.status_code, type=kind)
    return APIError(f"Internal server error ({type(exc).__name__}); see the server log", status_code=500,
                    type="server_error")


def error_json(err: APIError) -> JSONResponse:
    return JSONResponse(err.to_response().model_dump(), status_code=err.status_code)


def sse(payload: BaseModel) -> str:
    return f"data: {payload.model_dump_json()}\n\n"


SSE_DONE = "data: [DONE]\n\n"


# ---------------------------------------------------------------------------------------------------------
# Streams of engine outputs


class EventStreamResponse(StreamingResponse):
    """A server-sent-event response that (1) notices a client going away even while the engine is silent and
    (2) always closes its body iterator, whose ``finally`` aborts the engine requests. Starlette's own
    StreamingResponse leaves the iterator suspended when the client leaves during a send, and the abort would
    then wait for garbage collection."""

    media_type = "text/event-stream"

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            async with anyio.create_task_group() as tg:

                async def stream() -> None:
                    with contextlib.suppress(OSError):  # the peer reset the connection mid-send
                        await self.stream_response(send)
                    tg.cancel_scope.cancel()

                async def watch_disconnect() -> None:
                    await self.listen_for_disconnect(receive)
                    tg.cancel_scope.cancel()

                tg.start_soon(stream)
                tg.start_soon(watch_disconnect)
        finally:
            with anyio.CancelScope(shield=True):
                await self.body_iterator.aclose()


async def stream_choices(
    client: AsyncEngineClient, choices: list[ChoiceRequest], metrics: FrontendMetrics, arrival_s: float
) -> AsyncIterator[ChoiceOutput]:
    """Run every choice's engine request and yield their outputs as they arrive, in arrival order.

    Closing this generator (or cancelling its consumer) aborts every engine request that has not finished.
    """
    queue: asyncio.Queue[tuple[ChoiceRequest, RequestOutput | BaseException | None]] = asyncio.Queue()

    async def pump(choice: ChoiceRequest) -> None:
        try:
            async for out in client.generate(choice.request_id, choice.prompt_token_ids, choice.sampling):
                queue.put_nowait((choice, out))
            queue.put_nowait((choice, None))
        except Exception as exc:  # handed to the consumer, which raises it in the request's context
            queue.put_nowait((choice, exc))

    timers = {c.index: metrics.track(arrival_s) for c in choices}
    prompts_seen: set[int] = set()
    tasks = [asyncio.create_task(pump(c), name=c.request_id) for c in choices]
    pending = {c.index for c in choices}
    try:
        while pending:
            choice, item = await queue.get()
            if isinstance(item, BaseException):
                raise item
            if item is None:  # the engine stream ended (after its finished output)
                pending.discard(choice.index)
                continue
            if choice.prompt_index not in prompts_seen:
                prompts_seen.add(choice.prompt_index)
                metrics.prompt_tokens.inc(len(choice.prompt_token_ids))
            timers[choice.index].on_output(item)
            if item.finished:
                pending.discard(choice.index)
            yield choice, item
    finally:
        for task in tasks:
            task.cancel()
        # Shielded: under a cancelled anyio scope (a disconnected client) every await would raise again.
        with anyio.CancelScope(shield=True):
            await asyncio.gather(*tasks, return_exceptions=True)
            for choice in choices:
                if choice.index in pending:
                    try:
                        await client.abort(choice.request_id)
                    except Exception:  # a dead or stopped engine has nothing left to abort
                        log.debug("abort of %s failed", choice.request_id, exc_info=True)
        for timer in timers.values():
            timer.close()


async def run_unless_disconnected(raw_request: Request, awaitable: Awaitable[T]) -> T:
    """Await ``awaitable`` while polling the client; if it leaves, cancel the work and raise ClientGone."""
    task = asyncio.ensure_future(awaitable)
    try:
        while True:
            done, _ = await asyncio.wait({task}, timeout=DISCONNECT_POLL_S)
            if done:
                return task.result()
            if await raw_request.is_disconnected():
                raise ClientGone
    finally:
        if not task.done():
            task.cancel()
            with anyio.CancelScope(shield=True), contextlib.suppress(BaseException):
                await task


async def _chain(first: ChoiceOutput, rest: AsyncIterator[ChoiceOutput]) -> AsyncIterator[ChoiceOutput]:
    """``first`` then ``rest``; closing the chain closes ``rest`` (and so aborts its engine requests)."""
    async with contextlib.aclosing(rest):
        yield first
        async for item in rest:
            yield item


@dataclass
class UsageTracker:
    """Token accounting for one API request: the prompt counts once per prompt, not once per choice."""

    choices: list[ChoiceRequest]
    completion_tokens: dict[int, int] = field(default_factory=dict)
    cached_tokens: dict[int, int] = field(default_factory=dict)

    def update(self, choice: ChoiceRequest, out: RequestOutput) -> None:
        self.completion_tokens[choice.index] = out.num_output_tokens
        p = choice.prompt_index
        self.cached_tokens[p] = max(self.cached_tokens.get(p, 0), out.num_cached_tokens)

    def usage(self) -> Usage:
        prompt_tokens = sum({c.prompt_index: len(c.prompt_token_ids) for c in self.choices}.values())
        completion_tokens = sum(self.completion_tokens.values())
        return Usage(prompt_tokens=prompt_tokens, completion_tokens=completion_tokens,
                     total_tokens=prompt_tokens + completion_tokens,
                     prompt_tokens_details=PromptTokensDetails(cached_tokens=sum(self.cached_tokens.values())))


@dataclass
class ChoiceText:
    """One choice of a non-streaming response, accumulated from its deltas."""

    text: str = ""
    logprobs: list[TokenLogprob] = field(default_factory=list)
    finish_reason: FinishReason | None = None


def raise_if_failed(out: RequestOutput) -> None:
    if out.finish_reason is FinishReason.ERROR:
        raise APIError(f"The engine failed this request: {out.error or 'unknown error'}", status_code=500,
                       type="server_error", code="engine_error")


async def collect(stream: AsyncIterator[ChoiceOutput], choices: list[ChoiceRequest]
                  ) -> tuple[dict[int, ChoiceText], Usage]:
    results = {c.index: ChoiceText() for c in choices}
    usage = UsageTracker(choices)
    async for choice, out in stream:
        raise_if_failed(out)
        usage.update(choice, out)
        r = results[choice.index]
        r.text += out.text
        r.logprobs.extend(out.logprobs)
        r.finish_reason = out.finish_reason or r.finish_reason
    return results, usage.usage()


async def collect_unless_disconnected(raw_request: Request, first: ChoiceOutput, rest: AsyncIterator[ChoiceOutput],
                                      choices: list[ChoiceRequest]) -> tuple[dict[int, ChoiceText], Usage]:
    """A whole non-streaming response; if the client leaves first, its engine requests are aborted."""
    async with contextlib.aclosing(rest):  # closed here even if the collecting task never got to start
        return await run_unless_disconnected(raw_request, collect(_chain(first, rest), choices))


# ---------------------------------------------------------------------------------------------------------
# The endpoints


class OpenAIServing:
    """Turns API requests into engine requests and engine outputs into API responses."""

    def __init__(self, client: AsyncEngineClient, metrics: FrontendMetrics) -> None:
        self.client = client
        self.metrics = metrics
        self.tokenizer = client.tokenizer
        self.created = int(time.time())
        self.token_text = functools.lru_cache(maxsize=1 << 16)(self._decode_token)

    def _decode_token(self, token_id: int) -> str:
        return self.tokenizer.decode([token_id])

    # -- requests ---------------------------------------------------------------------------------------

    def models(self) -> ModelList:
        card = ModelCard(id=self.client.model_name, created=self.created, max_model_len=self.client.max_model_len,
                         vocab_size=self.client.vocab_size)
        return ModelList(data=[card])

    def check_model(self, model: str) -> None:
        if model != self.client.model_name:
            raise APIError(f"The model '{model}' does not exist; this server serves '{self.client.model_name}'",
                           status_code=404, param="model", code="model_not_found")

    def check_token_ids(self, token_ids: Iterable[int], param: str) -> None:
        vocab_size = self.client.vocab_size
        for t in token_ids:
            if not 0 <= t < vocab_size:
                raise APIError(f"'{param}' holds token id {t}, outside the vocabulary [0, {vocab_size})",
                               param=param, code="invalid_token_id")

    def check_prompt(self, token_ids: list[int], param: str) -> None:
        if not token_ids:
            raise APIError(f"'{param}' is empty: at least one prompt token is needed", param=param,
                           code="empty_prompt")
        self.check_token_ids(token_ids, param)

    def max_tokens_for(self, req: CompletionRequest | ChatCompletionRequest, default: int | None, prompt_len: int,
                       param: str) -> int:
        """Resolve max_tokens against the context: an explicit value that does not fit is an error, a default
        shrinks to the room left (``default=None``: all of it)."""
        limit = self.client.max_model_len
        if prompt_len >= limit:
            raise APIError(f"This model's maximum context length is {limit} tokens, but the prompt has "
                           f"{prompt_len} tokens, which leaves no room for the completion.",
                           param=param, code="context_length_exceeded")
        room = limit - prompt_len
        requested = req.requested_max_tokens
        if requested is None:
            return room if default is None else min(default, room)
        if prompt_len + requested > limit:
            raise APIError(f"This model's maximum context length is {limit} tokens. However, you requested "
                           f"{prompt_len + requested} tokens ({prompt_len} in the prompt, {requested} for the "
                           f"completion). Shorten the prompt or lower {req.max_tokens_param}.",
                           param=req.max_tokens_param, code="context_length_exceeded")
        return requested

    def completion_prompts(self, req: CompletionRequest) -> list[list[int]]:
        batch = req.prompts
        token_lists = []
        for i, prompt in enumerate(batch):
            param = "prompt" if len(batch) == 1 else f"prompt[{i}]"
            token_ids = self.tokenizer.encode(prompt) if isinstance(prompt, str) else prompt
            self.check_prompt(token_ids, param)
            token_lists.append(token_ids)
        return token_lists

    def chat_prompt(self, req: ChatCompletionRequest) -> list[int]:
        try:
            text = self.tokenizer.apply_chat_template(req.template_messages(), add_generation_prompt=True,
                                                      tokenize=False)
        except jinja2.TemplateError as exc:  # templates may reject a conversation (e.g. role order)
            raise APIError(f"The chat template rejected these messages: {exc}", param="messages") from None
        token_ids = self.tokenizer.encode(text, add_special_tokens=False)
        self.check_prompt(token_ids, "messages")
        return token_ids

    def prepare(self, req: CompletionRequest | ChatCompletionRequest, request_id: str,
                prompts: list[list[int]], default_max_tokens: int | None, param: str) -> list[ChoiceRequest]:
        self.check_token_ids(req.stop_token_ids or (), "stop_token_ids")
        pairs = []
        for prompt in prompts:
            max_tokens = self.max_tokens_for(req, default_max_tokens, len(prompt), param)
            pairs.append((prompt, req.to_sampling_params(max_tokens)))
        return fan_out(request_id, pairs, req.n)

    async def start(self, raw_request: Request, choices: list[ChoiceRequest], arrival_s: float
                    ) -> tuple[ChoiceOutput, AsyncIterator[ChoiceOutput]]:
        """Submit the choices and wait for the first output, so that a request the engine refuses is still
        answered with a status code rather than an error inside a 200 stream."""
        stream = stream_choices(self.client, choices, self.metrics, arrival_s)

        async def first_output() -> ChoiceOutput:
            return await anext(stream)

        try:
            first = await run_unless_disconnected(raw_request, first_output())
            raise_if_failed(first[1])
        except BaseException:
            with anyio.CancelScope(shield=True):
                await stream.aclose()
            raise
        return first, stream

    async def create_completion(self, raw_request: Request) -> Response:
        arrival_s = time.perf_counter()
        req: CompletionRequest = parse_request(CompletionRequest, await raw_request.body())
        self.check_model(req.model)
        prompts = self.completion_prompts(req)
        request_id = f"cmpl-{uuid.uuid4().hex}"
        choices = self.prepare(req, request_id, prompts, DEFAULT_COMPLETION_MAX_TOKENS, "prompt")
        echo = {c.index: self._echo_text(req, c) for c in choices} if req.echo else {}
        first, stream = await self.start(raw_request, choices, arrival_s)
        if req.stream:
            return EventStreamResponse(self.completion_events(req, request_id, choices, first, stream, echo))
        results, usage = await collect_unless_disconnected(raw_request, first, stream, choices)
        response = CompletionResponse(id=request_id, model=req.model, usage=usage, choices=[
            CompletionChoice(index=i, text=echo.get(i, "") + r.text, finish_reason=_finish_name(r.finish_reason),
                             logprobs=self.completion_logprobs(r.logprobs, len(echo.get(i, "")))
                             if req.logprobs is not None else None)
            for i, r in sorted(results.items())])
        return Response(response.model_dump_json(), media_type="application/json")

    async def create_chat_completion(self, raw_request: Request) -> Response:
        arrival_s = time.perf_counter()
        req: ChatCompletionRequest = parse_request(ChatCompletionRequest, await raw_request.body())
        self.check_model(req.model)
        prompt = self.chat_prompt(req)
        request_id = f"chatcmpl-{uuid.uuid4().hex}"
        # No max_tokens: the completion may use the whole remaining context (the OpenAI behaviour).
        choices = self.prepare(req, request_id, [prompt], None, "messages")
        first, stream = await self.start(raw_request, choices, arrival_s)
        if req.stream:
            return EventStreamResponse(self.chat_events(req, request_id, choices, first, stream))
        results, usage = await collect_unless_disconnected(raw_request, first, stream, choices)
        response = ChatCompletionResponse(id=request_id, model=req.model, usage=usage, choices=[
            ChatCompletionChoice(index=i, message=AssistantMessage(content=r.text),
                                 finish_reason=_finish_name(r.finish_reason),
                                 logprobs=self.chat_logprobs(r.logprobs) if req.logprobs else None)
            for i, r in sorted(results.items())])
        return Response(response.model_dump_json(), media_type="application/json")

    # -- streaming --------------------------------------------------------------------------------------

    async def completion_events(self, req: CompletionRequest, request_id: str, choices: list[ChoiceRequest],
                                first: ChoiceOutput, stream: AsyncIterator[ChoiceOutput],
                                echo: dict[int, str]) -> AsyncIterator[str]:
        created = int(time.time())
        usage = UsageTracker(choices)
        text_offset = {c.index: 0 for c in choices}
        echoed: set[int] = set()
        async with contextlib.aclosing(_chain(first, stream)) as outputs:
            try:
                async for choice, out in outputs:
                    raise_if_failed(out)
                    usage.update(choice, out)
                    text = out.text
                    if choice.index in echo and choice.index not in echoed:
                        echoed.add(choice.index)
                        text = echo[choice.index] + text
                    if not (text or out.logprobs or out.finished):
                        continue  # text held back by the detokenizer (partial character or stop string)
                    logprobs = None
                    if req.logprobs is not None:
                        logprobs = self.completion_logprobs(out.logprobs, text_offset[choice.index])
                    text_offset[choice.index] += len(text)
                    chunk = CompletionStreamResponse(id=request_id, created=created, model=req.model, choices=[
                        CompletionChoice(index=choice.index, text=text, logprobs=logprobs,
                                         finish_reason=_finish_name(out.finish_reason))])
                    yield sse(chunk)
                if req.include_usage_in_stream:
                    yield sse(CompletionStreamResponse(id=request_id, created=created, model=req.model, choices=[],
                                                       usage=usage.usage()))
            except Exception as exc:
                yield self.stream_error(exc)
        yield SSE_DONE

    async def chat_events(self, req: ChatCompletionRequest, request_id: str, choices: list[ChoiceRequest],
                          first: ChoiceOutput, stream: AsyncIterator[ChoiceOutput]) -> AsyncIterator[str]:
        created = int(time.time())
        usage = UsageTracker(choices)

        def chunk(index: int, delta: DeltaMessage, logprobs=None, finish_reason=None) -> str:
            return sse(ChatCompletionStreamResponse(id=request_id, created=created, model=req.model, choices=[
                ChatCompletionStreamChoice(index=index, delta=delta, logprobs=logprobs,
                                           finish_reason=finish_reason)]))

        # OpenAI opens every choice with a delta that carries only the role.
        for c in choices:
            yield chunk(c.index, DeltaMessage(role="assistant", content=""))
        async with contextlib.aclosing(_chain(first, stream)) as outputs:
            try:
                async for choice, out in outputs:
                    raise_if_failed(out)
                    usage.update(choice, out)
                    if not (out.text or out.logprobs or out.finished):
                        continue
                    logprobs = self.chat_logprobs(out.logprobs) if req.logprobs else None
                    delta = DeltaMessage(content=out.text) if out.text else DeltaMessage()
                    yield chunk(choice.index, delta, logprobs, _finish_name(out.finish_reason))
                if req.include_usage_in_stream:
                    yield sse(ChatCompletionStreamResponse(id=request_id, created=created, model=req.model,
                                                           choices=[], usage=usage.usage()))
            except Exception as exc:
                yield self.stream_error(exc)
        yield SSE_DONE

    def stream_error(self, exc: Exception) -> str:
        """Once a 200 stream has started, an error can only be an event; the OpenAI client raises it."""
        err = to_api_error(exc)
        if err.status_code >= 500:
            log.error("stream failed", exc_info=exc)
        self.metrics.count_error(err.status_code)
        return sse(err.to_response())

    # -- logprobs ---------------------------------------------------------------------------------------

    def completion_logprobs(self, logprobs: list[TokenLogprob] | tuple[TokenLogprob, ...], offset: int
                            ) -> CompletionLogprobs:
        """The legacy completions layout; ``offset`` is where this text starts in the choice's text."""
        result = CompletionLogprobs()
        for lp in logprobs:
            token = self.token_text(lp.token_id)
            result.tokens.append(token)
            result.token_logprobs.append(lp.logprob)
            result.top_logprobs.append({token: lp.logprob} | {self.token_text(t): v for t, v in lp.top})
            result.text_offset.append(offset)
            offset += len(token)
        return result

    def chat_logprobs(self, logprobs: list[TokenLogprob] | tuple[TokenLogprob, ...]) -> ChatChoiceLogprobs:
        def top(token_id: int, logprob: float) -> TopLogprob:
            token = self.token_text(token_id)
            return TopLogprob(token=token, logprob=logprob, bytes=list(token.encode()))

        content = []
        for lp in logprobs:
            chosen = top(lp.token_id, lp.logprob)
            content.append(ChatCompletionTokenLogprob(**chosen.model_dump(),
                                                      top_logprobs=[top(t, v) for t, v in lp.top]))
        return ChatChoiceLogprobs(content=content)

    def _echo_text(self, req: CompletionRequest, choice: ChoiceRequest) -> str:
        prompt = req.prompts[choice.prompt_index]
        return prompt if isinstance(prompt, str) else self.tokenizer.decode(prompt)


def _finish_name(reason: FinishReason | None) -> str | None:
    return None if reason is None else reason.value


# ---------------------------------------------------------------------------------------------------------
# The app


def build_app(client: AsyncEngineClient) -> FastAPI:
    """The HTTP app over a started engine client. Each app has its own metrics registry."""
    app = FastAPI(title="xdeepserve", summary="OpenAI-compatible MoE LLM serving")
    metrics = FrontendMetrics(client.stats)
    serving = OpenAIServing(client, metrics)
    app.state.serving = serving

    @app.get("/v1/models")
    async def list_models() -> Response:
        return Response(serving.models().model_dump_json(), media_type="application/json")

    @app.post("/v1/completions")
    async def create_completion(raw_request: Request) -> Response:
        return await serving.create_completion(raw_request)

    @app.post("/v1/chat/completions")
    async def create_chat_completion(raw_request: Request) -> Response:
        return await serving.create_chat_completion(raw_request)

    @app.get("/health")
    async def health() -> Response:
        if not client.healthy:
            raise APIError("The inference engine is not running", status_code=503,
                           type="service_unavailable_error", code="engine_dead")
        return JSONResponse({"status": "ok"})

    @app.get("/metrics")
    async def prometheus_metrics() -> Response:
        return Response(metrics.exposition(), media_type=CONTENT_TYPE_LATEST)

    install_error_handlers(app, metrics)
    return app


def install_error_handlers(app: FastAPI, metrics: FrontendMetrics) -> None:
    async def on_error(request: Request, exc: Exception) -> Response:
        err = to_api_error(exc)
        if err.status_code >= 500 and not isinstance(exc, (APIError, EngineDeadError)):
            log.error("unhandled error in %s %s", request.method, request.url.path, exc_info=exc)
        metrics.count_error(err.status_code)
        return error_json(err)

    async def on_client_gone(request: Request, exc: Exception) -> Response:
        return Response(status_code=CLIENT_CLOSED_REQUEST)

    # (A pydantic ValidationError is not mapped: requests are parsed by parse_request, so one that escapes is
    # a server bug and rightly a 500.)
    for exc_type in (APIError, RequestValidationError, json.JSONDecodeError, InvalidRequestError,
                     EngineDeadError, StarletteHTTPException, Exception):
        app.add_exception_handler(exc_type, on_error)
    for exc_type in (ClientGone, ClientDisconnect):
        app.add_exception_handler(exc_type, on_client_gone)


# ---------------------------------------------------------------------------------------------------------
# Running it


class _Server(uvicorn.Server):
    """uvicorn without its own signal handling: it re-raises SIGTERM after serving, which would kill the
    process before the engine is shut down. run_server owns SIGINT/SIGTERM instead."""

    @contextlib.contextmanager
    def capture_signals(self):  # uvicorn >= 0.29
        yield

    def install_signal_handlers(self) -> None:  # older uvicorn
        pass


async def serve(config: EngineConfig, host: str, port: int, *, log_level: str = "info") -> None:
    """Start the engine, serve HTTP until SIGINT/SIGTERM, then stop the server and shut the engine down.
    A second SIGINT skips the graceful wait for in-flight requests."""
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    server: _Server | None = None

    def on_signal(sig: signal.Signals) -> None:
        log.info("received %s, shutting down", sig.name)
        if stop.is_set() and server is not None:
            server.force_exit = True
        stop.set()
        if server is not None:
            server.should_exit = True

    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, on_signal, sig)
    try:
        client = await _unless_stopped(AsyncEngineClient.start(config), stop)
        if client is None:
            return
        try:
            server = _Server(uvicorn.Config(build_app(client), host=host, port=port, log_level=log_level,
                                            timeout_graceful_shutdown=10))
            if stop.is_set():
                return
            await server.serve()
        finally:
            await client.shutdown()
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)


async def _unless_stopped(awaitable: Awaitable[T], stop: asyncio.Event) -> T | None:
    """Await ``awaitable`` unless ``stop`` is set first (then cancel it and return None)."""
    task = asyncio.ensure_future(awaitable)
    stopper = asyncio.ensure_future(stop.wait())
    await asyncio.wait({task, stopper}, return_when=asyncio.FIRST_COMPLETED)
    stopper.cancel()
    if task.done():
        return task.result()
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    return None


def run_server(config: EngineConfig, host: str = "127.0.0.1", port: int = 8000, *, log_level: str = "info") -> None:
    asyncio.run(serve(config, host, port, log_level=log_level))
