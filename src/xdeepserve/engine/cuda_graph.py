"""CUDA-graph decode (the GPU analogue of the paper's graph mode for decode, §2.3; eager prefill).

A decode-only step with batch size ``b`` and longest context ``L`` replays a graph captured for the
bucket ``(B >= b, K >= L)``. The graph's inputs are four static buffers — token ids, context lengths,
block tables — from which the attention metadata is computed on the device inside the graph; padding
rows point at a scratch KV block that no request owns. Graphs are captured lazily on first use and
share one memory pool.
"""

from __future__ import annotations

import torch

from ..model.attention import AttentionMetadata, decode_group
from ..model.model import CausalLM

KV_BUCKET_TOKENS = 64


def _bucket(n: int, sizes: list[int]) -> int | None:
    return next((s for s in sizes if s >= n), None)


class CudaGraphDecoder:
    def __init__(
        self,
        model: CausalLM,
        kv_caches: list[tuple[torch.Tensor, ...]],
        *,
        block_size: int,
        scratch_block: int,
        max_batch: int,
        max_model_len: int,
    ) -> None:
        self.model, self.kv_caches, self.block_size = model, kv_caches, block_size
        self.device = next(model.parameters()).device
        self.dtype = next(model.parameters()).dtype
        self.batch_sizes = [1, 2, 4, 8] + list(range(16, max_batch + 16, 16))
        self.batch_sizes = [b for b in self.batch_sizes if b < max_batch] + [max_batch]
        # context buckets: fine steps (the padded K/V is gathered every layer), coarser for long contexts
        step = -(-KV_BUCKET_TOKENS // block_size) * block_size
        top = -(-max_model_len // block_size) * block_size
        self.kv_sizes = sorted({min(k, top) for k in range(step, top + step, step)})
        max_blocks = self.kv_sizes[-1] // block_size
        self.scratch_block = scratch_block
        dev = self.device
        self.input_ids = torch.zeros(max_batch, dtype=torch.long, device=dev)
        self.seq_lens = torch.ones(max_batch, dtype=torch.long, device=dev)
        self.block_tables = torch.full((max_batch, max_blocks), scratch_block, dtype=torch.long, device=dev)
        # every graph writes its logits here, so intermediates of one capture can be reused by the next
        # (a per-graph output would stay allocated in the pool for each (batch, context) bucket)
        self.logits = torch.empty(max_batch, model.config.vocab_size, dtype=torch.float32, device=dev)
        self.graphs: dict[tuple[int, int], tuple[torch.cuda.CUDAGraph, torch.Tensor]] = {}
        self.pool = torch.cuda.graph_pool_handle()

    def fits(self, batch: int, longest: int) -> bool:
        return batch <= self.batch_sizes[-1] and longest <= self.kv_sizes[-1]

    def _forward(self, b: int, k: int) -> torch.Tensor:
        nblk = k // self.block_size
        group, positions, slots = decode_group(self.seq_lens[:b], self.block_tables[:b, :nblk], self.block_size, self.dtype)
        meta = AttentionMetadata(positions=positions, slot_mapping=slots, groups=[group], num_tokens=b)
        hidden = self.model(self.input_ids[:b], meta, self.kv_caches)
        out = self.logits[:b]
        out.copy_(self.model.compute_logits(hidden))
        return out

    def _capture(self, b: int, k: int):
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):
            for _ in range(2):  # warm-up outside the graph (lazy inits, autotuning)
                self._forward(b, k)
        torch.cuda.current_stream().wait_stream(stream)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, pool=self.pool):
            out = self._forward(b, k)
        return graph, out

    @torch.inference_mode()
    def run(self, token_ids: list[int], seq_lens: list[int], block_tables: list[list[int]]) -> torch.Tensor:
        """Logits ``[len(token_ids), vocab]`` for one decode token per sequence."""
        n = len(token_ids)
        b = _bucket(n, self.batch_sizes)
        k = _bucket(max(seq_lens), self.kv_sizes)
        nblk = k // self.block_size
        pad = [self.scratch_block] * nblk
        table = [ids[:nblk] + pad[: nblk - min(len(ids), nblk)] for ids in block_tables]
        table += [pad] * (b - n)
        self.input_ids[:b].copy_(torch.tensor(token_ids + [0] * (b - n)), non_blocking=True)
        self.seq_lens[:b].copy_(torch.tensor(seq_lens + [1] * (b - n)), non_blocking=True)
        self.block_tables[:b, :nblk].copy_(torch.tensor(table), non_blocking=True)
        if (b, k) not in self.graphs:
            self.graphs[(b, k)] = self._capture(b, k)
        graph, out = self.graphs[(b, k)]
        graph.replay()
        return out[:n]
