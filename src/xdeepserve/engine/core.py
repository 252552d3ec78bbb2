"""The engine core of one FlowServe DP group: scheduler + KV cache + runner, stepped in a loop.

:class:`EngineCore` is synchronous and process-agnostic. The serving path runs it in its own process
(:mod:`xdeepserve.engine.core_proc`); :class:`xdeepserve.engine.llm.LLM` runs it in the caller's process.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import torch

from ..model.loader import ModelBundle, load_model
from .config import EngineConfig
from .kv_cache_manager import KVCacheManager
from .request import (
    EngineOutput,
    FinishReason,
    InvalidRequestError,
    Request,
    RequestStatus,
    SamplingParams,
    TokenLogprob,
    check_prompt,
)
from .runner import ModelRunner, num_blocks_for_memory
from .scheduler import Scheduler

log = logging.getLogger(__name__)


def set_cpu_threads(n: int) -> None:
    """Limit this process's compute threads (torch intra-op; Numba's pool, used by the CPU kernels)."""
    if n < 1:
        raise ValueError(f"num_threads must be at least 1, got {n}")
    torch.set_num_threads(n)
    try:
        import numba

        numba.set_num_threads(min(n, numba.config.NUMBA_NUM_THREADS))
    except ImportError:  # pragma: no cover - numba is a dependency; the CPU kernel falls back without it
        pass


class KVFetch(Protocol):
    """A KV pull in flight (decode side of disaggregated prefill-decode)."""

    def done(self) -> bool: ...

    def result(self) -> object:  # raises the transfer's error
        ...


@dataclass(frozen=True)
class EngineStats:
    num_waiting: int = 0
    num_running: int = 0
    kv_cache_usage: float = 0.0
    num_preemptions: int = 0
    prefix_cache_hit_tokens: int = 0
    prompt_tokens: int = 0
    generation_tokens: int = 0
    spec_draft_tokens: int = 0  # MTP drafts verified
    num_parked: int = 0  # prefill-only: requests holding KV for a decode engine to pull
    num_awaiting_kv: int = 0  # decode: transferred requests waiting for blocks or their KV
    spec_accepted_tokens: int = 0  # ... and accepted


class EngineCore:
    def __init__(self, config: EngineConfig, bundle: ModelBundle | None = None) -> None:
        self.config = config
        torch.manual_seed(config.seed)
        if config.num_threads:
            set_cpu_threads(config.num_threads)
        max_len = config.max_model_len
        if bundle is None:
            cfg_len = max_len or 4096
            bundle = load_model(
                config.model, device=config.device, dtype=config.torch_dtype, max_positions=cfg_len,
                with_tokenizer=False, mtp=config.mtp,
            )
        self.bundle = bundle
        model = bundle.model
        self.max_model_len = min(max_len or 4096, model.max_positions)
        if not config.enable_chunked_prefill and config.max_num_batched_tokens < self.max_model_len:
            raise ValueError(
                f"without chunked prefill a prompt must fit one step: max_num_batched_tokens "
                f"({config.max_num_batched_tokens}) must be >= max_model_len ({self.max_model_len})"
            )
        bs = config.block_size
        num_blocks = config.num_kv_blocks or num_blocks_for_memory(
            model, config.kv_cache_memory_bytes, bs, config.torch_dtype
        )
        if num_blocks * bs < self.max_model_len:
            raise ValueError(
                f"KV cache of {num_blocks} blocks x {bs} tokens cannot hold one request of max_model_len="
                f"{self.max_model_len}; raise num_kv_blocks / kv_cache_memory_bytes or lower max_model_len"
            )
        self.kv = KVCacheManager(num_blocks, bs, config.enable_prefix_caching)
        self.scheduler = Scheduler(
            self.kv,
            max_num_seqs=config.max_num_seqs,
            max_num_batched_tokens=config.max_num_batched_tokens,
            max_model_len=self.max_model_len,
            enable_chunked_prefill=config.enable_chunked_prefill,
            prefill_only=config.prefill_only,
        )
        self._fetch_fns: dict[str, Callable] = {}  # decode side: how to pull each transferred request's KV
        self._fetches: dict[str, KVFetch] = {}  # ... pulls in flight
        self.runner = ModelRunner(
            model, num_blocks, bs, config.torch_dtype,
            cuda_graph_max_batch=config.max_num_seqs if config.cuda_graphs else 0,
            max_model_len=self.max_model_len,
        )
        self.eos_token_ids = bundle.generation.eos_token_ids
        self.vocab_size = bundle.config.vocab_size
        self.prompt_tokens = 0
        self.generation_tokens = 0
        self.num_steps = 0

    # ---- requests ------------------------------------------------------------------------------------
    def add_request(self, request_id: str, prompt_token_ids: list[int], sampling: SamplingParams) -> None:
        if request_id in self.scheduler.requests:
            raise InvalidRequestError(f"request id {request_id!r} is already in flight")
        check_prompt(prompt_token_ids, max_model_len=self.max_model_len, vocab_size=self.vocab_size)
        req = Request(request_id, list(prompt_token_ids), sampling, eos_token_ids=self.eos_token_ids)
        self.scheduler.add(req)
        self.prompt_tokens += len(prompt_token_ids)

    # ---- disaggregated prefill-decode ------------------------------------------------------------------
    def add_transferred_request(
        self,
        request_id: str,
        prompt_token_ids: list[int],
        output_token_ids: list[int],
        sampling: SamplingParams,
        fetch: Callable[[list[tuple[torch.Tensor, ...]], list[int], int, int], KVFetch],
    ) -> None:
        """Decode side: continue a request prefilled elsewhere (its prompt KV and first output tokens).

        When blocks are free, ``fetch(kv_caches, block_ids, block_size, kv_tokens)`` is called to start
        pulling the KV of the first ``kv_tokens`` tokens into those blocks; the request decodes once the
        returned :class:`KVFetch` is done. Until then the prefill side keeps its copy (back-pressure).
        """
        if request_id in self.scheduler.requests:
            raise InvalidRequestError(f"request id {request_id!r} is already in flight")
        tokens = list(prompt_token_ids) + list(output_token_ids)
        check_prompt(tokens, max_model_len=self.max_model_len, vocab_size=self.vocab_size)
        req = Request(request_id, list(prompt_token_ids), sampling, eos_token_ids=self.eos_token_ids)
        req.output_token_ids = list(output_token_ids)
        self._fetch_fns[request_id] = fetch
        self.scheduler.add_transferred(req, len(tokens) - 1)

    def export_kv(self, request_id: str) -> torch.Tensor:
        """Prefill side: ``[caches, tokens, heads, width]`` KV rows of a parked request."""
        from ..pd.kv_transfer import gather_kv

        req = self.scheduler.parked.get(request_id)
        if req is None:
            raise InvalidRequestError(f"request {request_id!r} is not parked on this prefill engine")
        return gather_kv(self.runner.kv_caches, req.block_ids, self.config.block_size, req.num_computed_tokens)

    def release_kv(self, request_id: str) -> bool:
        """Prefill side: the decode side holds the KV now; free the parked request's blocks."""
        return self.scheduler.release(request_id) is not None

    def _advance_transfers(self) -> list[EngineOutput]:
        failed = []
        for req, kv_tokens in self.scheduler.admit_transfers():
            fetch = self._fetch_fns.pop(req.request_id)
            try:
                self._fetches[req.request_id] = fetch(self.runner.kv_caches, list(req.block_ids), self.config.block_size, kv_tokens)
            except Exception as e:
                failed.append((req, e))
        for rid, handle in list(self._fetches.items()):
            req = self.scheduler.requests.get(rid)
            if req is None:  # aborted meanwhile
                del self._fetches[rid]
                continue
            if not handle.done():
                continue
            del self._fetches[rid]
            try:
                handle.result()
            except Exception as e:
                failed.append((req, e))
                continue
            self.scheduler.transfer_done(req)
        outs = []
        for req, e in failed:
            self.scheduler.finish(req, FinishReason.ERROR)
            outs.append(EngineOutput(req.request_id, (), FinishReason.ERROR, error=f"KV transfer failed: {e}"))
        return outs

    def abort(self, request_ids: list[str]) -> list[str]:
        """Abort and free; returns the ids that were still in flight."""
        for rid in request_ids:
            self._fetch_fns.pop(rid, None)
            self._fetches.pop(rid, None)
        return [rid for rid in request_ids if self.scheduler.abort(rid) is not None]

    def has_work(self) -> bool:
        return self.scheduler.has_work()

    # ---- the step ------------------------------------------------------------------------------------
    def step(self) -> list[EngineOutput]:
        transfer_outs = self._advance_transfers() if self.scheduler.awaiting_kv or self._fetches else []
        sched = self.scheduler.schedule()
        if sched.empty:
            return transfer_outs
        try:
            sampled, logprobs, drafts = self.runner.execute(sched)
        except Exception as e:  # a failing batch fails its requests, not the engine
            log.exception("model step failed")
            outs = []
            for s in sched.scheduled:
                self.scheduler.finish(s.request, FinishReason.ERROR)
                outs.append(EngineOutput(s.request.request_id, (), FinishReason.ERROR, error=f"engine step failed: {e}"))
            return outs
        self.num_steps += 1
        appended = self.scheduler.update(sched, sampled, drafts)
        self.generation_tokens += sum(len(t) for t in appended.values())
        outs = transfer_outs
        for s in sched.scheduled:
            req = s.request
            tokens = appended.get(req.request_id)
            if tokens is None and req.finish_reason is None:
                continue
            lp: tuple[TokenLogprob, ...] = (logprobs[req.request_id],) if req.request_id in logprobs else ()
            outs.append(
                EngineOutput(
                    req.request_id,
                    tuple(tokens or ()),
                    req.finish_reason,
                    lp,
                    num_prompt_tokens=req.num_prompt_tokens,
                    num_cached_tokens=req.num_cached_tokens,
                    kv_ready_tokens=req.num_computed_tokens if req.status is RequestStatus.PARKED else 0,
                )
            )
        return outs

    def warm_up(self) -> None:
        """Run one short request through prefill and decode so the first real request does not pay
        for first-call initialisation; counters are reset afterwards."""
        self.add_request("__warmup__", [0] * min(8, self.max_model_len - 3), SamplingParams(max_tokens=2, ignore_eos=True))
        self.run_until_done()
        self.release_kv("__warmup__")  # a prefill-only engine parks it; nobody will pull it
        self.prompt_tokens = self.generation_tokens = self.num_steps = 0
        self.runner.spec_proposed = self.runner.spec_accepted = 0
        self.kv.prefix_hit_tokens = self.kv.prefix_query_tokens = 0

    def stats(self) -> EngineStats:
        return EngineStats(
            num_waiting=len(self.scheduler.waiting),
            num_running=len(self.scheduler.running),
            num_parked=len(self.scheduler.parked),
            num_awaiting_kv=len(self.scheduler.awaiting_kv) + len(self.scheduler.receiving),
            kv_cache_usage=self.kv.usage,
            num_preemptions=self.scheduler.num_preemptions,
            prefix_cache_hit_tokens=self.kv.prefix_hit_tokens,
            prompt_tokens=self.prompt_tokens,
            generation_tokens=self.generation_tokens,
            spec_draft_tokens=self.runner.spec_proposed,
            spec_accepted_tokens=self.runner.spec_accepted,
        )

    def run_until_done(self, max_steps: int | None = None) -> list[EngineOutput]:
        outs: list[EngineOutput] = []
        steps = 0
        while self.has_work() and (max_steps is None or steps < max_steps):
            outs.extend(self.step())
            steps += 1
        return outs


