"""Disaggregated prefill–decode (paper §5.1): moving a request's KV cache from the prefill DP group that
computed it to the decode DP group that continues it."""
