"""Bad input never breaks the server: every malformed or unsupported request is a 4xx OpenAI error body that
names the problem, and the server keeps serving afterwards."""

from __future__ import annotations

import json

import httpx
import openai
import pytest
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from xdeepserve.api.server import build_app
from xdeepserve.engine.client import EngineDeadError
from xdeepserve.engine.request import RequestOutput
from xdeepserve.model.loader import load_tokenizer

MODEL = "{model}"  # replaced by the served model's name


@pytest.fixture(scope="module")
def http(api_server):
    with httpx.Client(base_url=api_server.base_url, timeout=30) as client:
        yield client


def assert_error(response: httpx.Response, status: int, *, mentions: tuple[str, ...] = (), param: str | None = None):
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    body = response.json()
    assert set(body) == {"error"} and set(body["error"]) == {"message", "type", "param", "code"}, body
    assert isinstance(body["error"]["message"], str) and body["error"]["type"]
    for word in mentions:
        assert word in body["error"]["message"], body
    if param is not None:
        assert body["error"]["param"] == param, body
    return body["error"]


def with_model(body, model: str):
    return json.loads(json.dumps(body).replace(MODEL, model))


OK_COMPLETION = {"model": MODEL, "prompt": "hello", "max_tokens": 2}
OK_CHAT = {"model": MODEL, "messages": [{"role": "user", "content": "hello"}], "max_tokens": 2}

# (body overrides, param the error names, words the message contains)
BAD_COMPLETIONS = {
    "max_tokens is a word": ({"max_tokens": "ten"}, "max_tokens", ("integer",)),
    "max_tokens is a numeric string": ({"max_tokens": "10"}, "max_tokens", ("integer",)),
    "max_tokens is a float": ({"max_tokens": 2.5}, "max_tokens", ("integer",)),
    "max_tokens is zero": ({"max_tokens": 0}, "max_tokens", ("greater than or equal to 1",)),
    "max_tokens is negative": ({"max_tokens": -3}, "max_tokens", ("greater than or equal to 1",)),
    "max_tokens is absurd": ({"max_tokens": 10**12}, "max_tokens", ("1024", str(10**12))),
    "temperature is negative": ({"temperature": -0.5}, "temperature", ()),
    "temperature is a string": ({"temperature": "hot"}, "temperature", ("number",)),
    "top_p is zero": ({"top_p": 0}, "top_p", ()),
    "top_k below -1": ({"top_k": -2}, "top_k", ()),
    "n is zero": ({"n": 0}, "n", ()),
    "n is huge": ({"n": 10_000}, "n", ()),
    "stream is a string": ({"stream": "yes"}, "stream", ("boolean",)),
    "seed is a string": ({"seed": "abc"}, "seed", ("integer",)),
    "seed beyond int64": ({"seed": 2**70}, "seed", ()),
    "logprobs too many": ({"logprobs": 50}, "logprobs", ()),
    "stop is a number": ({"stop": 5}, "stop", ()),
    "empty stop string": ({"stop": [""]}, "stop", ("non-empty",)),
    "too many stop strings": ({"stop": [f"s{i}" for i in range(40)]}, "stop", ()),
    "stream_options without stream": ({"stream_options": {"include_usage": True}}, "stream_options", ("stream",)),
    "min_tokens above max_tokens": ({"min_tokens": 5, "max_tokens": 2}, None, ("min_tokens",)),
    "missing prompt": ({"prompt": None}, "prompt", ()),
    "prompt is a bool": ({"prompt": True}, "prompt", ()),
    "prompt mixes text and ids": ({"prompt": ["a", 1]}, "prompt", ()),
    "prompt of floats": ({"prompt": [1.5, 2.0]}, "prompt", ()),
    "empty prompt string": ({"prompt": ""}, "prompt", ("empty",)),
    "empty prompt list": ({"prompt": []}, "prompt", ("empty",)),
    "empty prompt in a batch": ({"prompt": [[1, 2], []]}, "prompt[1]", ("empty",)),
    "token id beyond the vocabulary": ({"prompt": [1, 10**6]}, "prompt", ("1000000", "vocabulary")),
    "negative token id": ({"prompt": [1, -1]}, "prompt", ("-1", "vocabulary")),
    "stop token id beyond the vocabulary": ({"stop_token_ids": [10**6]}, "stop_token_ids", ("vocabulary",)),
    "prompt longer than the context": ({"prompt": [5] * 1100}, "prompt", ("1024", "1100")),
    "prompt plus max_tokens over the context": ({"prompt": [5] * 1000, "max_tokens": 100}, "max_tokens",
                                                ("1024", "1100", "1000", "100")),
    "suffix": ({"suffix": "the end"}, "suffix", ("suffix",)),
    "best_of above n": ({"best_of": 3}, "best_of", ("best_of",)),
    "echo with logprobs": ({"echo": True, "logprobs": 1}, "echo", ("echo",)),
    "logit_bias": ({"logit_bias": {"5": 10}}, "logit_bias", ("logit_bias",)),
    "presence_penalty": ({"presence_penalty": 0.5}, "presence_penalty", ("presence_penalty",)),
    "frequency_penalty": ({"frequency_penalty": 0.5}, "frequency_penalty", ("frequency_penalty",)),
    "response_format json": ({"response_format": {"type": "json_object"}}, "response_format", ("response_format",)),
}

BAD_CHATS = {
    "messages missing": ({"messages": None}, "messages", ()),
    "messages empty": ({"messages": []}, "messages", ("at least 1",)),
    "messages not a list": ({"messages": "hello"}, "messages", ()),
    "bad role": ({"messages": [{"role": "wizard", "content": "hi"}]}, "messages[0].role", ("wizard",)),
    "tool role": ({"messages": [{"role": "tool", "content": "hi"}]}, "messages[0].role", ()),
    "role missing": ({"messages": [{"content": "hi"}]}, "messages[0].role", ("role",)),
    "content missing": ({"messages": [{"role": "user"}]}, "messages[0].content", ("content",)),
    "content is a number": ({"messages": [{"role": "user", "content": 42}]}, "messages[0].content", ()),
    "image content": ({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}]},
                      "messages[0].content[0]", ("image_url",)),
    "tool calls in history": ({"messages": [{"role": "assistant", "content": "",
                                             "tool_calls": [{"id": "1", "type": "function"}]}]},
                              "messages[0].tool_calls", ()),
    "tools": ({"tools": [{"type": "function", "function": {"name": "f"}}]}, "tools", ("tools",)),
    "tool_choice": ({"tool_choice": "auto"}, "tool_choice", ("tool_choice",)),
    "functions": ({"functions": [{"name": "f"}]}, "functions", ("functions",)),
    "response_format json_schema": ({"response_format": {"type": "json_schema", "json_schema": {}}},
                                    "response_format", ()),
    "echo": ({"echo": True}, "echo", ("echo",)),
    "top_logprobs without logprobs": ({"top_logprobs": 2}, "top_logprobs", ("logprobs",)),
    "top_logprobs too many": ({"logprobs": True, "top_logprobs": 99}, "top_logprobs", ()),
    "max_completion_tokens absurd": ({"max_completion_tokens": 10**9}, "max_completion_tokens",
                                     ("1024", "max_completion_tokens")),
    "max_tokens zero": ({"max_tokens": 0}, "max_tokens", ()),
    "messages longer than the context": ({"messages": [{"role": "user", "content": "hello " * 1100}]},
                                         "messages", ("1024",)),
}


def _drop_none(body: dict) -> dict:
    return {k: v for k, v in body.items() if v is not None}


@pytest.mark.parametrize("case", list(BAD_COMPLETIONS), ids=list(BAD_COMPLETIONS))
@pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
def test_bad_completion_request_is_a_400_naming_the_problem(http, api_server, case, stream):
    overrides, param, mentions = BAD_COMPLETIONS[case]
    body = _drop_none({**with_model(OK_COMPLETION, api_server.model), **overrides})
    if stream and "stream" not in overrides and "stream_options" not in overrides:
        body["stream"] = True  # a bad streaming request is refused before the stream starts
    assert_error(http.post("/v1/completions", json=body), 400, mentions=mentions, param=param)


@pytest.mark.parametrize("case", list(BAD_CHATS), ids=list(BAD_CHATS))
def test_bad_chat_request_is_a_400_naming_the_problem(http, api_server, case):
    overrides, param, mentions = BAD_CHATS[case]
    body = _drop_none({**with_model(OK_CHAT, api_server.model), **overrides})
    assert_error(http.post("/v1/chat/completions", json=body), 400, mentions=mentions, param=param)


@pytest.mark.parametrize("path", ["/v1/completions", "/v1/chat/completions"])
@pytest.mark.parametrize("raw", [b"", b"{", b'{"model": "x",}', b"not json", b"\xff\xfe\x00", b"[" * 100_000,
                                 b"[]", b"null", b'"a string"', b"42"],
                         ids=["empty", "unclosed", "trailing-comma", "text", "binary", "deep-nesting", "array",
                              "null", "string", "number"])
def test_malformed_json_body_is_a_400(http, path, raw):
    r = http.post(path, content=raw, headers={"content-type": "application/json"})
    err = assert_error(r, 400)
    assert "JSON" in err["message"]


@pytest.mark.parametrize("number", [b"NaN", b"Infinity", b"-Infinity", b"1e400"])
def test_non_finite_numbers_are_a_400(http, api_server, number):
    raw = b'{"model": "%s", "prompt": "hi", "temperature": %s}' % (api_server.model.encode(), number)
    r = http.post("/v1/completions", content=raw, headers={"content-type": "application/json"})
    assert_error(r, 400, param="temperature")


def test_unknown_model_is_a_404_model_not_found(http):
    for path, body in (("/v1/completions", OK_COMPLETION), ("/v1/chat/completions", OK_CHAT)):
        err = assert_error(http.post(path, json=with_model(body, "gpt-17")), 404, mentions=("gpt-17",),
                           param="model")
        assert err["code"] == "model_not_found"


def test_missing_model_is_a_400(http):
    assert_error(http.post("/v1/completions", json={"prompt": "hi"}), 400, mentions=("model",), param="model")


def test_unknown_route_and_wrong_method_are_json_errors(http):
    assert_error(http.get("/v1/nothing-here"), 404)
    assert_error(http.get("/v1/completions"), 405)
    assert_error(http.post("/v1/models"), 405)


def test_harmless_unknown_fields_are_ignored(http, api_server):
    body = {**with_model(OK_COMPLETION, api_server.model), "user": "u1", "metadata": {"a": "b"},
            "some_future_field": 1, "presence_penalty": 0, "tools": [], "response_format": {"type": "text"}}
    assert http.post("/v1/completions", json=body).status_code == 200


def test_official_client_raises_typed_errors(api_server):
    client = openai.OpenAI(base_url=f"{api_server.base_url}/v1", api_key="unused", max_retries=0)
    with pytest.raises(openai.BadRequestError) as bad:
        client.chat.completions.create(model=api_server.model, messages=[{"role": "user", "content": "hi"}],
                                       tools=[{"type": "function", "function": {"name": "f"}}])
    assert bad.value.code == "unsupported_parameter" and bad.value.param == "tools"
    with pytest.raises(openai.NotFoundError):
        client.completions.create(model="gpt-17", prompt="hi")


def test_errors_are_counted_in_metrics(http):
    http.post("/v1/completions", content=b"{")
    metrics = http.get("/metrics").text
    assert 'xds_request_errors_total{code="400"}' in metrics


# ---- a dead engine is a 503, not a 500 ---------------------------------------------------------------------------


class DeadEngine:
    """An engine client whose engine process has died (the state the client's watchdog reports)."""

    def __init__(self, model_dir):
        self.tokenizer = load_tokenizer(str(model_dir))
        self.model_name = "dead"
        self.max_model_len = 64
        self.vocab_size = self.tokenizer.vocab_size
        self.eos_token_ids = ()
        self.healthy = False

    async def generate(self, request_id, prompt_token_ids, sampling):
        raise EngineDeadError("engine core process (pid 1) exited with code -9")
        yield  # an async generator, like the real one

    async def abort(self, request_id):
        pass

    def stats(self):
        raise EngineDeadError("engine core process (pid 1) exited with code -9")


def test_dead_engine_gives_503_and_health_fails(api_server):
    with TestClient(build_app(DeadEngine(api_server.model_dir)), raise_server_exceptions=False) as client:
        err = assert_error(client.get("/health"), 503)
        assert err["code"] == "engine_dead"
        for stream in (False, True):
            r = client.post("/v1/completions", json={"model": "dead", "prompt": "hi", "max_tokens": 2,
                                                     "stream": stream})
            assert assert_error(r, 503, mentions=("exited with code -9",))["code"] == "engine_dead"
        r = client.post("/v1/chat/completions", json={"model": "dead", "max_tokens": 2,
                                                      "messages": [{"role": "user", "content": "hi"}]})
        assert_error(r, 503)
        metrics = client.get("/metrics")
        assert metrics.status_code == 200 and 'xds_request_errors_total{code="503"}' in metrics.text


class DyingEngine(DeadEngine):
    """The engine dies after the first token of every request."""

    def __init__(self, model_dir):
        super().__init__(model_dir)
        self.healthy = True

    async def generate(self, request_id, prompt_token_ids, sampling):
        yield RequestOutput(request_id, "x", (5,), num_prompt_tokens=len(prompt_token_ids), num_output_tokens=1)
        raise EngineDeadError("engine core process (pid 1) exited with code -9")


def test_engine_dying_mid_request_is_a_503_or_an_error_event(api_server):
    with TestClient(build_app(DyingEngine(api_server.model_dir)), raise_server_exceptions=False) as client:
        body = {"model": "dead", "prompt": "hi", "max_tokens": 4}
        assert_error(client.post("/v1/completions", json=body), 503, mentions=("exited with code -9",))
        events = client.post("/v1/completions", json={**body, "stream": True}).text.split("\n\n")
        assert json.loads(events[0].removeprefix("data: "))["choices"][0]["text"] == "x"
        assert json.loads(events[1].removeprefix("data: "))["error"]["code"] == "engine_dead"
        assert events[2] == "data: [DONE]"


def test_context_error_message_states_both_numbers_exactly(http, api_server):
    body = {**with_model(OK_COMPLETION, api_server.model), "prompt": [5] * 1000, "max_tokens": 30}
    err = assert_error(http.post("/v1/completions", json=body), 400)
    assert "maximum context length is 1024 tokens" in err["message"]
    assert "1030 tokens (1000 in the prompt, 30 for the completion)" in err["message"]
    assert err["code"] == "context_length_exceeded"


# ---- fuzzing: any JSON value in any field is answered, never with a server error ----------------------------------

_json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=12),
    lambda children: st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=8), children, max_size=3),
    max_leaves=8,
)
# max_tokens is left out: a valid random value would make a slow (but correct) long generation.
_COMPLETION_FIELDS = ["model", "prompt", "temperature", "top_p", "top_k", "n", "stop", "stream", "stream_options",
                      "logprobs", "seed", "echo", "best_of", "suffix", "min_tokens", "stop_token_ids", "ignore_eos",
                      "logit_bias", "user", "unknown_field"]
_CHAT_FIELDS = ["messages", "logprobs", "top_logprobs", "tools", "tool_choice", "response_format", "stream",
                "stream_options", "n", "stop", "seed"]
_fuzz = settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


@_fuzz
@given(field=st.sampled_from(_COMPLETION_FIELDS), value=_json_values)
def test_fuzzed_completion_field_never_causes_a_server_error(http, api_server, field, value):
    body = {**with_model(OK_COMPLETION, api_server.model), field: value}
    r = http.post("/v1/completions", json=body)
    assert r.status_code in (200, 400, 404), r.text


@_fuzz
@given(field=st.sampled_from(_CHAT_FIELDS), value=_json_values)
def test_fuzzed_chat_field_never_causes_a_server_error(http, api_server, field, value):
    body = {**with_model(OK_CHAT, api_server.model), field: value}
    r = http.post("/v1/chat/completions", json=body)
    assert r.status_code in (200, 400), r.text


def test_server_still_serves_after_the_bad_input(http, api_server):
    """Runs last in this module: nothing above may have hurt the server."""
    r = http.post("/v1/completions", json={**with_model(OK_COMPLETION, api_server.model), "max_tokens": 3,
                                           "ignore_eos": True})
    assert r.status_code == 200 and r.json()["usage"]["completion_tokens"] == 3
    assert http.get("/health").status_code == 200
    assert "Traceback" not in api_server.log_tail()
