"""The OpenAI request models and their translation into engine requests (no server needed)."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from xdeepserve.api.protocol import (
    APIError,
    ChatCompletionRequest,
    CompletionRequest,
    fan_out,
    parse_request,
)
from xdeepserve.engine.request import SamplingParams


def completion(**fields) -> CompletionRequest:
    return parse_request(CompletionRequest, json.dumps({"model": "m", "prompt": "hi", **fields}).encode())


def chat(**fields) -> ChatCompletionRequest:
    body = {"model": "m", "messages": [{"role": "user", "content": "hi"}], **fields}
    return parse_request(ChatCompletionRequest, json.dumps(body).encode())


def test_sampling_params_carry_every_supported_parameter():
    req = completion(temperature=0.5, top_p=0.9, top_k=7, seed=3, stop="END", stop_token_ids=[2], ignore_eos=True,
                     min_tokens=1, logprobs=2, include_stop_str_in_output=True)
    assert req.to_sampling_params(max_tokens=10) == SamplingParams(
        max_tokens=10, temperature=0.5, top_p=0.9, top_k=7, seed=3, stop=("END",), stop_token_ids=(2,),
        ignore_eos=True, min_tokens=1, logprobs=2, include_stop_str_in_output=True)


def test_unset_parameters_take_the_openai_defaults():
    sp = completion().to_sampling_params(max_tokens=16)
    assert (sp.temperature, sp.top_p, sp.top_k, sp.seed, sp.stop, sp.logprobs) == (1.0, 1.0, 0, None, (), None)


def test_top_k_minus_one_means_disabled():
    assert completion(top_k=-1).to_sampling_params(4).top_k == 0


def test_chat_logprobs_map_to_top_k_alternatives():
    assert chat().to_sampling_params(4).logprobs is None
    assert chat(logprobs=True).to_sampling_params(4).logprobs == 0
    assert chat(logprobs=True, top_logprobs=3).to_sampling_params(4).logprobs == 3


def test_max_completion_tokens_takes_precedence_over_max_tokens():
    req = chat(max_tokens=5, max_completion_tokens=9)
    assert req.requested_max_tokens == 9 and req.max_tokens_param == "max_completion_tokens"
    assert chat(max_tokens=5).requested_max_tokens == 5


@pytest.mark.parametrize("prompt, batch", [("a", ["a"]), ([1, 2], [[1, 2]]), (["a", "b"], ["a", "b"]),
                                           ([[1], [2, 3]], [[1], [2, 3]]), ([], [[]])])
def test_prompt_forms_become_a_batch(prompt, batch):
    assert completion(prompt=prompt).prompts == batch


def test_fan_out_gives_distinct_ids_and_consecutive_seeds():
    sp = SamplingParams(max_tokens=4, seed=100)
    choices = fan_out("cmpl-x", [([1, 2], sp), ([3], sp)], n=3)
    assert [c.request_id for c in choices] == [f"cmpl-x-{i}" for i in range(6)]
    assert [c.index for c in choices] == list(range(6))
    assert [c.prompt_index for c in choices] == [0, 0, 0, 1, 1, 1]
    assert [c.sampling.seed for c in choices] == [100, 101, 102, 100, 101, 102]


def test_fan_out_without_seed_leaves_choices_unseeded():
    choices = fan_out("r", [([1], SamplingParams())], n=2)
    assert [c.sampling.seed for c in choices] == [None, None]


def test_a_bad_field_is_named_with_the_offending_value():
    with pytest.raises(APIError) as e:
        completion(max_tokens="ten")
    assert e.value.param == "max_tokens" and "'ten'" in e.value.message and e.value.status_code == 400


_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=10),
    lambda c: st.lists(c, max_size=3) | st.dictionaries(st.sampled_from(
        ["model", "prompt", "messages", "role", "content", "n", "stop", "max_tokens", "stream", "type", "text"]),
        c, max_size=4),
    max_leaves=12,
)


@settings(max_examples=300, deadline=None)
@given(body=_json)
@pytest.mark.parametrize("model", [CompletionRequest, ChatCompletionRequest])
def test_any_json_body_parses_or_raises_a_400(model, body):
    try:
        parse_request(model, json.dumps(body).encode())
    except APIError as e:
        assert e.status_code == 400 and e.message
