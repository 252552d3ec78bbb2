"""Prometheus metrics measured at the HTTP frontend, plus the engine's own counters read at scrape time.

Latencies are taken where the user feels them: from the moment the API request was parsed to the moment a
token left the engine client. Each app gets its own CollectorRegistry so that several servers (or tests) in
one process never share counters.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from xdeepserve.engine.request import RequestOutput

log = logging.getLogger(__name__)

# Buckets span a CPU test model (seconds per token) down to a GPU decode step (milliseconds).
_TTFT_BUCKETS_S = (0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0,
                   20.0, 40.0, 80.0)
_ITL_BUCKETS_S = (0.001, 0.0025, 0.005, 0.01, 0.015, 0.02, 0.025, 0.03, 0.04, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3,
                  0.4, 0.5, 0.75, 1.0, 2.5)
_E2E_BUCKETS_S = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0, 40.0, 50.0, 60.0, 120.0, 240.0,
                  480.0, 960.0)


class EngineStatsCollector(Collector):
    """Reads ``stats()`` (an EngineStats) at scrape time, so the gauges are never stale."""

    def __init__(self, stats: Callable[[], object]) -> None:
        self._stats = stats

    def collect(self) -> Iterator[Metric]:
        try:
            s = self._stats()
        except Exception:  # a dead engine must not break the scrape of the frontend's own metrics
            log.warning("engine stats unavailable for /metrics", exc_info=True)
            return
        yield GaugeMetricFamily("xds_num_requests_waiting", "Requests queued in the scheduler", value=s.num_waiting)
        yield GaugeMetricFamily("xds_num_requests_running", "Requests in the running batch", value=s.num_running)
        yield GaugeMetricFamily("xds_num_requests_parked", "Prefilled requests holding KV until a decode pulls it",
                                value=s.num_parked)
        yield GaugeMetricFamily("xds_num_requests_awaiting_kv", "Transferred requests waiting for blocks or KV",
                                value=s.num_awaiting_kv)
        yield GaugeMetricFamily("xds_kv_cache_usage_ratio", "Fraction of KV-cache blocks in use (0..1)",
                                value=s.kv_cache_usage)
        # Monotonic engine totals: typed as counters, which expose the "_total" sample names.
        yield CounterMetricFamily("xds_prefix_cache_hit_tokens", "Prompt tokens served from the prefix cache",
                                  value=s.prefix_cache_hit_tokens)
        yield CounterMetricFamily("xds_num_preemptions", "Requests preempted for lack of KV-cache blocks",
                                  value=s.num_preemptions)
        yield CounterMetricFamily("xds_spec_draft_tokens", "MTP draft tokens verified by the main model",
                                  value=s.spec_draft_tokens)
        yield CounterMetricFamily("xds_spec_accepted_tokens", "MTP draft tokens accepted",
                                  value=s.spec_accepted_tokens)


class FrontendMetrics:
    def __init__(self, engine_stats: Callable[[], object]) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.time_to_first_token = Histogram("xds_time_to_first_token_seconds", "Time to first token",
                                             buckets=_TTFT_BUCKETS_S, registry=r)
        self.inter_token_latency = Histogram("xds_inter_token_latency_seconds", "Time between output tokens",
                                             buckets=_ITL_BUCKETS_S, registry=r)
        self.e2e_request_latency = Histogram("xds_e2e_request_latency_seconds", "Request latency, arrival to "
                                             "last token", buckets=_E2E_BUCKETS_S, registry=r)
        self.prompt_tokens = Counter("xds_prompt_tokens", "Prompt tokens of admitted API requests", registry=r)
        self.generation_tokens = Counter("xds_generation_tokens", "Generated tokens", registry=r)
        self.requests = Counter("xds_requests", "Finished engine requests (one per choice)", ["finish_reason"],
                                registry=r)
        self.request_errors = Counter("xds_request_errors", "API requests answered with an error",
                                      ["code"], registry=r)
        r.register(EngineStatsCollector(engine_stats))

    def track(self, arrival_s: float) -> RequestTimer:
        """A timer for one engine request whose API request arrived at ``arrival_s`` (time.perf_counter)."""
        return RequestTimer(self, arrival_s)

    def count_error(self, status_code: int) -> None:
        self.request_errors.labels(code=str(status_code)).inc()

    def exposition(self) -> bytes:
        return generate_latest(self.registry)


class RequestTimer:
    """Turns the stream of outputs of one engine request into TTFT, inter-token and end-to-end samples."""

    def __init__(self, metrics: FrontendMetrics, arrival_s: float) -> None:
        self._m = metrics
        self._arrival_s = arrival_s
        self._last_token_s: float | None = None
        self.finished = False

    def on_output(self, out: RequestOutput) -> None:
        now = time.perf_counter()
        n = len(out.token_ids)
        if n:
            self._m.generation_tokens.inc(n)
            if self._last_token_s is None:
                self._m.time_to_first_token.observe(now - self._arrival_s)
                n -= 1  # the rest of this delta (if any) arrived with the first token
            # A delta of k tokens after a gap dt (several decode steps between output flushes) counts as k gaps
            # of dt/k: the latency per token the user saw.
            if n and self._last_token_s is not None:
                gap = (now - self._last_token_s) / n
                for _ in range(n):
                    self._m.inter_token_latency.observe(gap)
            self._last_token_s = now
        if out.finish_reason is not None:
            self._finish(out.finish_reason.value, now)

    def close(self) -> None:
        """Called when the consumer stops; a request that never finished was aborted."""
        if not self.finished:
            self._finish("abort", time.perf_counter())

    def _finish(self, finish_reason: str, now: float) -> None:
        self.finished = True
        self._m.requests.labels(finish_reason=finish_reason).inc()
        self._m.e2e_request_latency.observe(now - self._arrival_s)
