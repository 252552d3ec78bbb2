"""Worker processes for the KV-transfer tests: a prefill side and a decode side with real model caches."""

from __future__ import annotations

import os
import traceback

import torch

from xdeepserve.model.attention import AttentionMetadata, build_group
from xdeepserve.model.loader import load_model
from xdeepserve.pd.kv_transfer import KVGeometry, TransferTask, dtype_name, recv_kv, send_kv
from xdeepserve.xccl import XcclConfig, XcclGroup


def run_model(bundle, caches, ids: torch.Tensor, start: int, block_ids: list[int], block_size: int) -> torch.Tensor:
    """Logits of ``ids`` at positions ``start ..`` over the paged caches (keys before ``start`` cached)."""
    n = len(ids)
    table = torch.tensor(block_ids)[None]
    pos = torch.arange(start, start + n)
    slots = table[0, pos // block_size] * block_size + pos % block_size
    group = build_group([0], [n], [start + n], table, block_size, torch.device("cpu"))
    meta = AttentionMetadata(positions=pos, slot_mapping=slots, groups=[group], num_tokens=n)
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
