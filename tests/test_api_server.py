"""The OpenAI-compatible server, driven by the official ``openai`` client against a real server process."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass

import httpx
import openai
import pytest
from prometheus_client.parser import text_string_to_metric_families
from transformers import AutoTokenizer

PROMPT = "The quick brown fox"
GREEDY = {"temperature": 0.0}
EXACT_LENGTH = {"ignore_eos": True}  # extension: output lengths are exactly max_tokens


@dataclass
class API:
    """The official client, bound to the served model."""

    client: openai.OpenAI
    model: str

    def complete(self, **kwargs) -> openai.types.Completion:
        return self.client.completions.create(**{"model": self.model, **kwargs})

    def chat(self, **kwargs) -> openai.types.chat.ChatCompletion:
        return self.client.chat.completions.create(**{"model": self.model, **kwargs})


@pytest.fixture(scope="module")
def api(api_server) -> API:
    client = openai.OpenAI(base_url=f"{api_server.base_url}/v1", api_key="unused", max_retries=0, timeout=60)
    return API(client, api_server.model)


@pytest.fixture(scope="module")
def tokenizer(api_server):
    return AutoTokenizer.from_pretrained(api_server.model_dir)


def scrape(api_server) -> dict[str, float]:
    """/metrics as {sample name with labels: value}."""
    text = httpx.get(f"{api_server.base_url}/metrics").text
    samples = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            labels = ",".join(f'{k}="{v}"' for k, v in sorted(s.labels.items()))
            samples[f"{s.name}{{{labels}}}" if labels else s.name] = s.value
    return samples


def stream_text(stream) -> tuple[dict[int, str], dict[int, str | None], list]:
    """Concatenate a completion stream per choice: (texts, finish reasons, chunks)."""
    texts: dict[int, str] = {}
    finish: dict[int, str | None] = {}
    chunks = list(stream)
    for chunk in chunks:
        for choice in chunk.choices:
            texts[choice.index] = texts.get(choice.index, "") + choice.text
            finish[choice.index] = choice.finish_reason or finish.get(choice.index)
    return texts, finish, chunks


# ---- discovery and health -----------------------------------------------------------------------------------


def test_models_lists_the_served_model(api, api_server):
    models = api.client.models.list().data
    assert [m.id for m in models] == [api_server.model]
    assert models[0].model_extra["max_model_len"] == api_server.max_model_len


def test_health_is_ok_while_the_engine_runs(api_server):
    r = httpx.get(f"{api_server.base_url}/health")
    assert r.status_code == 200 and r.json() == {"status": "ok"}


# ---- completions ----------------------------------------------------------------------------------------------


def test_completion_returns_max_tokens_tokens_and_usage(api, tokenizer):
    r = api.complete(prompt=PROMPT, max_tokens=8, extra_body=EXACT_LENGTH, **GREEDY)
    assert r.object == "text_completion" and r.id.startswith("cmpl-")
    assert len(r.choices) == 1 and r.choices[0].finish_reason == "length"
    assert r.usage.prompt_tokens == len(tokenizer.encode(PROMPT))
    assert r.usage.completion_tokens == 8 and r.usage.total_tokens == r.usage.prompt_tokens + 8


def test_streamed_greedy_completion_equals_the_non_streamed_one(api):
    full = api.complete(prompt=PROMPT, max_tokens=12, extra_body=EXACT_LENGTH, **GREEDY)
    texts, finish, _ = stream_text(api.complete(prompt=PROMPT, max_tokens=12, stream=True,
                                            extra_body=EXACT_LENGTH, **GREEDY))
    assert texts == {0: full.choices[0].text}
    assert finish == {0: "length"}


def test_token_id_prompt_is_the_same_as_its_text(api, tokenizer):
    ids = tokenizer.encode(PROMPT)
    by_text = api.complete(prompt=PROMPT, max_tokens=6, extra_body=EXACT_LENGTH, **GREEDY)
    by_ids = api.complete(prompt=ids, max_tokens=6, extra_body=EXACT_LENGTH, **GREEDY)
    assert by_ids.choices[0].text == by_text.choices[0].text
    assert by_ids.usage.prompt_tokens == len(ids)


def test_stream_with_include_usage_ends_with_a_usage_only_chunk(api):
    stream = api.complete(prompt=PROMPT, max_tokens=5, stream=True, stream_options={"include_usage": True},
                      extra_body=EXACT_LENGTH, **GREEDY)
    _, _, chunks = stream_text(stream)
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == 5
    assert all(c.usage is None for c in chunks[:-1])


def test_batched_prompts_give_one_choice_per_prompt_in_order(api):
    prompts = ["Hello world", "Paris is the capital"]
    single = [api.complete(prompt=p, max_tokens=5, extra_body=EXACT_LENGTH, **GREEDY).choices[0].text
              for p in prompts]
    batched = api.complete(prompt=prompts, max_tokens=5, extra_body=EXACT_LENGTH, **GREEDY)
    assert [c.index for c in batched.choices] == [0, 1]
    assert [c.text for c in batched.choices] == single


def test_echo_prepends_the_prompt(api):
    r = api.complete(prompt=PROMPT, max_tokens=4, echo=True, extra_body=EXACT_LENGTH, **GREEDY)
    assert r.choices[0].text.startswith(PROMPT) and len(r.choices[0].text) > len(PROMPT)


# ---- sampling parameters ---------------------------------------------------------------------------------------


def test_n_fans_out_into_distinct_choices(api, tokenizer):
    r = api.complete(prompt=PROMPT, max_tokens=10, n=2, temperature=1.0, seed=7, extra_body=EXACT_LENGTH)
    assert sorted(c.index for c in r.choices) == [0, 1]
    assert r.choices[0].text != r.choices[1].text  # seeds 7 and 8
    assert r.usage.completion_tokens == 20
    assert r.usage.prompt_tokens == len(tokenizer.encode(PROMPT))  # the prompt counts once, not once per choice


def test_n_streams_every_choice_to_its_finish(api):
    texts, finish, _ = stream_text(api.complete(prompt=PROMPT, max_tokens=6, n=2, stream=True, temperature=1.0,
                                            seed=3, extra_body=EXACT_LENGTH))
    assert finish == {0: "length", 1: "length"} and set(texts) == {0, 1}


def test_same_seed_reproduces_a_sample_and_another_seed_does_not(api):
    def sample(seed: int) -> str:
        return api.complete(prompt=PROMPT, max_tokens=16, temperature=1.0, seed=seed,
                        extra_body=EXACT_LENGTH).choices[0].text

    first = sample(1234)
    assert sample(1234) == first
    assert sample(4321) != first


def test_completion_logprobs_cover_every_token_with_top_alternatives(api):
    r = api.complete(prompt=PROMPT, max_tokens=6, logprobs=3, extra_body=EXACT_LENGTH, **GREEDY)
    lp = r.choices[0].logprobs
    assert len(lp.tokens) == len(lp.token_logprobs) == len(lp.top_logprobs) == len(lp.text_offset) == 6
    for chosen, top in zip(lp.token_logprobs, lp.top_logprobs, strict=True):
        assert chosen <= 0.0 and 1 <= len(top) <= 4  # the sampled token plus the top 3
        assert chosen == pytest.approx(max(top.values()), abs=1e-5)  # greedy picks the most likely token
    assert lp.text_offset == sorted(lp.text_offset)


def test_stop_string_truncates_the_output_before_it(api):
    reference = api.complete(prompt=PROMPT, max_tokens=16, extra_body=EXACT_LENGTH, **GREEDY).choices[0].text
    # a stop string taken from the middle of the greedy output; the output must end right before it
    start = next(i for i in range(2, len(reference) - 2) if reference[i:i + 2].strip())
    stop = reference[start:start + 2]
    expected = reference[: reference.index(stop)]
    r = api.complete(prompt=PROMPT, max_tokens=16, stop=[stop], **GREEDY)
    assert r.choices[0].text == expected and r.choices[0].finish_reason == "stop"
    texts, finish, _ = stream_text(api.complete(prompt=PROMPT, max_tokens=16, stop=stop, stream=True, **GREEDY))
    assert texts == {0: expected} and finish == {0: "stop"}


# ---- chat --------------------------------------------------------------------------------------------------------

MESSAGES = [{"role": "system", "content": "You are terse."}, {"role": "user", "content": "What is the capital?"}]


def test_chat_is_a_completion_of_the_chat_template(api, tokenizer):
    templated = tokenizer.apply_chat_template(MESSAGES, add_generation_prompt=True, tokenize=False)
    ids = tokenizer.encode(templated, add_special_tokens=False)
    chat = api.chat(messages=MESSAGES, max_tokens=8,
                                          extra_body=EXACT_LENGTH, **GREEDY)
    plain = api.complete(prompt=ids, max_tokens=8, extra_body=EXACT_LENGTH, **GREEDY)
    assert chat.object == "chat.completion" and chat.choices[0].message.role == "assistant"
    assert chat.choices[0].message.content == plain.choices[0].text
    assert chat.usage.prompt_tokens == len(ids) and chat.usage.completion_tokens == 8


def test_chat_stream_opens_with_the_role_and_closes_with_finish_reason_and_usage(api):
    stream = api.chat(messages=MESSAGES, max_completion_tokens=6,
                                            stream=True, stream_options={"include_usage": True},
                                            extra_body=EXACT_LENGTH, **GREEDY)
    chunks = list(stream)
    full = api.chat(messages=MESSAGES, max_completion_tokens=6,
                                          extra_body=EXACT_LENGTH, **GREEDY)
    assert chunks[0].object == "chat.completion.chunk" and chunks[0].choices[0].delta.role == "assistant"
    content = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert content == full.choices[0].message.content
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "length"
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == 6


def test_chat_logprobs_list_each_token_with_top_logprobs(api):
    r = api.chat(messages=MESSAGES, max_tokens=5, logprobs=True,
                                       top_logprobs=2, extra_body=EXACT_LENGTH, **GREEDY)
    content = r.choices[0].logprobs.content
    assert len(content) == 5
    for token in content:
        assert token.logprob <= 0.0 and len(token.top_logprobs) == 2
        assert token.logprob == pytest.approx(token.top_logprobs[0].logprob, abs=1e-5)
        assert token.bytes == list(token.token.encode())


def test_chat_without_max_tokens_may_use_the_rest_of_the_context(api, api_server, tokenizer):
    messages = [{"role": "user", "content": "hello " * 980}]
    templated = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    prompt_tokens = len(tokenizer.encode(templated, add_special_tokens=False))
    assert api_server.max_model_len - 100 < prompt_tokens < api_server.max_model_len  # leaves a little room
    r = api.chat(messages=messages, extra_body=EXACT_LENGTH, **GREEDY)
    assert r.choices[0].finish_reason == "length"
    assert r.usage.total_tokens == api_server.max_model_len


# ---- concurrency, cancellation and metrics ---------------------------------------------------------------------


def test_concurrent_streams_all_complete(api_server):
    async def main():
        aclient = openai.AsyncOpenAI(base_url=f"{api_server.base_url}/v1", api_key="unused", max_retries=0)

        async def one(i: int) -> str:
            stream = await aclient.completions.create(model=api_server.model, prompt=f"Story number {i}",
                                                      max_tokens=12, stream=True, temperature=0.0,
                                                      extra_body=EXACT_LENGTH)
            return "".join([c.choices[0].text async for c in stream if c.choices])

        try:
            return await asyncio.gather(*(one(i) for i in range(8)))
        finally:
            await aclient.close()

    assert len(asyncio.run(main())) == 8


def test_closing_a_stream_aborts_its_engine_request(api, api_server):
    aborted_before = scrape(api_server).get('xds_requests_total{finish_reason="abort"}', 0.0)
    room = api_server.max_model_len - 8
    stream = api.complete(prompt=PROMPT, max_tokens=room, stream=True, extra_body=EXACT_LENGTH, **GREEDY)
    for i, _ in enumerate(stream):
        if i == 1:
            break
    stream.close()
    deadline = time.monotonic() + 5
    while True:
        samples = scrape(api_server)
        if (samples["xds_num_requests_running"] == 0
                and samples['xds_requests_total{finish_reason="abort"}'] == aborted_before + 1):
            break
        assert time.monotonic() < deadline, f"request not freed: {samples}"
        time.sleep(0.2)


def test_a_client_that_leaves_a_non_streaming_request_aborts_it(api_server):
    aborted_before = scrape(api_server).get('xds_requests_total{finish_reason="abort"}', 0.0)
    body = {"model": api_server.model, "prompt": PROMPT, "n": 16, "max_tokens": api_server.max_model_len - 8,
            "ignore_eos": True}
    with pytest.raises(httpx.TimeoutException):
        httpx.post(f"{api_server.base_url}/v1/completions", json=body, timeout=0.5)
    deadline = time.monotonic() + 5
    while True:
        samples = scrape(api_server)
        if (samples["xds_num_requests_running"] == 0
                and samples['xds_requests_total{finish_reason="abort"}'] == aborted_before + 16):
            break
        assert time.monotonic() < deadline, f"requests not freed: {samples}"
        time.sleep(0.2)


def test_metrics_expose_frontend_latencies_and_engine_gauges(api, api_server):
    api.complete(prompt=PROMPT, max_tokens=4, extra_body=EXACT_LENGTH, **GREEDY)
    with pytest.raises(openai.NotFoundError):
        api.complete(model="no-such-model", prompt=PROMPT, max_tokens=4)
    samples = scrape(api_server)
    for name in ("xds_time_to_first_token_seconds_count", "xds_inter_token_latency_seconds_count",
                 "xds_e2e_request_latency_seconds_count", "xds_prompt_tokens_total", "xds_generation_tokens_total",
                 'xds_requests_total{finish_reason="length"}'):
        assert samples[name] > 0, name
    assert samples['xds_request_errors_total{code="404"}'] >= 1
    for name in ("xds_num_requests_waiting", "xds_num_requests_running", "xds_kv_cache_usage_ratio",
                 "xds_prefix_cache_hit_tokens_total", "xds_num_preemptions_total"):
        assert name in samples, name
    assert 0.0 <= samples["xds_kv_cache_usage_ratio"] <= 1.0


# ---- xds bench -------------------------------------------------------------------------------------------------


def test_bench_sends_every_request_with_exact_lengths(api_server):
    from xdeepserve.bench.client import run_bench

    result = run_bench(api_server.base_url, None, num_requests=6, concurrency=3, input_len_range=(8, 16),
                       output_len_range=(4, 4), seed=0)
    assert (result.model, result.completed, result.errors) == (api_server.model, 6, 0)
    assert result.output_tokens == 24 and 6 * 8 <= result.input_tokens <= 6 * 16
    assert 0 < result.ttft_p50_ms <= result.ttft_p99_ms and 0 < result.tpot_p50_ms <= result.tpot_p99_ms
    assert result.output_throughput > 0 and result.request_throughput > 0
