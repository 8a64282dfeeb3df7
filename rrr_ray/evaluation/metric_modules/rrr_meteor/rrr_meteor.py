"""METEOR per prediction (nltk), with WordNet 3.0 read from a local folder (never nltk.download)."""

import re

import evaluate

from rrr_ray.evaluation.metric_modules import pair_metric_info

_DESCRIPTION = "METEOR of each prediction against its reference (nltk's meteor_score, WordNet synonyms)."
_WORD = re.compile(r"\w+(?:'\w+)?|[^\w\s]")


def _tokens(text):
    return _WORD.findall(text.lower())


class RrrMeteor(evaluate.Metric):
    def _info(self):
        return pair_metric_info(_DESCRIPTION, "Banerjee and Lavie, 2005 (METEOR)",
                                "predictions: list of str; references: list of str; wordnet: an nltk WordNet reader")

    def _compute(self, predictions, references, wordnet=None, alpha=0.9, beta=3.0, gamma=0.5):
        from nltk.translate.meteor_score import meteor_score

        if wordnet is None:
            raise ValueError("rrr_meteor needs a WordNet reader (wordnet=...): it never downloads one")
        scores = [meteor_score([_tokens(r)], _tokens(p), wordnet=wordnet, alpha=alpha, beta=beta, gamma=gamma)
                  for p, r in zip(predictions, references)]
        return {"meteor": scores}
