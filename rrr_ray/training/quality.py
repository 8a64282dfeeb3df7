"""Coherence figures of RRR replies that a format check cannot give: the per-token perplexity of the
spoken reply (the ``respond`` section) under a reference model, conditioned on the user turn in
ChatML, and the distinct-bigram ratio of the spoken replies (so that repetition cannot pass for
coherence)."""

from __future__ import annotations

import math
import re
import statistics
from typing import Iterable, Sequence

from rrr_ray.format import validate
from rrr_ray.format.chatml import ASSISTANT_HEADER, render_chatml
from rrr_ray.format.spoken import spoken_reply

_WORD = re.compile(r"[a-z0-9']+")


def respond_section(reply: str) -> str | None:
    """The ``respond`` text of a reply (None when the reply has none, or it is empty)."""
    text = validate(reply).sections.get("respond")
    return text.strip() if text and text.strip() else None


def spoken_text(reply: str) -> str | None:
    """What a reply says: its ``respond`` section, or, for a reply with no usable section (an
    untagged model's), the reply with any RRR tags removed."""
    text = spoken_reply(reply).strip()
    return text or None


def distinct_bigram_ratio(texts: Iterable[str]) -> float | None:
    """Distinct word bigrams over all word bigrams of ``texts`` (lower-cased words, bigrams never
    crossing two texts); None when there are none."""
    seen: set[tuple[str, str]] = set()
    total = 0
    for t in texts:
        words = _WORD.findall(t.lower())
        pairs = list(zip(words, words[1:]))
        total += len(pairs)
        seen.update(pairs)
    return len(seen) / total if total else None


def respond_perplexities(model, tokenizer, pairs: Sequence[tuple[str, str]], batch_size: int = 16) -> list[float]:
    """Per-token perplexity of each ``(user, respond)`` pair's respond text under ``model`` (a
    transformers causal LM), the context being the ChatML user turn and the assistant header:
    ``exp`` of the mean negative log-likelihood of the respond tokens."""
    import torch

    out: list[float] = []
    model.eval()
    for i in range(0, len(pairs), batch_size):
        rows = []
        for user, respond in pairs[i:i + batch_size]:
            context = tokenizer(render_chatml([{"role": "user", "content": user}]) + ASSISTANT_HEADER,
                                add_special_tokens=False)["input_ids"]
            target = tokenizer(respond, add_special_tokens=False)["input_ids"]
            rows.append((context, target))
        width = max(len(c) + len(t) for c, t in rows)
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        ids = torch.full((len(rows), width), pad, dtype=torch.long)
        attn = torch.zeros((len(rows), width), dtype=torch.long)
        labels = torch.full((len(rows), width), -100, dtype=torch.long)
        for r, (c, t) in enumerate(rows):
            seq = c + t
            ids[r, :len(seq)] = torch.tensor(seq)
            attn[r, :len(seq)] = 1
            labels[r, len(c):len(seq)] = torch.tensor(t)
        with torch.no_grad():
            logits = model(input_ids=ids, attention_mask=attn).logits[:, :-1].float()
        nll = torch.nn.functional.cross_entropy(logits.transpose(1, 2), labels[:, 1:], ignore_index=-100,
                                                reduction="none")
        mask = labels[:, 1:] != -100
        for r in range(len(rows)):
            n = int(mask[r].sum())
            out.append(math.exp(float(nll[r][mask[r]].sum()) / n) if n else float("nan"))
    return out


def median(values: Iterable[float]) -> float | None:
    vals = [v for v in values if v == v]  # drop NaN
    return statistics.median(vals) if vals else None
