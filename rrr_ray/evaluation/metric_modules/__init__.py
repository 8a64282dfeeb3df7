"""Local ``evaluate`` metric modules (loaded by path, never from the hub) and what they share."""

from __future__ import annotations

import datasets
import evaluate

PAIR_FEATURES = datasets.Features({"predictions": datasets.Value("string"),
                                   "references": datasets.Value("string")})


def pair_metric_info(description: str, citation: str, inputs_description: str) -> evaluate.MetricInfo:
    """The ``MetricInfo`` of a metric scoring each prediction string against one reference string."""
    return evaluate.MetricInfo(description=description, citation=citation,
                               inputs_description=inputs_description, features=PAIR_FEATURES)
