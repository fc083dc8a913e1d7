"""The testbed tokenizer: a small byte-level BPE with Qwen2's exact pre-tokenizer.

It is built the way Qwen2's tokenizer is (NFC normaliser, Qwen2's split regex, byte-level
BPE, digits always single tokens), only with a vocabulary learned on the task's text, so that
``AutoTokenizer`` (which loads it as ``Qwen2Tokenizer``), vLLM and this module all tokenize
identically, and any text still tokenizes (every byte is in the vocabulary).
"""

from __future__ import annotations

from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

from stepgraph.testbed import task

SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
VOCAB_SIZE = 384
VOCAB_SIZE_V2 = 2048
"""Task v2's vocabulary: large enough that its words are mostly one or two pieces."""
MAX_LENGTH_V2 = 512
QWEN2_PRETOKENIZE_REGEX = (
    r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"""
)
# Qwen2's chat template, without the tool-calling branches the testbed does not use.
CHAT_TEMPLATE = (
    "{%- for message in messages %}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)


def _corpus() -> list[str]:
    problems = task.generate("train", 3000, seed=12345)
    chat = "<|im_start|>system\n<|im_end|>\n<|im_start|>user\n<|im_end|>\n<|im_start|>assistant\n"
    return [chat] + [f"{p.question}\n{p.solution}" for p in problems]


def _corpus_v2() -> list[str]:
    from stepgraph.testbed import wordlists, wordproblems

    problems = wordproblems.generate("train", 20000, seed=12345)
    words = [n for n, _ in wordlists.NAMES] + [w for nouns in wordlists.NOUNS.values() for pair in nouns for w in pair]
    chat = "<|im_start|>system\n<|im_end|>\n<|im_start|>user\n<|im_end|>\n<|im_start|>assistant\n"
    return [chat, " ".join(words)] + [f"{p.question}\n{p.solution}" for p in problems]


def build_tokenizer() -> PreTrainedTokenizerFast:
    """Train the testbed tokenizer on task text (deterministic) and wrap it for transformers."""
    return _build(_corpus(), VOCAB_SIZE, model_max_length=256)


def build_tokenizer_v2() -> PreTrainedTokenizerFast:
    """The task-v2 tokenizer: the same construction, trained on ``wordproblems`` text and its word lists."""
    return _build(_corpus_v2(), VOCAB_SIZE_V2, model_max_length=MAX_LENGTH_V2)


def _build(corpus: list[str], vocab_size: int, model_max_length: int) -> PreTrainedTokenizerFast:
    core = Tokenizer(models.BPE(unk_token=None, byte_fallback=False, fuse_unk=False))
    core.normalizer = normalizers.NFC()
    core.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(QWEN2_PRETOKENIZE_REGEX), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    core.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    core.train_from_iterator(corpus, trainer)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=core,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        unk_token="<|endoftext|>",
        bos_token=None,
        clean_up_tokenization_spaces=False,
        model_max_length=model_max_length,
    )
    tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer
