"""Continuous-batching scheduler.

One idea (as in vLLM v1): each step, every scheduled request gets a number of tokens to compute, out of
a shared token budget. A decode is 1 token; a prefill is as many prompt tokens as fit (chunked prefill);
a prefix-cache hit simply starts a request with some tokens already computed; a request preempted by
recompute starts again from 0 with its generated tokens appended to its prompt.

Fairness: running requests are served first, oldest first; when KV blocks run out, the newest running
request is preempted and put at the *front* of the waiting queue, so it is re-admitted before anything
newer. The oldest request therefore always makes progress: no starvation.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

from .kv_cache_manager import KVCacheManager
from .request import FinishReason, Request, RequestStatus


@dataclass(frozen=True)
class ScheduledRequest:
    request: Request
    num_tokens: int  # tokens to compute this step, starting at request.num_computed_tokens
    start: int  # == request.num_computed_tokens when scheduled
    # trailing draft tokens among num_tokens (MTP speculative decoding): the last known token is
    # followed by ``request.draft_token_ids``, and every one of these rows is verified
    num_draft: int = 0

    @property
    def samples(self) -> bool:
        """True when this chunk reaches the end of the known tokens, so its last logits are sampled."""
        return self.start + self.num_tokens == self.request.num_tokens + self.num_draft


@dataclass
class SchedulerOutput:
    scheduled: list[ScheduledRequest] = field(default_factory=list)
    preempted: list[Request] = field(default_factory=list)

    @property
    def num_tokens(self) -> int:
        return sum(s.num_tokens for s in self.scheduled)

    @property
    def empty(self) -> bool:
        return not self.scheduled


class Scheduler:
    def __init__(
        self,
        kv: KVCacheManager,
        *,
        max_num_seqs: int,
        max_num_batched_tokens: int,
        max_model_len: int,
        enable_chunked_prefill: bool = True,
        prefill_only: bool = False,
    ) -> None:
        self.kv = kv
        self.prefill_only = prefill_only
        self.max_num_seqs = max_num_seqs
        self.max_num_batched_tokens = max_num_batched_tokens
        self.max_model_len = max_model_len
        self.enable_chunked_prefill = enable_chunked_prefill
        self.waiting: deque[Request] = deque()
        self.running: list[Request] = []
        self.requests: dict[str, Request] = {}
        self.num_preemptions = 0
        # disaggregated prefill-decode
        self.parked: dict[str, Request] = {}  # prefill-only: first token sampled, KV kept for the pull
        self.awaiting_kv: deque[tuple[Request, int]] = deque()  # decode: (request, KV tokens) needing blocks
        self.receiving: dict[str, tuple[Request, int]] = {}  # decode: blocks allocated, KV on its way

    # ---- queue management -------------------------------------------------------------------------
    def add(self, req: Request) -> None:
        self.requests[req.request_id] = req
        self.waiting.append(req)

    def has_work(self) -> bool:
        return bool(self.waiting or self.running or self.awaiting_kv or self.receiving)

    def finish(self, req: Request, reason: FinishReason) -> None:
        """Finish (or abort) a request and free its blocks immediately."""
        if req.status is RequestStatus.FINISHED:
            return
        if req.status is RequestStatus.RUNNING:
            self.running.remove(req)
        elif req.status is RequestStatus.PARKED:
            del self.parked[req.request_id]
        elif req.status is RequestStatus.AWAITING_KV:
            if self.receiving.pop(req.request_id, None) is None:
                self.awaiting_kv = deque(item for item in self.awaiting_kv if item[0] is not req)
        else:
            self.waiting.remove(req)
        req.status, req.finish_reason = RequestStatus.FINISHED, reason
        self.kv.free(req)
        del self.requests[req.request_id]

    def abort(self, request_id: str) -> Request | None:
        req = self.requests.get(request_id)
        if req is not None:
            self.finish(req, FinishReason.ABORT)
        return req

    # ---- disaggregated prefill-decode ----------------------------------------------------------------
    def add_transferred(self, req: Request, kv_tokens: int) -> None:
        """Decode side: a request whose first ``kv_tokens`` tokens were prefilled elsewhere. It waits
        for blocks (back-pressure: the prefill side keeps its copy meanwhile), then for its KV."""
        if not 0 < kv_tokens < req.num_tokens:
            raise ValueError(f"{req.request_id}: {kv_tokens} KV tokens for a request of {req.num_tokens} tokens")
        self.requests[req.request_id] = req
        req.status = RequestStatus.AWAITING_KV
        self.awaiting_kv.append((req, kv_tokens))

    def admit_transfers(self) -> list[tuple[Request, int]]:
        """Give blocks to waiting transferred requests, oldest first, while blocks last (room for their
        KV and the next token). Returns the newly admitted ones: their KV can be pulled now."""
        admitted = []
        while self.awaiting_kv and len(self.running) + len(self.receiving) < self.max_num_seqs:
            req, kv_tokens = self.awaiting_kv[0]
            if not self.kv.allocate(req, kv_tokens + 1):
                break
            self.awaiting_kv.popleft()
            self.receiving[req.request_id] = (req, kv_tokens)
            admitted.append((req, kv_tokens))
        return admitted

    def transfer_done(self, req: Request) -> None:
        """Decode side: the request's KV arrived; it joins the running batch as a decode."""
        _, kv_tokens = self.receiving.pop(req.request_id)
        req.num_computed_tokens = kv_tokens
        self.kv.cache_full_blocks(req)
        req.status = RequestStatus.RUNNING
        self.running.append(req)

    def release(self, request_id: str) -> Request | None:
        """Prefill side: the decode side has the KV; free the parked request's blocks."""
        req = self.parked.get(request_id)
        if req is not None:
            self.finish(req, FinishReason.STOP)
        return req

    def _park(self, req: Request) -> None:
        self.running.remove(req)
        req.status = RequestStatus.PARKED
        req.draft_token_ids = []
        self.parked[req.request_id] = req

    def _usable_draft(self, req: Request, budget: int) -> list[int]:
        """The request's drafts if they can be verified this step: it is decoding (one known token left
        to compute) and the draft fits the token budget, the context and ``max_tokens``."""
        d = req.draft_token_ids
        if not d or req.num_tokens - req.num_computed_tokens != 1:
            return []
        room = min(budget - 1, self.max_model_len - req.num_tokens, req.sampling.max_tokens - len(req.output_token_ids) - 1)
        return d[: max(room, 0)]

    def _preempt(self, req: Request) -> None:
        self.running.remove(req)
        self.kv.free(req)
        req.draft_token_ids = []
        req.num_computed_tokens = 0
        req.num_preemptions += 1
        req.status = RequestStatus.WAITING
        self.waiting.appendleft(req)
        self.num_preemptions += 1

    # ---- the step -----------------------------------------------------------------------------------
    def schedule(self) -> SchedulerOutput:
        out = SchedulerOutput()
        budget = self.max_num_batched_tokens
        i = 0
        while i < len(self.running) and budget > 0:
            req = self.running[i]
            n = min(req.num_tokens - req.num_computed_tokens, budget)
            draft = self._usable_draft(req, budget)
            req.draft_token_ids = draft  # a draft not verified now is stale by the next step
            n += len(draft)
            while not self.kv.allocate(req, n):
                victim = self.running[-1]
                self._preempt(victim)
                out.preempted.append(victim)
                if victim is req:
                    break
            else:
                out.scheduled.append(ScheduledRequest(req, n, req.num_computed_tokens, len(draft)))
                budget -= n
                i += 1
                continue
            break  # the request itself was preempted: everything after it is gone too

        # admit waiting requests only when nothing was preempted this step (memory is tight otherwise)
        while not out.preempted and self.waiting and budget > 0 and len(self.running) < self.max_num_seqs:
            req = self.waiting[0]
            prefix = self.kv.match_prefix(req)
            remaining = req.num_tokens - len(prefix) * self.kv.block_size
            n = min(remaining, budget)
            if n < remaining and not self.enable_chunked_prefill:
                break
            req.num_cached_tokens = 0
            if not self.kv.allocate(req, n, prefix):
                break
            self.kv.record_admission(req)
            self.waiting.popleft()
            req.status = RequestStatus.RUNNING
            self.running.append(req)
            out.scheduled.append(ScheduledRequest(req, n, req.num_computed_tokens))
            budget -= n
        return out

    def update(
        self,
        out: SchedulerOutput,
        sampled: dict[str, int | list[int]],
        drafts: dict[str, list[int]] | None = None,
    ) -> dict[str, list[int]]:
        """Advance computed counts, append sampled tokens, finish requests that hit a stop condition.

        ``sampled`` maps a request to its new token, or to its new tokens after verifying drafts (the
        accepted drafts, then the main model's token after them). ``drafts`` are the next step's
        proposals. Returns the tokens actually appended per request (cut at a stop condition); the
        requests that finished have ``finish_reason`` set.
        """
        appended: dict[str, list[int]] = {}
        for s in out.scheduled:
            req = s.request
            if req.status is not RequestStatus.RUNNING:
                continue  # aborted while the step ran
            got = sampled.get(req.request_id)
            tokens = [got] if isinstance(got, int) else list(got or [])
            # rejected drafts were computed but are not part of the sequence: their KV is overwritten
            accepted = len(tokens) - 1 if s.num_draft else 0
            req.num_computed_tokens = s.start + s.num_tokens - (s.num_draft - accepted)
            self.kv.cache_full_blocks(req)
            if not tokens:
                continue
            kept = appended[req.request_id] = []
            for token in tokens:
                req.output_token_ids.append(token)
                kept.append(token)
                reason = self._stop_reason(req, token)
                if reason is not None:
                    self.finish(req, reason)
                    break
            else:
                if self.prefill_only:  # its decode runs elsewhere, from this KV
                    self._park(req)
                else:
                    req.draft_token_ids = list((drafts or {}).get(req.request_id, ()))
        return appended

    def _stop_reason(self, req: Request, token: int) -> FinishReason | None:
        sp = req.sampling
        n_out = len(req.output_token_ids)
        if n_out >= sp.min_tokens:
            if not sp.ignore_eos and token in req.eos_token_ids:
                return FinishReason.STOP
            if token in sp.stop_token_ids:
                return FinishReason.STOP
        if n_out >= sp.max_tokens or req.num_tokens >= self.max_model_len:
            return FinishReason.LENGTH
        return None
