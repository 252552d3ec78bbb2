"""Incremental detokenisation with stop strings (the work of the paper's per-DP-group output process).

Decoding only a short window of recent tokens per step keeps the cost per token constant. Multi-byte
characters split across tokens are held back until complete (the window decodes to U+FFFD until then).
When stop strings are set, the last ``max(len(stop)) - 1`` characters are held back too, so a stop string
that arrives across two steps is never partially streamed.
"""

from __future__ import annotations

from dataclasses import dataclass, field

_PROMPT_CONTEXT = 5  # prompt tokens that seed the window, so the first output token decodes in context


@dataclass
class IncrementalDetokenizer:
    tokenizer: object
    prompt_tail: list[int]
    stop: tuple[str, ...] = ()
    include_stop_str_in_output: bool = False
    _ids: list[int] = field(default_factory=list)
    _prefix_offset: int = 0
    _read_offset: int = 0
    text: str = ""
    _emitted: int = 0
    stopped: bool = False

    def __post_init__(self) -> None:
        self._ids = list(self.prompt_tail[-_PROMPT_CONTEXT:])
        self._read_offset = len(self._ids)
        self._hold = max((len(s) for s in self.stop), default=1) - 1
        self._prefix_text: str | None = None  # decode of the window before the read offset
        # A fast tokenizer without space clean-up decodes exactly as its Rust backend does; calling
        # the backend directly skips the Python wrapper's argument conversion, twice per token.
        backend = getattr(self.tokenizer, "backend_tokenizer", None)
        if backend is not None and not getattr(self.tokenizer, "clean_up_tokenization_spaces", True):
            self._backend = backend
        else:
            self._backend = None

    def _decode(self, ids: list[int]) -> str:
        if self._backend is not None:
            return self._backend.decode(ids, skip_special_tokens=True)
        return self.tokenizer.decode(ids, skip_special_tokens=True)

    def add(self, new_token_ids: tuple[int, ...] | list[int], finished: bool) -> str:
        """Feed new tokens; return the text that may be streamed now. Sets :attr:`stopped` when a stop
        string appears (the text is truncated there)."""
        if self.stopped:
            return ""
        for tid in new_token_ids:
            self._ids.append(tid)
            if self._prefix_text is None:  # the window moved: decode its new prefix once
                self._prefix_text = self._decode(self._ids[self._prefix_offset : self._read_offset])
            prefix = self._prefix_text
            full = self._decode(self._ids[self._prefix_offset :])
            if len(full) > len(prefix) and not full.endswith("\ufffd"):
                before = len(self.text)
                self.text += full[len(prefix) :]
                self._prefix_offset, self._read_offset = self._read_offset, len(self._ids)
                self._prefix_text = None
                if self.stop and self._check_stop(before):
                    break
        if self.stopped or finished:
            end = len(self.text)
        else:
            end = max(self._emitted, len(self.text) - self._hold)
        delta = self.text[self._emitted : end]
        self._emitted = end
        return delta

    def _check_stop(self, appended_at: int) -> bool:
        start = max(0, appended_at - self._hold)
        best = None
        for s in self.stop:
            i = self.text.find(s, start)
            if i != -1 and (best is None or i < best[0]):
                best = (i, s)
        if best is None:
            return False
        i, s = best
        self.text = self.text[: i + len(s)] if self.include_stop_str_in_output else self.text[:i]
        self.stopped = True
        return True

    # ---- hand-over (disaggregated prefill -> decode) ------------------------------------------------
    def state(self) -> dict:
        """Everything needed to continue on another process (the window from the prefix offset on)."""
        return {"ids": self._ids[self._prefix_offset :], "read": self._read_offset - self._prefix_offset,
                "text": self.text, "emitted": self._emitted, "stop": list(self.stop),
                "include": self.include_stop_str_in_output, "stopped": self.stopped}

    @classmethod
    def resume(cls, tokenizer, state: dict) -> IncrementalDetokenizer:
        """Continue from :meth:`state`: the next :meth:`add` streams exactly what this one would have."""
        self = cls(tokenizer, [], tuple(state["stop"]), state["include"])
        self._ids = list(state["ids"])
        self._prefix_offset, self._read_offset = 0, state["read"]
        self.text, self._emitted, self.stopped = state["text"], state["emitted"], state["stopped"]
        return self
