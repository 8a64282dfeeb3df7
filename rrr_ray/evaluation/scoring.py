"""Per-reply scores against the references (format compliance is ``evaluation.compliance``): the reference
metrics through ``evaluate`` and the local modules of ``metric_modules/``, at two levels:

- ``respond``: what the reply says (its respond section, or the untagged text of a reply without
  one, ``rrr_ray.format.spoken.spoken_reply``) against the reference's respond section;
- ``reply``: the whole reply, tags included, against the whole reference reply.
"""

from __future__ import annotations

import logging
import warnings
from functools import lru_cache
from pathlib import Path
from typing import Any, Sequence

from rrr_ray.format.spoken import spoken_reply

log = logging.getLogger(__name__)

MODULES = Path(__file__).with_name("metric_modules")
LEVELS: tuple[str, ...] = ("respond", "reply")
TEXT_METRICS: tuple[str, ...] = ("bleu", "rouge1", "rouge2", "rougeL", "meteor", "bertscore_precision",
                                 "bertscore_recall", "bertscore_f1", "semantic_similarity")


@lru_cache(maxsize=None)
def load_module(name: str) -> Any:
    """A local metric module of ``metric_modules/`` through ``evaluate.load`` (no hub)."""
    import evaluate

    return evaluate.load(str(MODULES / name))


def level_texts(reply: str, level: str) -> str:
    return spoken_reply(reply) if level == "respond" else reply.strip()


def text_metrics(predictions: Sequence[str], references: Sequence[str], *, wordnet: Any | None,
                 bertscore_model: Path | None, bertscore_layer: int) -> dict[str, list[float | None]]:
    """Every text metric of each ``(prediction, reference)`` pair; a metric that cannot be
    computed here (no WordNet, no MiniLM) is None for every pair, never 0."""
    n = len(predictions)
    out: dict[str, list[float | None]] = {m: [None] * n for m in TEXT_METRICS}
    if not n:
        return out
    preds, refs = list(predictions), list(references)
    out["bleu"] = load_module("rrr_bleu").compute(predictions=preds, references=refs)["bleu"]
    rouge = load_module("rrr_rouge").compute(predictions=preds, references=refs)
    for k in ("rouge1", "rouge2", "rougeL"):
        out[k] = rouge[k]
    if wordnet is not None:
        out["meteor"] = load_module("rrr_meteor").compute(predictions=preds, references=refs, wordnet=wordnet)["meteor"]
    if bertscore_model is not None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # bert_score warns about empty candidates (scored 0)
            bs = load_module("rrr_bertscore").compute(predictions=preds, references=refs,
                                                      model_path=str(bertscore_model), num_layers=bertscore_layer)
        out["bertscore_precision"], out["bertscore_recall"], out["bertscore_f1"] = (
            bs["precision"], bs["recall"], bs["f1"])
        from rrr_ray.evaluation.embeddings import cosine_pairs

        out["semantic_similarity"] = cosine_pairs(preds, refs)
    return out
