"""``report.md``: the benchmark's tables (every figure with its 95% interval), beside the seed's
published figures."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

from rrr_ray.data.io import atomic_write_text
from rrr_ray.evaluation.judge import JUDGE_CRITERIA
from rrr_ray.evaluation.scoring import TEXT_METRICS

SEED_PUBLISHED: dict[str, Any] = {
    "model": "Mistral-7B + LoRA (the seed's README; its results file says 78% compliance, not 100%)",
    "compliance": 1.0, "judge.reasoning": 7.1, "judge.response": 6.7, "judge.reflection": 7.1,
    "response_time_s": 2.7, "bleu": 0.044, "rouge1": 0.236, "rouge2": 0.053, "rougeL": 0.179, "meteor": 0.168,
    "bertscore_precision": 0.234, "bertscore_recall": 0.152, "bertscore_f1": 0.194, "semantic_similarity": 0.378,
}
"""The seed's published benchmark (Mistral-7B fine-tune, judge scores, no intervals)."""

LABELS = {
    "compliance": "Format compliance", "response_time_s": "Response time (s)", "ttft_s": "Time to first token (s)",
    "tokens_per_second": "Tokens/s (per request)", "judge.reasoning": "Reasoning quality (0-10)",
    "judge.response": "Response quality (0-10)", "judge.reflection": "Reflection depth (0-10)",
    "bleu": "BLEU", "rouge1": "ROUGE-1", "rouge2": "ROUGE-2", "rougeL": "ROUGE-L", "meteor": "METEOR",
    "bertscore_precision": "BERTScore P", "bertscore_recall": "BERTScore R", "bertscore_f1": "BERTScore F1",
    "semantic_similarity": "Semantic similarity",
}


def fmt(est: Optional[dict[str, Any]], name: str) -> str:
    """``mean [low, high]``, in the metric's unit; "not measured" without a value."""
    if not est or est.get("mean") is None:
        return "not measured"
    scale, digits, unit = (100.0, 1, "%") if name == "compliance" else (1.0, 3 if "judge" not in name else 1, "")
    if name in ("response_time_s", "ttft_s"):
        digits = 2
    if name == "tokens_per_second":
        digits = 1
    m, lo, hi = (est[k] * scale if est.get(k) is not None else None for k in ("mean", "low", "high"))
    body = f"{m:.{digits}f}{unit}"
    if lo is not None and hi is not None:
        body += f" [{lo:.{digits}f}, {hi:.{digits}f}]"
    return body


def _seed(name: str) -> str:
    key = name.split(".", 1)[1] if name.startswith(("respond.", "reply.")) else name
    v = SEED_PUBLISHED.get(key)
    if v is None:
        return ""
    return f"{v * 100:.1f}%" if key == "compliance" else (f"{v:.1f}" if key.startswith("judge") else f"{v:g}")


def _table(rows: list[str], systems: list[str], results: dict[str, Any], seed_column: bool) -> list[str]:
    head = "| metric | " + " | ".join(f"`{s}`" for s in systems) + (" | seed (published) |" if seed_column else " |")
    out = [head, "|---|" + "---|" * (len(systems) + (1 if seed_column else 0))]
    for name in rows:
        cells = [fmt(results[s]["metrics"].get(name), name) for s in systems]
        label = LABELS.get(name.split(".", 1)[1] if name.startswith(("respond.", "reply.")) else name, name)
        if name.startswith("judge."):
            cells = [c + (f" (judged {results[s]['judged']}/{results[s]['scored']})"
                          if c != "not measured" else f" (0/{results[s]['scored']} judged)") for c, s in
                     zip(cells, systems)]
        out.append(f"| {label} | " + " | ".join(cells) + (f" | {_seed(name)} |" if seed_column else " |"))
    return out


def write_report(path: Path, summary: dict[str, Any], per_category: dict[str, Any], plots: bool = True) -> None:
    systems: list[str] = summary["systems"]
    results = summary["results"]
    lines = [f"# Benchmark: {', '.join(summary['models'])}", "",
             f"{summary['created']}; `{summary['command'] or 'python -m jobs.benchmark'}`", "",
             f"{summary['prompts']} prompts x {summary['samples']} sample(s) per system, seed {summary['seed']}, "
             f"sampling {summary['sampling']}; endpoint {summary['endpoint']}. Requests: {summary['requests']}. "
             f"Every figure is a mean with its 95% confidence interval "
             f"({summary['metric_notes']['confidence_intervals']}). "
             f"Judge: {summary['judge'] or 'none (judge scores are not measured, never 0)'}.", "",
             "## Format, judge and speed", ""]
    rows = ["compliance", *[f"judge.{c}" for c in JUDGE_CRITERIA], "response_time_s", "ttft_s", "tokens_per_second"]
    lines += _table(rows, systems, results, seed_column=True)
    lines += ["", "Format errors (scored replies with each code): " + "; ".join(
        f"`{s}`: {results[s]['error_codes'] or 'none'}" for s in systems) + "."]
    if summary.get("heal"):
        lines += ["", "Healed replies: " + "; ".join(f"`{s}`: {results[s]['healed']}/{results[s]['scored']}"
                                                      for s in systems if s.endswith("+healed")) + "."]
    for level, what in summary["metric_notes"]["levels"].items():
        lines += ["", f"## Reference metrics, {level} level", "", f"{what[0].upper()}{what[1:]}.", ""]
        lines += _table([f"{level}.{m}" for m in TEXT_METRICS], systems, results, seed_column=level == "respond")
    if summary["differences"]:
        lines += ["", "## Differences (a - b, paired bootstrap over prompts)", "",
                  "| a - b | compliance | response time (s) | ROUGE-L (respond) | METEOR (respond) | "
                  "BERTScore F1 (respond) | semantic similarity (respond) |", "|---|---|---|---|---|---|---|"]
        for d in summary["differences"]:
            cols = ["compliance", "response_time_s", "respond.rougeL", "respond.meteor", "respond.bertscore_f1",
                    "respond.semantic_similarity"]
            lines.append(f"| `{d['a']}` - `{d['b']}` | " + " | ".join(
                _signed(d["metrics"][c], c) for c in cols) + " |")
    lines += ["", "## Per category (respond level)", "",
              "| system | category | compliance | reasoning | response | reflection | BLEU | ROUGE-1 | METEOR | "
              "semantic similarity |", "|---|---|---|---|---|---|---|---|---|---|"]
    for s in systems:
        for cat, agg in per_category.get(s, {}).items():
            m = agg["metrics"]
            cells = [fmt(m.get(n), n) for n in ("compliance", "judge.reasoning", "judge.response", "judge.reflection",
                                                 "respond.bleu", "respond.rouge1", "respond.meteor",
                                                 "respond.semantic_similarity")]
            lines.append(f"| `{s}` | {cat} | " + " | ".join(cells) + " |")
    notes = summary["metric_notes"]
    lines += ["", "## Method", "",
              f"- References: {summary['references']} (nearest user turn: the assistant reply after the dialogue "
              "data's user turn most similar to the prompt by MiniLM cosine, the seed's way).",
              f"- METEOR: {notes.get('meteor')}. BERTScore: {notes.get('bertscore')} (not rescaled, so its values "
              "are not on the scale of the seed's rescaled figures). Semantic similarity: "
              f"{notes.get('semantic_similarity')}.",
              "- Compliance is strict: the raw reply validates as it is, no repair.",
              f"- Time: {summary['seconds']} s."]
    if plots:
        lines += ["", "## Plots", ""] + [f"![{p}]({p})" for p in
                                         ("quality_radar.png", "response_time.png", "nlp_metrics_comparison.png",
                                          "category_analysis.png")]
    atomic_write_text(path, "\n".join(lines) + "\n")


def _signed(est: dict[str, Any], name: str) -> str:
    if est.get("mean") is None:
        return "not measured"
    scale = 100.0 if name == "compliance" else 1.0
    unit = " pp" if name == "compliance" else ""
    digits = 1 if name == "compliance" else (2 if name == "response_time_s" else 3)
    return (f"{est['mean'] * scale:+.{digits}f}{unit} [{est['low'] * scale:+.{digits}f}, "
            f"{est['high'] * scale:+.{digits}f}]")
