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


def _cache_layers(model: CausalLM) -> int:
    return model.config.num_layers + (1 if model.mtp is not None else 0)


def allocate_kv_caches(
    model: CausalLM, num_blocks: int, block_size: int, dtype: torch.dtype, device: torch.device
) -> list[tuple[torch.Tensor, ...]]:
    """One cache per decoder layer, plus one for the MTP module when the model has it (last)."""
    cfg = model.config
    heads, width = cfg.kv_cache_shape
    per_layer = 2 if cfg.kv_has_separate_values else 1
    slots = num_blocks * block_size
    return [
        tuple(torch.zeros(slots, heads, width, dtype=dtype, device=device) for _ in range(per_layer))
        for _ in range(_cache_layers(model))
    ]


def num_blocks_for_memory(model: CausalLM, memory_bytes: int, block_size: int, dtype: torch.dtype) -> int:
    cfg = model.config
    per_token = cfg.kv_bytes_per_token(torch.tensor([], dtype=dtype).element_size())
    per_token = per_token * _cache_layers(model) // cfg.num_layers
    return max(1, memory_bytes // (per_token * block_size))


DECODE_BUCKET = 8  # decodes per padded attention group
SPLIT_INTO_DECODES = 4  # requests with at most this many new tokens run them as decodes (with a kernel)


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
        self.mtp = model.mtp
        self.spec_proposed = 0  # draft tokens verified
        self.spec_accepted = 0  # ... of which the main model agreed with
        capturable = all(m.capturable for m in model.modules() if isinstance(m, Experts))
        # captured graphs return logits only; MTP needs the hidden states of every step
        if cuda_graph_max_batch and self.device.type == "cuda" and capturable and self.mtp is None:
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

    def _metadata(self, items: list[tuple[int, ScheduledRequest]], num_tokens: int) -> AttentionMetadata:
        """Positions, cache slots and attention groups for flat rows laid out as ``items`` says
        (flat start of each request's rows, and which of its positions they are)."""
        bs = self.block_size
        positions: list[int] = []
        slots: list[int] = []
        decodes: list[tuple[int, ScheduledRequest]] = []
        prefills: list[tuple[int, ScheduledRequest]] = []
        for q_start, s in items:
            table = s.request.block_ids
            for p in range(s.start, s.start + s.num_tokens):
                positions.append(p)
                slots.append(table[p // bs] * bs + p % bs)
            if s.num_tokens == 1:
                decodes.append((q_start, s))
            elif s.num_tokens <= SPLIT_INTO_DECODES and self.decode_kernel:
                # a few tokens (drafts being verified): row j attends to keys 0 .. start + j, which is
                # a decode over start + j + 1 cached tokens, so each row joins the decode kernel's batch
                decodes.extend((q_start + j, ScheduledRequest(s.request, 1, s.start + j)) for j in range(s.num_tokens))
            else:
                prefills.append((q_start, s))
        groups = [self._group(g) for g in self._decode_buckets(decodes)]
        if prefills:
            groups.append(self._group(prefills))
        dev = self.device
        return AttentionMetadata(
            positions=torch.tensor(positions, dtype=torch.long, device=dev),
            slot_mapping=torch.tensor(slots, dtype=torch.long, device=dev),
            groups=groups,
            num_tokens=num_tokens,
        )

    def prepare(self, sched: SchedulerOutput) -> tuple[torch.Tensor, AttentionMetadata, list[int]]:
        """Flat input ids, attention metadata, and the flat index of each sampled request's first
        sampled row (a request verifying drafts samples ``1 + num_draft`` consecutive rows)."""
        input_ids: list[int] = []
        items: list[tuple[int, ScheduledRequest]] = []
        sample_rows: list[int] = []
        for s in sched.scheduled:
            req, start, n = s.request, s.start, s.num_tokens
            q_start = len(input_ids)
            known = n - s.num_draft
            if known == 1:
                input_ids.append(req.token_at(start))
            else:
                input_ids.extend(req.all_token_ids[start : start + known])
            input_ids.extend(req.draft_token_ids[: s.num_draft])
            items.append((q_start, s))
            if s.samples:
                sample_rows.append(len(input_ids) - 1 - s.num_draft)
        meta = self._metadata(items, len(input_ids))
        return torch.tensor(input_ids, dtype=torch.long, device=self.device), meta, sample_rows

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
    def execute(
        self, sched: SchedulerOutput
    ) -> tuple[dict[str, list[int]], dict[str, TokenLogprob], dict[str, list[int]]]:
        """Run one step. Returns per sampled request its new tokens (one, or after verifying drafts the
        accepted drafts plus the main model's next token), logprobs, and the MTP drafts for the next
        step (greedy requests without logprobs, when the model has an MTP module)."""
        sampled_reqs = [s.request for s in sched.scheduled if s.samples]
        logits = self._graph_logits(sched)
        if logits is not None:
            tokens, logprobs = sample(logits, sampled_reqs)
            ids = [r.request_id for r in sampled_reqs]
            return {i: [t] for i, t in zip(ids, tokens)}, {i: lp for i, lp in zip(ids, logprobs) if lp is not None}, {}
        input_ids, meta, sample_rows = self.prepare(sched)
        hidden = self.model(input_ids, meta, self.kv_caches)
        new_tokens: dict[str, list[int]] = {}
        logprob_of: dict[str, TokenLogprob] = {}
        if sampled_reqs:
            rows = torch.tensor(sample_rows, device=hidden.device)
            tokens, logprobs = sample(self.model.compute_logits(hidden[rows]), sampled_reqs)
            for r, t, lp in zip(sampled_reqs, tokens, logprobs):
                new_tokens[r.request_id] = [t]
                if lp is not None:
                    logprob_of[r.request_id] = lp
            self._verify(sched, hidden, sample_rows, new_tokens)
        drafts = self._propose(sched, hidden, new_tokens) if self.mtp is not None else {}
        return new_tokens, logprob_of, drafts

    def _verify(
        self, sched: SchedulerOutput, hidden: torch.Tensor, sample_rows: list[int], new_tokens: dict[str, list[int]]
    ) -> None:
        """Greedy verification of drafts: the main model's token at the last known position was already
        sampled; each draft that equals it is accepted and the main model's token after the draft
        follows, until the first disagreement."""
        spec = [(s, row) for s, row in zip((s for s in sched.scheduled if s.samples), sample_rows) if s.num_draft]
        if not spec:
            return
        rows = torch.tensor([row + 1 + j for s, row in spec for j in range(s.num_draft)], device=hidden.device)
        after = self.model.compute_logits(hidden[rows]).argmax(dim=-1).tolist()
        k = 0
        for s, _ in spec:
            out = new_tokens[s.request.request_id]
            drafts, targets = s.request.draft_token_ids[: s.num_draft], after[k : k + s.num_draft]
            k += s.num_draft
            for d, t in zip(drafts, targets):
                if out[-1] != d:
                    break
                out.append(t)
            self.spec_proposed += s.num_draft
            self.spec_accepted += len(out) - 1

    def _propose(
        self, sched: SchedulerOutput, hidden: torch.Tensor, new_tokens: dict[str, list[int]]
    ) -> dict[str, list[int]]:
        """Run the MTP module over every position of this step whose next token is now known (writing
        its KV cache), and return a one-token draft per greedy request from its last such position."""
        next_ids: list[int] = []
        rows: list[int] = []
        items: list[tuple[int, ScheduledRequest]] = []
        q_start = 0
        want: list[tuple[str, int]] = []  # (request id, flat MTP row of its draft)
        for s in sched.scheduled:
            req, start = s.request, s.start
            got = new_tokens.get(req.request_id, [])
            if s.num_draft:  # positions start .. start + accepted drafts, next tokens = the new tokens
                n = len(got)
                nxt = got
            else:
                n = s.num_tokens
                tail = [got[0]] if s.samples else [req.token_at(start + n)]
                nxt = req.all_token_ids[start + 1 : start + n] + tail
            m = len(next_ids)
            items.append((m, ScheduledRequest(req, n, start)))
            next_ids.extend(nxt)
            rows.extend(range(q_start, q_start + n))
            q_start += s.num_tokens
            sp = req.sampling
            if s.samples and sp.greedy and sp.logprobs is None:
                want.append((req.request_id, len(next_ids) - 1))
        meta = self._metadata(items, len(next_ids))
        dev = hidden.device
        out = self.mtp(
            torch.tensor(next_ids, dtype=torch.long, device=dev), hidden[torch.tensor(rows, device=dev)], meta,
            self.kv_caches[-1],
        )
        if not want:
            return {}
        logits = self.mtp.compute_logits(out[torch.tensor([r for _, r in want], device=dev)])
        return {rid: [t] for (rid, _), t in zip(want, logits.argmax(dim=-1).tolist())}
