"""Scored results and their aggregates: per system (a model, guided or not), per category, and the
differences between systems, every aggregate a mean with its bootstrap 95% interval."""

from __future__ import annotations

from collections import Counter, defaultdict
from typing import Any, Iterable, Optional, Sequence

from pydantic import BaseModel, Field

from rrr_ray.evaluation.judge import JUDGE_CRITERIA
from rrr_ray.evaluation.references import Reference
from rrr_ray.evaluation.scoring import LEVELS, TEXT_METRICS
from rrr_ray.evaluation.stats import Estimate, bootstrap_difference, bootstrap_mean

TIMING_METRICS: tuple[str, ...] = ("response_time_s", "ttft_s", "tokens_per_second")


def system_id(model: str, guided: bool, heal: bool = False) -> str:
    """``model`` for unguided replies, ``model+guided`` for guided ones, ``model+healed`` for healed ones."""
    return f"{model}+guided" if guided else (f"{model}+healed" if heal else model)


class ItemResult(BaseModel):
    """One request of the benchmark, scored (``detailed_results.json`` holds every one)."""

    system: str
    model: str
    guided: bool
    heal: bool = False
    prompt_id: str
    category: str
    prompt: str
    sample: int
    seed: Optional[int]
    reply: Optional[str]
    error: Optional[str] = Field(None, description="The request's error; an item with one is never scored.")
    reference: Optional[Reference] = None
    valid: Optional[bool] = None
    error_codes: list[str] = Field(default_factory=list)
    timings: dict[str, Optional[float]] = Field(default_factory=dict)
    output_tokens: Optional[int] = None
    finish_reason: Optional[str] = None
    heal_report: Optional[dict[str, Any]] = Field(None, description="Where and why rrr-ray healed the reply.")
    metrics: dict[str, dict[str, Optional[float]]] = Field(default_factory=dict,
                                                         description="level -> metric -> score.")
    judge: dict[str, Optional[int]] = Field(default_factory=dict)
    judge_error: Optional[str] = None

    def value(self, name: str) -> Optional[float]:
        """A scalar by name: ``compliance``, a timing, ``judge.<criterion>``, ``<level>.<metric>``."""
        if self.error is not None:
            return None
        if name == "compliance":
            return 1.0 if self.valid else 0.0
        if name in TIMING_METRICS:
            return self.timings.get(name)
        head, _, tail = name.partition(".")
        if head == "judge":
            v = self.judge.get(tail)
            return None if v is None else float(v)
        return self.metrics.get(head, {}).get(tail)


def metric_names() -> list[str]:
    """Every aggregated scalar, in report order."""
    return (["compliance", *TIMING_METRICS] + [f"judge.{c}" for c in JUDGE_CRITERIA]
            + [f"{lvl}.{m}" for lvl in LEVELS for m in TEXT_METRICS])


class Aggregate(BaseModel):
    """The aggregates of one group of items (a system, or a system's category)."""

    requests: int
    failed_requests: int = Field(description="Requests that failed (recorded, never scored).")
    scored: int
    judged: int = Field(description="Replies the judge scored; the others are not measured.")
    healed: int = Field(0, description="Replies rrr-ray healed (self-healing streams).")
    error_codes: dict[str, int] = Field(description="How many scored replies have each format error code.")
    metrics: dict[str, Estimate]


def _groups(items: Iterable[ItemResult], name: str) -> dict[str, list[Optional[float]]]:
    out: dict[str, list[Optional[float]]] = defaultdict(list)
    for it in items:
        out[it.prompt_id].append(it.value(name))
    return out


def aggregate(items: Sequence[ItemResult], resamples: int, seed: int) -> Aggregate:
    scored = [it for it in items if it.error is None]
    codes = Counter(c for it in scored for c in it.error_codes)
    return Aggregate(
        requests=len(items), failed_requests=len(items) - len(scored), scored=len(scored),
        judged=sum(1 for it in scored if it.judge and all(it.judge.get(c) is not None for c in JUDGE_CRITERIA)),
        healed=sum(1 for it in scored if it.heal_report),
        error_codes=dict(sorted(codes.items())),
        metrics={n: bootstrap_mean(_groups(scored, n), resamples, seed) for n in metric_names()})


class Difference(BaseModel):
    """``a - b`` for every metric, over the prompts both measured (paired bootstrap)."""

    a: str
    b: str
    kind: str = Field(description="'model' (two models, same decoding), 'guided' or 'heal' (one model, "
                                  "guided or healed against the other decoding).")
    metrics: dict[str, Estimate]


def differences(items: Sequence[ItemResult], models: Sequence[str], modes: Sequence[tuple[bool, bool]],
                resamples: int, seed: int) -> list[Difference]:
    """The first model against each other model in each decoding mode (``(guided, heal)``), and,
    for each model, guided and healed against unguided when they ran."""
    by_system: dict[str, list[ItemResult]] = defaultdict(list)
    for it in items:
        if it.error is None:
            by_system[it.system].append(it)
    pairs: list[tuple[str, str, str]] = []
    for g, h in modes:
        for other in models[1:]:
            pairs.append((system_id(models[0], g, h), system_id(other, g, h), "model"))
    for m in models:
        if (False, False) in modes:
            for g, h in modes:
                if g or h:
                    pairs.append((system_id(m, g, h), system_id(m, False), "guided" if g else "heal"))
        if (True, False) in modes and (False, True) in modes:
            pairs.append((system_id(m, False, True), system_id(m, True), "heal"))
    out = []
    for a, b, kind in pairs:
        metrics = {n: bootstrap_difference(_groups(by_system[a], n), _groups(by_system[b], n), resamples, seed)
                   for n in metric_names()}
        out.append(Difference(a=a, b=b, kind=kind, metrics=metrics))
    return out


def by_system(items: Sequence[ItemResult]) -> dict[str, list[ItemResult]]:
    out: dict[str, list[ItemResult]] = defaultdict(list)
    for it in items:
        out[it.system].append(it)
    return dict(out)


def summarize(items: Sequence[ItemResult], systems: Sequence[str], categories: Sequence[str], resamples: int,
              seed: int) -> tuple[dict[str, Aggregate], dict[str, dict[str, Aggregate]]]:
    """Aggregates per system, and per system and category."""
    grouped = by_system(items)
    overall = {s: aggregate(grouped.get(s, []), resamples, seed) for s in systems}
    per_category: dict[str, dict[str, Aggregate]] = {}
    for s in systems:
        per_category[s] = {}
        for c in categories:
            group = [it for it in grouped.get(s, []) if it.category == c]
            if group:
                per_category[s][c] = aggregate(group, resamples, seed)
    return overall, per_category


def as_jsonable(obj: Any) -> Any:
    if isinstance(obj, BaseModel):
        return obj.model_dump(mode="json")
    if isinstance(obj, dict):
        return {k: as_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [as_jsonable(v) for v in obj]
    return obj
