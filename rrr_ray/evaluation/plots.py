"""The seed's four plots, with the 95% intervals drawn: quality radar, response time, reference
metrics, per-category analysis (PNG, matplotlib's Agg backend; no display needed)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from rrr_ray.evaluation.judge import JUDGE_CRITERIA

_NLP = ("bleu", "rouge1", "rouge2", "rougeL", "meteor", "bertscore_f1", "semantic_similarity")
_NLP_LABELS = ("BLEU", "ROUGE-1", "ROUGE-2", "ROUGE-L", "METEOR", "BERTScore F1", "Semantic sim.")


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _est(agg: Any, name: str) -> tuple[float, float, float] | None:
    m = (agg.metrics if hasattr(agg, "metrics") else agg["metrics"]).get(name)
    if m is None:
        return None
    mean, low, high = (getattr(m, k) if hasattr(m, k) else m[k] for k in ("mean", "low", "high"))
    if mean is None:
        return None
    return mean, (mean if low is None else low), (mean if high is None else high)


def _err(values: list[tuple[float, float, float] | None]) -> tuple[np.ndarray, np.ndarray]:
    means = np.array([v[0] if v else np.nan for v in values])
    err = np.array([[v[0] - v[1] if v else 0 for v in values], [v[2] - v[0] if v else 0 for v in values]])
    return means, err


def _grouped_bars(ax: Any, groups: int, systems: Sequence[str],
                  estimate: Any, capsize: int = 3) -> np.ndarray:
    """One bar per system in each of ``groups`` groups, ``estimate(system, group)`` giving its
    ``(mean, low, high)`` or None; returns the group positions."""
    x = np.arange(groups)
    width = 0.8 / max(1, len(systems))
    for i, s in enumerate(systems):
        means, err = _err([estimate(s, g) for g in range(groups)])
        ax.bar(x - 0.4 + width * (i + 0.5), means, width, yerr=err, capsize=capsize, label=s)
    return x


def quality_radar(path: Path, overall: Mapping[str, Any], systems: Sequence[str]) -> None:
    """Compliance, the judge's three scores (/10) and three reference metrics on one 0-1 radar;
    the band is each system's interval. An axis nobody measured is left out."""
    plt = _plt()
    axes = [("compliance", "Compliance", 1.0)] + [(f"judge.{c}", c.capitalize(), 10.0) for c in JUDGE_CRITERIA]
    axes += [("respond.semantic_similarity", "Semantic sim.", 1.0), ("respond.bertscore_f1", "BERTScore F1", 1.0),
             ("respond.rougeL", "ROUGE-L", 1.0)]
    axes = [a for a in axes if any(_est(overall[s], a[0]) for s in systems)]
    angles = np.linspace(0, 2 * np.pi, len(axes), endpoint=False).tolist()
    fig = plt.figure(figsize=(6.5, 6.5))
    ax = fig.add_subplot(111, polar=True)
    for s in systems:
        vals = [_est(overall[s], name) for name, _, _ in axes]
        scale = [sc for _, _, sc in axes]
        mean = [v[0] / k if v else 0 for v, k in zip(vals, scale)]
        low = [v[1] / k if v else 0 for v, k in zip(vals, scale)]
        high = [v[2] / k if v else 0 for v, k in zip(vals, scale)]
        closed = angles + angles[:1]
        ax.plot(closed, mean + mean[:1], label=s)
        ax.fill_between(closed, low + low[:1], high + high[:1], alpha=0.2)
    ax.set_xticks(angles)
    ax.set_xticklabels([label for _, label, _ in axes])
    ax.set_ylim(0, 1)
    ax.set_title("Quality (judge scores / 10; bands: 95% CI)")
    ax.legend(loc="lower right", bbox_to_anchor=(1.3, -0.1), fontsize=8)
    fig.savefig(path, dpi=100, bbox_inches="tight")
    plt.close(fig)


def response_time(path: Path, overall: Mapping[str, Any], systems: Sequence[str]) -> None:
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7, 4))
    x = np.arange(len(systems))
    for offset, name, label in ((-0.2, "response_time_s", "response time"), (0.2, "ttft_s", "time to first token")):
        means, err = _err([_est(overall[s], name) for s in systems])
        ax.bar(x + offset, means, 0.4, yerr=err, capsize=4, label=label)
    ax.set_xticks(x)
    ax.set_xticklabels(systems, rotation=15, ha="right", fontsize=8)
    ax.set_ylabel("seconds (mean, 95% CI)")
    ax.set_title("Response time")
    ax.legend()
    fig.savefig(path, dpi=100, bbox_inches="tight")
    plt.close(fig)


def nlp_metrics(path: Path, overall: Mapping[str, Any], systems: Sequence[str]) -> None:
    plt = _plt()
    fig, ax = plt.subplots(figsize=(9, 4.5))
    x = _grouped_bars(ax, len(_NLP), systems, lambda s, g: _est(overall[s], f"respond.{_NLP[g]}"))
    ax.set_xticks(x)
    ax.set_xticklabels(_NLP_LABELS, fontsize=8)
    ax.set_ylabel("score (respond level, mean, 95% CI)")
    ax.set_title("Reference metrics")
    ax.legend(fontsize=8)
    fig.savefig(path, dpi=100, bbox_inches="tight")
    plt.close(fig)


def category_analysis(path: Path, per_category: Mapping[str, Mapping[str, Any]], systems: Sequence[str]) -> None:
    plt = _plt()
    categories = sorted({c for s in systems for c in per_category.get(s, {})})
    panels = [("compliance", "Format compliance"), ("respond.semantic_similarity", "Semantic similarity"),
              ("respond.rougeL", "ROUGE-L")]
    if any(_est(per_category[s][c], "judge.response") for s in systems for c in per_category.get(s, {})):
        panels.append(("judge.response", "Response quality (judge, 0-10)"))
    fig, axes = plt.subplots(len(panels), 1, figsize=(9, 2.8 * len(panels)), sharex=True)
    x = np.arange(len(categories))
    for ax, (name, title) in zip(np.atleast_1d(axes), panels):
        def estimate(s: str, g: int, name: str = name) -> tuple[float, float, float] | None:
            c = categories[g]
            return _est(per_category[s][c], name) if c in per_category.get(s, {}) else None

        _grouped_bars(ax, len(categories), systems, estimate)
        ax.set_title(title, fontsize=10)
    axes_list = np.atleast_1d(axes)
    axes_list[-1].set_xticks(x)
    axes_list[-1].set_xticklabels([c.replace("_", " ") for c in categories], fontsize=8)
    axes_list[0].legend(fontsize=7)
    fig.suptitle("Per category (mean, 95% CI)")
    fig.savefig(path, dpi=100, bbox_inches="tight")
    plt.close(fig)


def draw_all(out: Path, overall: Mapping[str, Any], per_category: Mapping[str, Mapping[str, Any]],
             systems: Sequence[str]) -> None:
    quality_radar(out / "quality_radar.png", overall, systems)
    response_time(out / "response_time.png", overall, systems)
    nlp_metrics(out / "nlp_metrics_comparison.png", overall, systems)
    category_analysis(out / "category_analysis.png", per_category, systems)
