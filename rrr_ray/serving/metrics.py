"""Serving metrics, exported through ``ray.serve.metrics`` when running inside Ray Serve."""

from __future__ import annotations

import logging
from typing import Optional

logger = logging.getLogger(__name__)

_LATENCY_BOUNDS = [0.001, 0.0025, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0]


class ServingMetrics:
    """Time to first token, time per output token, output tokens and the share of valid replies,
    with the engine's own time to first token and the serving overhead (the difference) apart, and
    the healed replies by reason."""

    def __init__(self) -> None:
        from ray.serve import metrics

        tags = ("model",)
        self.ttft = metrics.Histogram("rrr_time_to_first_token_s", "Ingress arrival to first token.",
                                      boundaries=_LATENCY_BOUNDS, tag_keys=tags)
        self.engine_ttft = metrics.Histogram("rrr_engine_time_to_first_token_s", "The same, inside the engine.",
                                             boundaries=_LATENCY_BOUNDS, tag_keys=tags)
        self.overhead = metrics.Histogram("rrr_serving_overhead_ttft_s", "TTFT added by the graph over the engine.",
                                          boundaries=_LATENCY_BOUNDS, tag_keys=tags)
        self.tpot = metrics.Histogram("rrr_time_per_output_token_s", "Mean time per token after the first.",
                                      boundaries=_LATENCY_BOUNDS, tag_keys=tags)
        self.output_tokens = metrics.Counter("rrr_output_tokens", "Tokens generated.", tag_keys=tags)
        self.replies = metrics.Counter("rrr_replies", "Finished replies, by RRR validity.", tag_keys=("model", "valid"))
        self.errors = metrics.Counter("rrr_errors", "Requests that ended in an error.", tag_keys=tags)
        self.heals = metrics.Counter("rrr_heals", "Replies healed after they broke the RRR format, by the "
                                     "violation (exported as rrr_heals_total).", tag_keys=("model", "reason"))

    def record(self, model: str, ttft: Optional[float], engine_ttft: Optional[float], total: float,
               output_tokens: int, valid: Optional[bool]) -> None:
        tags = {"model": model}
        if ttft is not None:
            self.ttft.observe(ttft, tags)
            if engine_ttft is not None:
                self.engine_ttft.observe(engine_ttft, tags)
                self.overhead.observe(max(ttft - engine_ttft, 0.0), tags)
            if output_tokens > 1:
                self.tpot.observe((total - ttft) / (output_tokens - 1), tags)
        if output_tokens > 0:  # Ray's counters refuse an increment of 0 (an empty reply is still a reply)
            self.output_tokens.inc(output_tokens, tags)
        if valid is not None:
            self.replies.inc(1, {"model": model, "valid": str(valid).lower()})

    def record_error(self, model: str) -> None:
        self.errors.inc(1, {"model": model})

    def record_heal(self, model: str, reason: str) -> None:
        self.heals.inc(1, {"model": model, "reason": reason})


def try_create_metrics() -> Optional[ServingMetrics]:
    try:
        return ServingMetrics()
    except Exception as exc:  # outside Ray (unit tests): no metrics
        logger.debug("serving metrics disabled: %s", exc)
        return None
