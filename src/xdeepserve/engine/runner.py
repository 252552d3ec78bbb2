"""Model runner: turns a :class:`SchedulerOutput` into tensors, runs the model, samples.

It owns the KV cache tensors (one per layer; two for GQA's K and V) and nothing else of the request
state: the scheduler decides, the runner executes.
"""

from __future__ import annotations

import torch

from ..model import paged_attention
from ..model.attention import AttentionMetadata, build_group
from ..model.model import CausalLM
from ..model.moe import Experts
from .request import TokenLogprob
from .sampler import sample
from .scheduler import ScheduledRequest, SchedulerOutput


def allocate_kv_caches(
    model: CausalLM, num_blocks: int, block_size: int, dtype: torch.dtype, device: torch.device
) -> list[tuple[torch.Tensor, ...]]:
    cfg = model.config
    heads, width = cfg.kv_cache_shape
    per_layer = 2 if cfg.kv_has_separate_values else 1
    slots = num_blocks * block_size
    return [
        tuple(torch.zeros(slots, heads, width, dtype=dtype, device=device) for _ in range(per_layer))
        for _ in range(cfg.num_layers)
    ]


def num_blocks_for_memory(model: CausalLM, memory_bytes: int, block_size: int, dtype: torch.dtype) -> int:
    per_token = model.config.kv_bytes_per_token(torch.tensor([], dtype=dtype).element_size())
    return max(1, memory_bytes // (per_token * block_size))


DECODE_BUCKET = 8  # decodes per padded attention group


class ModelRunner:
    def __init__(
        self,
        model: CausalLM,
        num_blocks: int,
        block_size: int,
        dtype: torch.dtype,
        *,
        cuda_graph_max_batch: int = 0,
        max_model_len: int = 0,
    ) -> None:
        self.model = model
        self.device = next(model.parameters()).device
        self.block_size = block_size
        self.dtype = next(model.parameters()).dtype
        # one extra block that no request owns: padding rows of captured graphs write there
        self.kv_caches = allocate_kv_caches(model, num_blocks + 1, block_size, dtype, self.device)
        # with a paged decode kernel, all decodes of a step form one group (nothing is gathered or padded)
        cfg = model.config
        probe = torch.empty(0, dtype=self.dtype, device=self.device)
        k0 = self.kv_caches[0]
        self.decode_kernel = paged_attention.available(
            probe, k0[0], k0[-1], cfg.kv_lora_rank if cfg.attention == "mla" else None
        )
        self.graphs = None
        capturable = all(m.capturable for m in model.modules() if isinstance(m, Experts))
        if cuda_graph_max_batch and self.device.type == "cuda" and capturable:
            from .cuda_graph import CudaGraphDecoder

            self.graphs = CudaGraphDecoder(
                model, self.kv_caches, block_size=block_size, scratch_block=num_blocks,
                max_batch=cuda_graph_max_batch, max_model_len=max_model_len,
            )

    def _group(self, items: list[tuple[int, ScheduledRequest]]):
        bs = self.block_size
        seq_lens = [s.start + s.num_tokens for _, s in items]
        max_blocks = -(-max(seq_lens) // bs)
        rows = []
        for _, s in items:  # padded with block 0 (any valid id); one tensor built, not one per row
            ids = s.request.block_ids[:max_blocks]
            rows.append(ids + [0] * (max_blocks - len(ids)) if len(ids) < max_blocks else ids)
        table = torch.tensor(rows, dtype=torch.long)
        return build_group(
            [q for q, _ in items], [s.num_tokens for _, s in items], seq_lens, table, bs, self.device, self.dtype
        )

    def _decode_buckets(self, decodes: list[tuple[int, ScheduledRequest]]) -> list[list[tuple[int, ScheduledRequest]]]:
        """Split decodes into groups of similar context length, so padding every key row to the longest
        context in the batch does not multiply the K/V gather (one group when a kernel reads the cache)."""
        if len(decodes) <= DECODE_BUCKET or self.decode_kernel:
            return [decodes] if decodes else []
        ordered = sorted(decodes, key=lambda item: item[1].start)
        return [ordered[i : i + DECODE_BUCKET] for i in range(0, len(ordered), DECODE_BUCKET)]

    def prepare(self, sched: SchedulerOutput) -> tuple[torch.Tensor, AttentionMetadata, list[int]]:
        """Flat input ids, attention metadata, and the flat index of each sampled request's last token."""
        bs = self.block_size
        input_ids: list[int] = []
        positions: list[int] = []
        slots: list[int] = []
        decodes: list[tuple[int, ScheduledRequest]] = []
        prefills: list[tuple[int, ScheduledRequest]] = []
        sample_rows: list[int] = []
        for s in sched.scheduled:
            req, start, n = s.request, s.start, s.num_tokens
            q_start = len(input_ids)
            if n == 1:
                input_ids.append(req.token_at(start))
            else:
                input_ids.extend(req.all_token_ids[start : start + n])
            table = req.block_ids
            for p in range(start, start + n):
                positions.append(p)
                slots.append(table[p // bs] * bs + p % bs)
            (decodes if n == 1 else prefills).append((q_start, s))
            if s.samples:
                sample_rows.append(len(input_ids) - 1)
        groups = [self._group(g) for g in self._decode_buckets(decodes)]
        if prefills:
            groups.append(self._group(prefills))
        dev = self.device
        meta = AttentionMetadata(
            positions=torch.tensor(positions, dtype=torch.long, device=dev),
            slot_mapping=torch.tensor(slots, dtype=torch.long, device=dev),
            groups=groups,
            num_tokens=len(input_ids),
        )
        return torch.tensor(input_ids, dtype=torch.long, device=dev), meta, sample_rows

    def _graph_logits(self, sched: SchedulerOutput) -> torch.Tensor | None:
        """Logits from a captured CUDA graph when the step is decode-only and fits a bucket."""
        if self.graphs is None or any(s.num_tokens != 1 or not s.samples for s in sched.scheduled):
            return None
        seq_lens = [s.start + 1 for s in sched.scheduled]
        if not self.graphs.fits(len(seq_lens), max(seq_lens)):
            return None
        return self.graphs.run(
            [s.request.token_at(s.start) for s in sched.scheduled], seq_lens, [s.request.block_ids for s in sched.scheduled]
        )

    @torch.inference_mode()
    def execute(self, sched: SchedulerOutput) -> tuple[dict[str, int], dict[str, TokenLogprob]]:
        sampled_reqs = [s.request for s in sched.scheduled if s.samples]
        logits = self._graph_logits(sched)
        if logits is None:
            input_ids, meta, sample_rows = self.prepare(sched)
            hidden = self.model(input_ids, meta, self.kv_caches)
            if not sampled_reqs:
                return {}, {}
            logits = self.model.compute_logits(hidden[torch.tensor(sample_rows, device=hidden.device)])
        tokens, logprobs = sample(logits, sampled_reqs)
        ids = [r.request_id for r in sampled_reqs]
        return dict(zip(ids, tokens)), {i: lp for i, lp in zip(ids, logprobs) if lp is not None}
