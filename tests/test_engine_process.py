"""The DP group as processes: engine core + output child behind the async client."""

from __future__ import annotations

import asyncio
import os
import signal
import time

import pytest

from xdeepserve.engine.client import AsyncEngineClient, EngineDeadError
from xdeepserve.engine.config import EngineConfig
from xdeepserve.engine.llm import LLM
from xdeepserve.engine.request import FinishReason, InvalidRequestError, SamplingParams

GREEDY = SamplingParams(max_tokens=12, temperature=0.0, ignore_eos=True)


async def _collect(client, rid, ids, sp):
    text, tokens, last = "", [], None
    async for out in client.generate(rid, ids, sp):
        text += out.text
        tokens += out.token_ids
        last = out
    return text, tokens, last


def test_served_outputs_equal_offline_outputs_and_blocks_are_released(tiny_checkpoint):
    path = str(tiny_checkpoint("deepseek_v3"))
    llm = LLM(path, max_model_len=256)
    prompts = [llm.tokenizer.encode(f"Tell me a story number {i}", add_special_tokens=False) for i in range(6)]
    offline = llm.generate(prompts, GREEDY)

    async def main():
        client = await AsyncEngineClient.start(EngineConfig(model=path, max_model_len=256))
        try:
            res = await asyncio.gather(*[_collect(client, f"r{i}", p, GREEDY) for i, p in enumerate(prompts)])
            await asyncio.sleep(0.6)
            return res, client.stats()
        finally:
            await client.shutdown()

    served, stats = asyncio.run(main())
    for (text, tokens, last), ref in zip(served, offline):
        assert tokens == ref.token_ids and text == ref.text
        assert last.finish_reason is FinishReason.LENGTH and last.num_output_tokens == 12
    assert stats.num_running == 0 and stats.kv_cache_usage == 0.0 and stats.generation_tokens == 72


def test_invalid_requests_are_refused_before_reaching_the_engine(tiny_checkpoint):
    async def main():
        client = await AsyncEngineClient.start(EngineConfig(model=str(tiny_checkpoint("qwen3_moe")), max_model_len=64))
        try:
            with pytest.raises(InvalidRequestError, match="maximum context length is 64"):
                await _collect(client, "a", [5] * 60, SamplingParams(max_tokens=10))
            with pytest.raises(InvalidRequestError, match="outside the vocabulary"):
                await _collect(client, "b", [5, 10**6], SamplingParams(max_tokens=2))
            with pytest.raises(InvalidRequestError, match="empty"):
                await _collect(client, "c", [], SamplingParams(max_tokens=2))
            text, _, last = await _collect(client, "d", [5, 6, 7], SamplingParams(max_tokens=3))
            assert last.finished
        finally:
            await client.shutdown()

    asyncio.run(main())


def test_cancelling_a_stream_aborts_the_request_and_frees_its_blocks(tiny_checkpoint):
    async def main():
        client = await AsyncEngineClient.start(EngineConfig(model=str(tiny_checkpoint("qwen3_moe")), max_model_len=512))
        try:
            gen = client.generate("long", [5] * 20, SamplingParams(max_tokens=400, ignore_eos=True))
            await gen.__anext__()
            await gen.aclose()  # the consumer goes away
            deadline = time.monotonic() + 5
            while time.monotonic() < deadline:
                await asyncio.sleep(0.3)
                s = client.stats()
                if s.num_running == 0 and s.kv_cache_usage == 0.0:
                    return s
            raise AssertionError(f"request still holds resources: {client.stats()}")
        finally:
            await client.shutdown()

    stats = asyncio.run(main())
    assert stats.generation_tokens < 400


def test_stop_string_ends_the_request_in_the_output_process(tiny_checkpoint):
    path = str(tiny_checkpoint("mixtral"))
    llm = LLM(path, max_model_len=256)
    prompt = llm.tokenizer.encode("Hello world", add_special_tokens=False)
    full = llm.generate([prompt], SamplingParams(max_tokens=30, temperature=0.0, ignore_eos=True))[0]
    stop = full.text[len(full.text) // 2 : len(full.text) // 2 + 3]
    assert stop.strip(), full.text

    async def main():
        client = await AsyncEngineClient.start(EngineConfig(model=path, max_model_len=256))
        try:
            sp = SamplingParams(max_tokens=30, temperature=0.0, ignore_eos=True, stop=(stop,))
            # the id is reused at once, while the engine core may still be running the stopped request
            runs = [await _collect(client, "s", prompt, sp) for _ in range(4)]
            await asyncio.sleep(0.6)  # a stats report after the last stop-string abort
            return runs, client.stats()
        finally:
            await client.shutdown()

    runs, stats = asyncio.run(main())
    for text, _, last in runs:
        assert last.finish_reason is FinishReason.STOP
        assert text == full.text[: full.text.index(stop)]
    assert stats.num_running == 0


def test_dead_engine_fails_in_flight_requests_with_an_error_naming_it(tiny_checkpoint):
    async def main():
        client = await AsyncEngineClient.start(EngineConfig(model=str(tiny_checkpoint("qwen3_moe")), max_model_len=2048))
        try:
            gen = client.generate("victim", [5] * 10, SamplingParams(max_tokens=2000, ignore_eos=True))
            await gen.__anext__()
            os.kill(client.engine_pid, signal.SIGKILL)
            t0 = time.monotonic()
            with pytest.raises(EngineDeadError, match=rf"engine core process \(pid {client.engine_pid}\)"):
                async for _ in gen:
                    pass
            assert time.monotonic() - t0 < 3.0
            assert not client.healthy
            with pytest.raises(EngineDeadError):
                await _collect(client, "after", [5], SamplingParams(max_tokens=2))
        finally:
            await client.shutdown()

    asyncio.run(main())


def test_dead_output_process_fails_requests_instead_of_hanging(tiny_checkpoint):
    async def main():
        client = await AsyncEngineClient.start(EngineConfig(model=str(tiny_checkpoint("qwen3_moe")), max_model_len=2048))
        try:
            gen = client.generate("victim", [5] * 10, SamplingParams(max_tokens=2000, ignore_eos=True))
            await gen.__anext__()
            os.kill(client.output_pid, signal.SIGKILL)
            t0 = time.monotonic()
            with pytest.raises(EngineDeadError, match="output process"):
                async for _ in gen:
                    pass
            assert time.monotonic() - t0 < 10.0
            assert not client.healthy
        finally:
            await client.shutdown()

    asyncio.run(main())
