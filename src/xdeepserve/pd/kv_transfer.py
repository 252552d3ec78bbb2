"""The data plane of the prefill -> decode KV transfer, over XCCL.

A request's KV travels in a layout that neither side's paging shows through: one tensor
``[caches, tokens, heads, width]`` in the sender's dtype, where ``caches`` counts every cache tensor of
the model in order (per layer K then V for GQA, one latent per layer for MLA, then the MTP module's).
The sender gathers its block rows into it; the receiver scatters the rows into its own blocks, whatever
its block size, and casts to its own cache dtype. So a prefill group with 16-token bf16 blocks can feed
a decode group with 32-token fp32 blocks; a mismatch in what the two models cache (layer count, heads,
width) is refused by name before a byte moves.

What travels outside XCCL (the transfer task: request id, sender rank, event id, token count, sender
dtype) is small control data; :class:`TransferTask` is that record.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..xccl import XcclGroup

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


class KVLayoutError(ValueError):
    """The two sides' caches do not describe the same model (or the payload does not fit)."""


@dataclass(frozen=True)
class KVGeometry:
    """What a model caches per token: ``caches`` tensors of ``heads x width`` each."""

    caches: int
    heads: int
    width: int

    @classmethod
    def of(cls, kv_caches: list[tuple[torch.Tensor, ...]]) -> KVGeometry:
        flat = [t for layer in kv_caches for t in layer]
        shapes = {tuple(t.shape[1:]) for t in flat}
        if len(shapes) != 1:
            raise KVLayoutError(f"cache tensors have different per-token shapes {sorted(shapes)}")
        (heads, width), = shapes
        return cls(len(flat), heads, width)

    def check(self, other: KVGeometry, who: str) -> None:
        if self != other:
            raise KVLayoutError(
                f"KV layout of {who} does not match: it caches {other.caches} tensors of {other.heads} x "
                f"{other.width} per token, this side {self.caches} of {self.heads} x {self.width}"
            )


@dataclass(frozen=True)
class TransferTask:
    """The control record of one transfer, registered by the prefill side after prefill."""

    request_id: str
    src_rank: int  # the prefill side's rank in the transfer group
    event_id: int
    num_tokens: int
    dtype: str  # the sender's cache dtype
    geometry: KVGeometry

    def to_wire(self) -> dict:
        return {**self.__dict__, "geometry": self.geometry.__dict__}

    @classmethod
    def from_wire(cls, d: dict) -> TransferTask:
        return cls(**{**d, "geometry": KVGeometry(**d["geometry"])})


def _slots(block_ids: list[int], block_size: int, start: int, n: int, device: torch.device) -> torch.Tensor:
    pos = torch.arange(start, start + n)
    table = torch.tensor(block_ids, dtype=torch.long)
    if len(block_ids) * block_size < start + n:
        raise KVLayoutError(f"{len(block_ids)} blocks of {block_size} cannot hold tokens up to {start + n}")
    return (table[pos // block_size] * block_size + pos % block_size).to(device)


def gather_kv(kv_caches: list[tuple[torch.Tensor, ...]], block_ids: list[int], block_size: int, num_tokens: int) -> torch.Tensor:
    """``[caches, num_tokens, heads, width]``: the first ``num_tokens`` cached rows of a request."""
    flat = [t for layer in kv_caches for t in layer]
    slots = _slots(block_ids, block_size, 0, num_tokens, flat[0].device)
    return torch.stack([t.index_select(0, slots) for t in flat])


def scatter_kv(
    kv_caches: list[tuple[torch.Tensor, ...]], block_ids: list[int], block_size: int, payload: torch.Tensor, start: int = 0
) -> None:
    """Write ``payload [caches, n, heads, width]`` into positions ``start .. start + n`` of a request."""
    flat = [t for layer in kv_caches for t in layer]
    if payload.shape[0] != len(flat) or tuple(payload.shape[2:]) != tuple(flat[0].shape[1:]):
        raise KVLayoutError(f"payload {tuple(payload.shape)} does not fit caches of {KVGeometry.of(kv_caches)}")
    slots = _slots(block_ids, block_size, start, payload.shape[1], flat[0].device)
    for t, rows in zip(flat, payload):
        t.index_copy_(0, slots, rows.to(device=t.device, dtype=t.dtype))


def send_kv(
    group: XcclGroup, peer: int, task: TransferTask, kv_caches: list[tuple[torch.Tensor, ...]], block_ids: list[int],
    block_size: int,
) -> None:
    """Prefill side: gather the task's rows and send them to ``peer`` (blocks until it has them all)."""
    KVGeometry.of(kv_caches).check(task.geometry, "the task")
    group.send(gather_kv(kv_caches, block_ids, block_size, task.num_tokens).contiguous(), peer, task.event_id)


def recv_kv(
    group: XcclGroup, task: TransferTask, kv_caches: list[tuple[torch.Tensor, ...]], block_ids: list[int],
    block_size: int,
) -> int:
    """Decode side: receive the task's rows from its prefill rank into this side's blocks. Returns the
    bytes received. Raises :class:`KVLayoutError` before any transfer when the models differ, and XCCL's
    errors (naming the prefill rank) when it dies or stalls past the deadline."""
    return XcclPull(group, task, kv_caches, block_ids, block_size).result()


def dtype_name(dtype: torch.dtype) -> str:
    for name, d in _DTYPES.items():
        if d == dtype:
            return name
    raise KVLayoutError(f"unsupported KV dtype {dtype}")


class XcclPull:
    """Decode side of one transfer: receives the task's rows over XCCL into a staging buffer while the
    engine keeps stepping, then scatters them into the request's blocks. Satisfies the engine's
    ``KVFetch`` protocol (``done`` / ``result``)."""

    def __init__(
        self, group: XcclGroup, task: TransferTask, kv_caches: list[tuple[torch.Tensor, ...]], block_ids: list[int],
        block_size: int,
    ) -> None:
        mine = KVGeometry.of(kv_caches)
        mine.check(task.geometry, f"prefill rank {task.src_rank}")
        if task.dtype not in _DTYPES:
            raise KVLayoutError(f"unsupported KV dtype {task.dtype!r} from prefill rank {task.src_rank}")
        self.task, self.kv_caches, self.block_ids, self.block_size = task, kv_caches, block_ids, block_size
        self.buf = torch.empty(mine.caches, task.num_tokens, mine.heads, mine.width, dtype=_DTYPES[task.dtype])
        self.handle = group.irecv(self.buf, task.src_rank, task.event_id)

    def done(self) -> bool:
        return self.handle.test()

    def result(self) -> int:
        """Bytes received, once the rows are in the blocks (waits for the receive; XCCL bounds that
        wait by its deadline and names the prefill rank if it dies)."""
        n = self.handle.wait()
        expected = self.buf.numel() * self.buf.element_size()
        if n != expected:  # the prefill side had no rows for it (freed, aborted) and answered short
            raise KVLayoutError(f"prefill rank {self.task.src_rank} sent {n} bytes for {self.task.request_id}, "
                                f"expected {expected}: its KV is gone")
        scatter_kv(self.kv_caches, self.block_ids, self.block_size, self.buf)
        return n


class KVSender:
    """Prefill side: sends parked requests' KV when their decode side pulls, and reports which sends
    finished (XCCL's send completes only once the receiver has every byte, so a finished send is the
    decode side's acknowledgement and the blocks can be freed)."""

    def __init__(self, group: XcclGroup) -> None:
        self.group = group
        self.inflight: dict[str, object] = {}

    def start(self, request_id: str, rows: torch.Tensor, peer: int, event_id: int) -> None:
        self.inflight[request_id] = self.group.isend(rows.contiguous(), peer, event_id)

    def poll(self) -> list[tuple[str, Exception | None]]:
        """(request id, error or None) of every send that ended since the last poll."""
        ended = []
        for rid, h in list(self.inflight.items()):
            if h.test():
                del self.inflight[rid]
                try:
                    h.wait(timeout_s=0)
                    ended.append((rid, None))
                except Exception as e:  # the decode side died or stalled: the caller frees the blocks
                    ended.append((rid, e))
        return ended
