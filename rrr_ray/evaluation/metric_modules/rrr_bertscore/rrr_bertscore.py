"""BERTScore precision, recall and F1 per prediction (bert_score) from a local model folder, with an
explicit layer: no idf weighting, no baseline rescaling."""

import evaluate

from rrr_ray.evaluation.metric_modules import pair_metric_info

_DESCRIPTION = "BERTScore P/R/F1 of each prediction against its reference (greedy cosine matching)."
_SCORERS = {}  # (model path, layer, batch size) -> BERTScorer: the model is loaded once per process


class RrrBertscore(evaluate.Metric):
    def _info(self):
        return pair_metric_info(_DESCRIPTION, "Zhang et al., 2020 (BERTScore)",
                                "predictions, references: lists of str; model_path: a local model folder; "
                                "num_layers: the layer whose embeddings are matched")

    def _compute(self, predictions, references, model_path=None, num_layers=None, batch_size=32):
        from bert_score import BERTScorer

        if model_path is None or num_layers is None:
            raise ValueError("rrr_bertscore needs model_path (a local folder) and num_layers")
        out = {"precision": [0.0] * len(predictions), "recall": [0.0] * len(predictions),
               "f1": [0.0] * len(predictions)}
        # A pair with an empty side scores 0, as bert_score itself scores an empty candidate
        # (its own path for empty strings does not run on transformers 5).
        keep = [i for i, (p, r) in enumerate(zip(predictions, references)) if p.strip() and r.strip()]
        if not keep:
            return out
        key = (str(model_path), int(num_layers), int(batch_size))
        if key not in _SCORERS:
            _SCORERS[key] = BERTScorer(model_type=key[0], num_layers=key[1], batch_size=key[2], idf=False,
                                       rescale_with_baseline=False, device="cpu")
        scorer = _SCORERS[key]
        p, r, f = scorer.score([predictions[i] for i in keep], [references[i] for i in keep])
        for name, values in (("precision", p), ("recall", r), ("f1", f)):
            for i, v in zip(keep, values.tolist()):
                out[name][i] = v
        return out
