"""Incremental detokenisation with stop strings, on the offline tokenizer of the tiny checkpoints."""

from __future__ import annotations

import pytest

from xdeepserve.engine.detokenizer import IncrementalDetokenizer
from xdeepserve.model.loader import load_tokenizer


@pytest.fixture(scope="module")
def tok(tiny_checkpoint):
    return load_tokenizer(tiny_checkpoint("qwen3_moe"))


def _stream(tok, text: str, **kw) -> tuple[list[str], IncrementalDetokenizer]:
    ids = tok.encode(text, add_special_tokens=False)
    d = IncrementalDetokenizer(tok, tok.encode("Q:", add_special_tokens=False), **kw)
    deltas = [d.add([t], finished=(i == len(ids) - 1)) for i, t in enumerate(ids)]
    return deltas, d


def test_token_by_token_deltas_concatenate_to_the_full_decode(tok):
    text = "The quick brown fox jumps over the lazy dog. Sort 3 1 2: 1 2 3."
    deltas, _ = _stream(tok, text)
    assert "".join(deltas) == text


def test_multibyte_characters_are_never_split(tok):
    text = "naïve café — 東京 🚀 done"
    deltas, _ = _stream(tok, text)
    assert "".join(deltas) == text
    assert all("\ufffd" not in d for d in deltas)


def test_stop_string_across_tokens_truncates_and_is_never_partially_streamed(tok):
    deltas, d = _stream(tok, "Paris is the capital of France. The end", stop=("capital of",))
    assert d.stopped
    assert "".join(deltas) == "Paris is the "
    assert not any("capital" in x for x in deltas)


def test_stop_string_can_be_included(tok):
    deltas, d = _stream(tok, "hello world please", stop=("world",), include_stop_str_in_output=True)
    assert d.stopped and "".join(deltas) == "hello world"


@pytest.mark.parametrize("text,stop", [("héllo wörld → ok", ()), ("abc STOP def", ("STOP",)), ("日本語のテキスト", ("テ",))])
def test_hand_over_after_any_token_streams_exactly_what_one_detokenizer_would(tok, text, stop):
    """Disaggregated PD: the prefill side's output process detokenises the first token(s), then the
    decode side's continues from the state it was handed (held-back bytes and stop-string window too)."""
    ids = tok.encode(text, add_special_tokens=False)
    prompt = tok.encode("Q:", add_special_tokens=False)
    whole = IncrementalDetokenizer(tok, prompt, stop)
    expected = [whole.add([t], i == len(ids) - 1) for i, t in enumerate(ids)]
    for cut in range(1, len(ids)):
        first = IncrementalDetokenizer(tok, prompt, stop)
        got = [first.add([t], False) for t in ids[:cut]]
        second = IncrementalDetokenizer.resume(tok, first.state())
        got += [second.add([t], cut + i == len(ids) - 1) for i, t in enumerate(ids[cut:])]
        assert got == expected, cut
        assert second.stopped == whole.stopped
