"""Byte-level BPE tokenizer with ChatML special tokens and the ChatML chat template of
:mod:`rrr_ray.format.chatml`."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Iterable

from rrr_ray.format.chatml import CHAT_TEMPLATE, IM_END, IM_START

log = logging.getLogger(__name__)

PAD_TOKEN = "<|pad|>"
SPECIAL_TOKENS: tuple[str, ...] = (IM_START, IM_END, PAD_TOKEN)
"""Ids 0, 1, 2 of every tokenizer built here."""


def train_tokenizer(texts: Iterable[str], vocab_size: int = 3008, min_frequency: int = 2):
    """Train a byte-level BPE on ``texts`` and wrap it as a ``PreTrainedTokenizerFast``."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(list(texts), trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=IM_START,
        eos_token=IM_END,
        pad_token=PAD_TOKEN,
        unk_token=None,
        model_max_length=1024,
        clean_up_tokenization_spaces=False,
    )
    fast.chat_template = CHAT_TEMPLATE
    fast.padding_side = "left"
    log.info("trained a byte-level BPE tokenizer of %d tokens", len(fast))
    return fast


def load_tokenizer(path: str | Path):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(path))
    if tok.pad_token is None:
        tok.pad_token = PAD_TOKEN if PAD_TOKEN in tok.get_vocab() else tok.eos_token
    return tok
