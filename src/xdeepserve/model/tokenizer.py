"""An offline byte-level BPE tokenizer with a ChatML-style chat template.

Nothing can be downloaded at run time, so tiny checkpoints carry a tokenizer trained here in well under
a second on a small built-in corpus. It is saved in the standard ``tokenizer.json`` +
``tokenizer_config.json`` pair, so ``transformers.AutoTokenizer`` loads it like any hub tokenizer.
"""

from __future__ import annotations

import json
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

SPECIAL_TOKENS = ["<|pad|>", "<|bos|>", "<|eos|>", "<|im_start|>", "<|im_end|>"]

CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

_CORPUS = """
The quick brown fox jumps over the lazy dog. A serving system answers many requests at once.
Mixture-of-experts models route every token to a few experts chosen by a router. Attention reads the
key and value cache of every earlier token. Prefill processes the prompt; decode produces one token per
step. The scheduler batches requests continuously and preempts one when memory runs out.
What is the capital of France? Paris is the capital of France. Tell me a story about a robot who
learns to paint. Once upon a time there was a small robot that loved colours.
Numbers: 0 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 17 18 19 20 42 100 256 1024 2048 4096 65536.
Add 17 and 25. The sum of 17 and 25 is 42. Reverse the word hello: olleh. Sort 3 1 2: 1 2 3.
user assistant system question answer hello world please thank you yes no maybe because therefore
Shared memory lets processes on one host exchange tensors without copies through the kernel.
Experts, tokens, layers, heads, blocks, tables, queues, streams, events, messages, peers, ranks.
"""


def train_tokenizer(vocab_size: int = 1024) -> Tokenizer:
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    lines = [line for line in _CORPUS.strip().splitlines() if line]
    tok.train_from_iterator(lines * 4, trainer=trainer)
    return tok


def save_tokenizer(tok: Tokenizer, out: Path, model_max_length: int) -> dict[str, int]:
    """Write tokenizer.json and tokenizer_config.json; returns the special-token ids."""
    out.mkdir(parents=True, exist_ok=True)
    tok.save(str(out / "tokenizer.json"))
    ids = {t: tok.token_to_id(t) for t in SPECIAL_TOKENS}
    config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": "<|bos|>",
        "eos_token": "<|im_end|>",
        "pad_token": "<|pad|>",
        "add_bos_token": False,
        "model_max_length": model_max_length,
        "clean_up_tokenization_spaces": False,
        "chat_template": CHAT_TEMPLATE,
    }
    (out / "tokenizer_config.json").write_text(json.dumps(config, indent=2))
    return ids
