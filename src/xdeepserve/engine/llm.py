"""Offline generation in the caller's process (``xds generate`` and scripts)."""

from __future__ import annotations

from dataclasses import dataclass

from tqdm import tqdm

from ..model.loader import load_model
from .config import EngineConfig
from .core import EngineCore
from .detokenizer import IncrementalDetokenizer
from .request import FinishReason, SamplingParams, TokenLogprob


@dataclass
class Completion:
    request_id: str
    prompt_token_ids: list[int]
    token_ids: list[int]
    text: str
    finish_reason: FinishReason | None
    logprobs: list[TokenLogprob]


class LLM:
    def __init__(self, model: str, **engine_kwargs) -> None:
        self.config = EngineConfig(model=model, **engine_kwargs)
        bundle = load_model(
            model,
            device=self.config.device,
            dtype=self.config.torch_dtype,
            max_positions=self.config.max_model_len or 4096,
            mtp=self.config.mtp,
        )
        self.tokenizer = bundle.tokenizer
        self.core = EngineCore(self.config, bundle)
        self._next_id = 0

    def encode_chat(self, messages: list[dict[str, str]]) -> list[int]:
        text = self.tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        return self.tokenizer.encode(text, add_special_tokens=False)

    def generate(
        self,
        prompts: list[str] | list[list[int]],
        sampling: SamplingParams | list[SamplingParams] | None = None,
        *,
        use_tqdm: bool = False,
    ) -> list[Completion]:
        sampling = sampling or SamplingParams()
        params = sampling if isinstance(sampling, list) else [sampling] * len(prompts)
        done: dict[str, Completion] = {}
        detok: dict[str, IncrementalDetokenizer] = {}
        order = []
        for prompt, sp in zip(prompts, params):
            ids = self.tokenizer.encode(prompt, add_special_tokens=False) if isinstance(prompt, str) else list(prompt)
            rid = f"offline-{self._next_id}"
            self._next_id += 1
            self.core.add_request(rid, ids, sp)
            detok[rid] = IncrementalDetokenizer(self.tokenizer, ids, sp.stop, sp.include_stop_str_in_output)
            done[rid] = Completion(rid, ids, [], "", None, [])
            order.append(rid)
        bar = tqdm(total=len(order), desc="generate", disable=not use_tqdm)
        while self.core.has_work():
            for out in self.core.step():
                c, d = done[out.request_id], detok[out.request_id]
                c.token_ids.extend(out.new_token_ids)
                c.logprobs.extend(out.logprobs)
                c.text += d.add(out.new_token_ids, out.finished)
                if d.stopped and not out.finished:  # a stop string ends the request here
                    self.core.abort([out.request_id])
                    c.finish_reason = FinishReason.STOP
                    bar.update()
                elif out.finished:
                    c.finish_reason = FinishReason.STOP if d.stopped else out.finish_reason
                    bar.update()
        bar.close()
        return [done[r] for r in order]

    def chat(
        self, conversations: list[list[dict[str, str]]], sampling: SamplingParams | None = None, **kw
    ) -> list[Completion]:
        return self.generate([self.encode_chat(m) for m in conversations], sampling, **kw)

