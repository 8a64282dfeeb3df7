"""ROUGE-1, ROUGE-2 and ROUGE-L F1 per prediction (Google's rouge_score, as evaluate's rouge)."""

import evaluate

from rrr_ray.evaluation.metric_modules import pair_metric_info

_DESCRIPTION = "ROUGE-1/2/L F-measure of each prediction against its reference (rouge_score)."


class RrrRouge(evaluate.Metric):
    def _info(self):
        return pair_metric_info(_DESCRIPTION, "Lin, 2004 (ROUGE)",
                                "predictions: list of str; references: list of str; use_stemmer: bool")

    def _compute(self, predictions, references, use_stemmer=False):
        from rouge_score import rouge_scorer

        types = ["rouge1", "rouge2", "rougeL"]
        scorer = rouge_scorer.RougeScorer(types, use_stemmer=use_stemmer)
        out = {t: [] for t in types}
        for p, r in zip(predictions, references):
            s = scorer.score(r, p)
            for t in types:
                out[t].append(s[t].fmeasure)
        return out
