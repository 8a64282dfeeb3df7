"""Sentence BLEU per prediction (sacrebleu; exponential smoothing, effective order), scaled to 0-1."""

import evaluate

from rrr_ray.evaluation.metric_modules import pair_metric_info

_DESCRIPTION = "Sentence-level BLEU of each prediction against its reference (sacrebleu, 13a tokenizer)."


class RrrBleu(evaluate.Metric):
    def _info(self):
        return pair_metric_info(_DESCRIPTION, "Post, 2018 (sacrebleu); Papineni et al., 2002 (BLEU)",
                                "predictions: list of str; references: list of str")

    def _compute(self, predictions, references):
        from sacrebleu.metrics import BLEU

        bleu = BLEU(effective_order=True, smooth_method="exp", tokenize="13a")
        scores = [bleu.sentence_score(p, [r]).score / 100.0 for p, r in zip(predictions, references)]
        return {"bleu": scores}
