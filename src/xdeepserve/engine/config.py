"""Engine configuration: one frozen dataclass for a FlowServe DP group."""

from __future__ import annotations

from dataclasses import dataclass

import torch

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


@dataclass(frozen=True)
class EngineConfig:
    model: str
    device: str = "cpu"
    dtype: str = "auto"  # "auto": fp32 on CPU (exact parity with the reference), bf16 on CUDA
    block_size: int = 16
    num_kv_blocks: int | None = None  # None: derived from kv_cache_memory_bytes
    kv_cache_memory_bytes: int = 512 * 2**20
    max_model_len: int | None = None  # None: min(max_position_embeddings, 4096)
    max_num_seqs: int = 128
    max_num_batched_tokens: int = 2048
    enable_prefix_caching: bool = True
    enable_chunked_prefill: bool = True
    served_model_name: str | None = None
    cuda_graphs: bool = True  # decode-only steps replay captured CUDA graphs (CUDA devices only)
    # DeepSeek MTP speculative decoding (one draft token per step, greedy requests): None = when the
    # checkpoint has an MTP module, True = require one, False = off
    mtp: bool | None = None
    # disaggregated prefill-decode: park each request after its first token, KV kept until pulled
    prefill_only: bool = False
    # CPU threads of this engine process (torch intra-op and the Numba kernels); None: the libraries'
    # defaults (all cores). Several engines on one host should split the cores (xds launch does).
    num_threads: int | None = None
    seed: int = 0

    @property
    def torch_dtype(self) -> torch.dtype:
        if self.dtype == "auto":
            return torch.bfloat16 if self.device.startswith("cuda") else torch.float32
        if self.dtype not in _DTYPES:
            raise ValueError(f"unknown dtype {self.dtype!r}; choose from auto, {', '.join(_DTYPES)}")
        return _DTYPES[self.dtype]
