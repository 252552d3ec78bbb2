"""A disaggregated deployment as users run it: `xds launch`'s processes (2 frontends on one port, 2 job
executors, 2 prefill instances, decode DP groups with their own output processes, KV over XCCL), driven
with the official openai client. Greedy answers equal the colocated engine's, on one host and on two
simulated hosts (pairs over gloo); a small decode KV pool back-pressures without losing a request or a
block."""

from __future__ import annotations

import asyncio
import concurrent.futures
import random
import re
import textwrap
import time

import httpx
import openai
import pytest

from xdeepserve.api.launch import free_port
from xdeepserve.cli import DEMO_MODEL
from xdeepserve.engine.llm import LLM
from xdeepserve.engine.request import SamplingParams
from xdeepserve.pd.launch import Deployment
from xdeepserve.pd.spec import SpecError, load_spec
from xdeepserve.train_demo import heldout_questions, prompt_text

pytestmark = pytest.mark.timeout(600)

ENGINE = "{max_model_len: 256, max_num_batched_tokens: 512, num_kv_blocks: 256}"


def _workload(n: int, seed: int) -> list[tuple[str, int, bool]]:
    """(prompt text, max_tokens, stream): demo questions (short prompts) and long prompts (a filler
    paragraph before the question, over the deployment's long-prompt threshold)."""
    rng = random.Random(seed)
    questions = [ex.question for exs in heldout_questions(20).values() for ex in exs]
    out = []
    for i in range(n):
        q = rng.choice(questions)
        if i % 4 == 3:
            filler = " ".join(rng.choice(["alpha", "beta", "gamma", "delta"]) for _ in range(rng.randint(15, 30)))
            q = f"{filler}. {q}"
        out.append((prompt_text(q), rng.randint(4, 16), i % 2 == 0))
    return out


def _reference(work) -> list[tuple[str, str]]:
    llm = LLM(str(DEMO_MODEL), max_model_len=256, num_kv_blocks=256)
    outs = []
    for text, max_tokens, _ in work:
        o = llm.generate([text], SamplingParams(max_tokens=max_tokens, temperature=0.0))[0]
        outs.append((o.text, o.finish_reason.value))
    return outs


async def _run(base_url: str, work) -> list[tuple[str, str]]:
    client = openai.AsyncOpenAI(base_url=base_url, api_key="unused", max_retries=0, timeout=120)

    async def one(text: str, max_tokens: int, stream: bool) -> tuple[str, str]:
        if not stream:
            r = await client.completions.create(model="demo_model", prompt=text, max_tokens=max_tokens, temperature=0)
            return r.choices[0].text, r.choices[0].finish_reason
        parts, reason = [], None
        async for chunk in await client.completions.create(model="demo_model", prompt=text, max_tokens=max_tokens,
                                                           temperature=0, stream=True):
            parts.append(chunk.choices[0].text)
            reason = chunk.choices[0].finish_reason or reason
        return "".join(parts), reason

    try:
        return await asyncio.gather(*(one(*w) for w in work))
    finally:
        await client.close()


def _spec(tmp_path, body: str, name: str = "deploy.yaml"):
    path = tmp_path / name
    path.write_text(textwrap.dedent(body))
    return path


@pytest.fixture(scope="module")
def work():
    w = _workload(64, seed=7)
    return w, _reference(w)


def test_one_host_pd_deployment_matches_colocated(tmp_path, work):
    w, expected = work
    port = free_port()
    path = _spec(tmp_path, f"""
        model: {DEMO_MODEL}
        engine: {ENGINE}
        frontends: {{count: 2, port: {port}}}
        executors: {{count: 2}}
        prefill:
          - {{dp_groups: 1, prompts: short}}
          - {{dp_groups: 1, prompts: long}}
        decode:
          - {{dp_groups: 2, engine: {{block_size: 8, num_kv_blocks: 400}}}}
        long_prompt_tokens: 64
    """)
    with Deployment(path, log_dir=tmp_path / "logs") as dep:
        got = asyncio.run(_run(dep.base_url, w))
        assert got == expected
        # both prefill instances and both decode groups served requests
        for name in ("prefill-0.0", "prefill-1.0", "decode-0.0", "decode-0.1"):
            stats = _group_load(dep, name)["stats"]
            assert stats["prompt_tokens"] > 0 or stats["generation_tokens"] > 0, name
        logs = (tmp_path / "logs" / "decode-0.0.log").read_text()
        assert "XCCL pair with prefill-0.0 over shm" in logs


def test_two_hosts_with_small_decode_pool_back_pressures_and_matches(tmp_path, work):
    w, expected = work
    port = free_port()
    path = _spec(tmp_path, f"""
        model: {DEMO_MODEL}
        hosts:
          host-a: {{address: 127.0.0.1}}
          host-b: {{address: 127.0.0.1}}
        engine: {ENGINE}
        frontends: {{count: 2, port: {port}, host: host-a}}
        executors: {{count: 2, host: host-a}}
        prefill:
          - {{dp_groups: 2, host: host-a}}
        decode:
          - {{dp_groups: 1, host: host-b, engine: {{num_kv_blocks: 24}}}}
    """)
    # one launcher per host, as on two machines: host-a hosts the rendezvous, host-b joins it
    rendezvous = ("127.0.0.1", free_port())
    host_a = Deployment(path, host_id="host-a", rendezvous=rendezvous, log_dir=tmp_path / "logs")
    host_b = Deployment(path, host_id="host-b", rendezvous=rendezvous, log_dir=tmp_path / "logs")
    assert {n for _, n in host_b.spec.processes("host-b")} == {"decode-0.0", "decode-0"}
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        started = [pool.submit(host_a.start), pool.submit(host_b.start)]
        for f in started:
            f.result()
    try:
        dep = host_a
        peak = {"parked": 0.0, "awaiting": 0.0}
        done = False

        async def watch() -> None:
            async with httpx.AsyncClient() as http:
                while not done:
                    text = (await http.get(dep.base_url.removesuffix("/v1") + "/metrics")).text
                    for key, metric in (("parked", "xds_num_requests_parked"), ("awaiting", "xds_num_requests_awaiting_kv")):
                        m = re.search(rf"^{metric} ([0-9.e+-]+)$", text, re.M)
                        peak[key] = max(peak[key], float(m.group(1)))
                    await asyncio.sleep(0.05)

        async def main():
            nonlocal done
            watcher = asyncio.create_task(watch())
            try:
                return await _run(dep.base_url, w)
            finally:
                done = True
                await watcher

        got = asyncio.run(main())
        assert got == expected
        assert peak["parked"] + peak["awaiting"] > 0, "the small decode pool never made requests wait"
        logs = (tmp_path / "logs" / "decode-0.0.log").read_text()
        assert "XCCL pair with prefill-0.0 over gloo" in logs
        # nothing leaks: every block free again, nothing parked or waiting, on every group
        deadline = time.monotonic() + 10
        while True:
            loads = {n: _group_load(dep, n) for n in ("prefill-0.0", "prefill-0.1", "decode-0.0")}
            if all(x["used_blocks"] == 0 and x["parked"] == 0 and x["batch"] == 0 for x in loads.values()):
                break
            assert time.monotonic() < deadline, loads
            time.sleep(0.2)
    finally:
        host_b.stop()
        host_a.stop()


def _group_load(dep: Deployment, name: str) -> dict:
    import datetime
    import json

    import torch.distributed as dist

    store = dist.TCPStore(dep.rendezvous[0], dep.rendezvous[1], is_master=False, timeout=datetime.timedelta(seconds=10))
    return json.loads(store.get(f"load/{name}"))


def test_bad_deployment_files_are_refused_by_key(tmp_path):
    cases = {
        "prefill: [{dp_groups: 0}]\ndecode: [{}]": "prefill[0].dp_groups",
        "prefill: [{}]\ndecode: [{engine: {nope: 1}}]": "decode[0].engine: unknown key 'nope'",
        "prefill: [{host: b}]\ndecode: [{}]": "prefill[0].host: unknown host 'b'",
        "decode: [{}]": "prefill: a disaggregated deployment needs",
        "colocated: {}\nprefill: [{}]": "colocated: a colocated deployment has no 'prefill'",
        "prefill: [{prompts: huge}]\ndecode: [{}]": "prefill[0].prompts",
        "rendezvous: nowhere\nprefill: [{}]\ndecode: [{}]": "rendezvous: expected HOST:PORT",
    }
    for i, (body, message) in enumerate(cases.items()):
        path = tmp_path / f"bad{i}.yaml"
        path.write_text(body)
        with pytest.raises(SpecError, match=re.escape(message)):
            load_spec(path)


def test_colocated_forms_are_valid_specs(tmp_path):
    single = tmp_path / "one.yaml"
    single.write_text("model: demo\ncolocated: {port: 8123}\n")
    spec = load_spec(single)
    assert spec.colocated and spec.port == 8123 and not spec.instances
    behind = tmp_path / "mixed.yaml"
    behind.write_text("colocated:\n  - {dp_groups: 2}\nfrontends: {count: 2}\n")
    spec = load_spec(behind)
    assert not spec.colocated and [i.role for i in spec.instances] == ["colocated"]
    assert spec.instances[0].group_names == ["colocated-0.0", "colocated-0.1"]
    assert [name for _, name in spec.processes()] == ["colocated-0.0", "colocated-0.1", "colocated-0", "executor-0",
                                                      "frontend-0", "frontend-1"]
    assert not spec.engine_config(spec.instances[0], "m").prefill_only


def test_xds_launch_refuses_a_bad_file_with_exit_code_2(tmp_path):
    import subprocess
    import sys

    bad = tmp_path / "bad.yaml"
    bad.write_text("model: /nonexistent\nprefill: [{}]\ndecode: [{}]\n")
    r = subprocess.run([sys.executable, "-m", "xdeepserve.cli", "launch", str(bad)], capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 2 and "model '/nonexistent': no checkpoint there" in r.stderr
    bad.write_text("prefill: [{}]\ndecode: [{engine: {max_model_len: 64}}]\n")
    r = subprocess.run([sys.executable, "-m", "xdeepserve.cli", "launch", str(bad)], capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 2 and "decode[0].engine.max_model_len" in r.stderr
