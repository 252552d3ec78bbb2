"""Worker processes for the KV-transfer tests: a prefill side and a decode side with real model caches."""

from __future__ import annotations

import os
import traceback

import torch

from xdeepserve.model.attention import AttentionMetadata, build_group
from xdeepserve.model.loader import load_model
from xdeepserve.pd.kv_transfer import KVGeometry, TransferTask, dtype_name, recv_kv, send_kv
from xdeepserve.xccl import XcclConfig, XcclGroup


def sequence_meta(start: int, n: int, block_ids: list[int], block_size: int) -> AttentionMetadata:
    """Metadata for one sequence computing positions ``start .. start + n`` (earlier keys cached)."""
    table = torch.tensor(block_ids)[None]
    pos = torch.arange(start, start + n)
    slots = table[0, pos // block_size] * block_size + pos % block_size
    group = build_group([0], [n], [start + n], table, block_size, torch.device("cpu"))
    return AttentionMetadata(positions=pos, slot_mapping=slots, groups=[group], num_tokens=n)


def run_model(bundle, caches, ids: torch.Tensor, start: int, block_ids: list[int], block_size: int) -> torch.Tensor:
    """Logits of ``ids`` at positions ``start ..`` over the paged caches (keys before ``start`` cached)."""
    meta = sequence_meta(start, len(ids), block_ids, block_size)
    with torch.no_grad():
        return bundle.model.compute_logits(bundle.model(ids, meta, caches))


def caches_for(bundle, num_blocks: int, block_size: int, dtype: torch.dtype):
    cfg = bundle.config
    heads, width = cfg.kv_cache_shape
    per = 2 if cfg.kv_has_separate_values else 1
    return [tuple(torch.zeros(num_blocks * block_size, heads, width, dtype=dtype) for _ in range(per))
            for _ in range(cfg.num_layers)]


def worker(rank: int, port: int, host: str, model_dir: str, prompt: list[int], role_args: dict, results) -> None:
    try:
        group = XcclGroup.init(rank, 2, store_addr=("127.0.0.1", port), host_id=host, config=XcclConfig(timeout_s=5))
        bundle = load_model(model_dir, with_tokenizer=False, max_positions=256)
        bs = role_args["block_size"]
        caches = caches_for(bundle, role_args["num_blocks"], bs, getattr(torch, role_args["dtype"]))
        blocks = role_args["block_ids"]
        n = len(prompt) - 1  # the prefill side sends the KV of all tokens but the last
        task = TransferTask("req-0", 0, 11, n, dtype_name(caches[0][0].dtype), KVGeometry.of(caches))
        if rank == 0:
            run_model(bundle, caches, torch.tensor(prompt[:n]), 0, blocks, bs)
            if role_args.get("die_before_send"):
                os._exit(0)
            send_kv(group, 1, task, caches, blocks, bs)
            results.put((rank, "sent", group.transport(1)))
        else:
            sender = TransferTask(**{**task.__dict__, "geometry": KVGeometry(**role_args.get("sender_geometry", task.geometry.__dict__))})
            try:
                nbytes = recv_kv(group, sender, caches, blocks, bs)
            except Exception as e:  # reported to the test, with its type and message
                results.put((rank, "error", f"{type(e).__name__}: {e}"))
                return
            # the decode side continues from the received cache: logits for the last prompt token
            logits = run_model(bundle, caches, torch.tensor(prompt[n:]), n, blocks, bs)
            results.put((rank, "logits", (nbytes, logits[-1].tolist())))
        group.close()
    except Exception:
        results.put((rank, "crash", traceback.format_exc()))


def engine_worker(rank: int, port: int, host: str, model_dir: str, reqs: list, ctrl_in, ctrl_out, results) -> None:
    """One side of a disaggregated deployment in its own process: rank 0 a prefill-only engine, rank 1 a
    decode engine (8-token blocks). Control records travel over queues; KV over XCCL."""
    import queue
    import time

    from xdeepserve.engine.config import EngineConfig
    from xdeepserve.engine.core import EngineCore
    from xdeepserve.engine.request import SamplingParams
    from xdeepserve.pd.kv_transfer import KVSender, XcclPull

    try:
        group = XcclGroup.init(rank, 2, store_addr=("127.0.0.1", port), host_id=host, config=XcclConfig(timeout_s=10))
        if rank == 0:
            core = EngineCore(EngineConfig(model=model_dir, max_model_len=256, max_num_seqs=16, num_kv_blocks=120,
                                           prefill_only=True, max_num_batched_tokens=256))
            geometry = KVGeometry.of(core.runner.kv_caches)
            dtype = dtype_name(core.runner.kv_caches[0][0].dtype)
            sender = KVSender(group)
            for rid, prompt, sp in reqs:
                core.add_request(rid, prompt, SamplingParams.from_wire(sp))
            prompts = {rid: (prompt, sp) for rid, prompt, sp in reqs}
            event, stop = 1000, False
            while not stop:
                for o in core.step():
                    if o.kv_ready_tokens:
                        event += 1
                        task = TransferTask(o.request_id, 0, event, o.kv_ready_tokens, dtype, geometry)
                        prompt, sp = prompts[o.request_id]
                        ctrl_out.put(("task", task.to_wire(), prompt, list(o.new_token_ids), sp))
                    elif o.finished:
                        ctrl_out.put(("finished", o.request_id, list(o.new_token_ids)))
                    results.put((0, "tokens", (o.request_id, list(o.new_token_ids))))
                try:
                    while True:
                        msg = ctrl_in.get_nowait()
                        if msg[0] == "pull":
                            sender.start(msg[1], core.export_kv(msg[1]), 1, msg[2])
                        elif msg[0] == "stop":
                            stop = True
                except queue.Empty:
                    pass
                for rid, err in sender.poll():
                    assert err is None, err
                    core.release_kv(rid)
                if not core.has_work() and not sender.inflight:
                    time.sleep(0.002)
            results.put((0, "free", (core.kv.num_free_blocks, core.kv.num_blocks, core.stats().num_parked)))
        else:
            core = EngineCore(EngineConfig(model=model_dir, max_model_len=256, max_num_seqs=16, num_kv_blocks=300,
                                           block_size=8))
            expected, done = len(reqs), set()

            def fetch_for(task):
                def fetch(caches, block_ids, block_size, kv_tokens):
                    ctrl_out.put(("pull", task.request_id, task.event_id))
                    return XcclPull(group, task, caches, block_ids, block_size)
                return fetch

            while len(done) < expected:
                try:
                    while True:
                        msg = ctrl_in.get_nowait()
                        if msg[0] == "task":
                            task = TransferTask.from_wire(msg[1])
                            core.add_transferred_request(task.request_id, msg[2], msg[3], SamplingParams.from_wire(msg[4]),
                                                         fetch_for(task))
                        elif msg[0] == "finished":
                            done.add(msg[1])
                except queue.Empty:
                    pass
                for o in core.step():
                    results.put((1, "tokens", (o.request_id, list(o.new_token_ids))))
                    if o.finished:
                        done.add(o.request_id)
                if not core.has_work():
                    time.sleep(0.002)
            ctrl_out.put(("stop",))
            results.put((1, "free", (core.kv.num_free_blocks, core.kv.num_blocks, 0)))
        transport = group.transport(1 - rank)
        group.close()
        results.put((rank, "exit", transport))
    except Exception:
        results.put((rank, "crash", traceback.format_exc()))
