"""Checkpoint selection by what the model says, with the format as a constraint.

Each saved checkpoint is measured on held-out validation turns: strict format compliance of sampled
replies, and the reference metrics of their respond section against the reply the dialogue gave
(METEOR, BERTScore F1; :mod:`rrr_ray.evaluation.scoring`). The trainer adds the validation loss on
assistant tokens (``eval_loss``). :func:`choose_checkpoint` then takes the best checkpoint by one
content measure among those whose compliance reaches a floor.
"""

from __future__ import annotations

import logging
from typing import Any, Callable, Literal, Mapping, Sequence

log = logging.getLogger(__name__)

SelectBy = Literal["compliance", "eval_loss", "val_meteor", "val_bertscore_f1"]
LOWER_IS_BETTER = {"eval_loss"}
CURVE_FIELDS = ("step", "loss", "eval_loss", "val_compliance", "val_meteor", "val_bertscore_f1")


def content_scores(replies: Sequence[str], references: Sequence[str]) -> dict[str, float | None]:
    """Mean METEOR and BERTScore F1 of the replies' respond sections against the references'
    (None where the metric cannot run here: no WordNet, no MiniLM)."""
    from rrr_ray.evaluation.embeddings import BERTSCORE_LAYER, MiniLMMissing, minilm_path
    from rrr_ray.evaluation.scoring import level_texts, text_metrics
    from rrr_ray.evaluation.wordnet import WordNetMissing, wordnet_reader

    if not replies:
        return {"val_meteor": None, "val_bertscore_f1": None}
    try:
        wordnet = wordnet_reader()
    except WordNetMissing as exc:
        log.warning("METEOR not measured: %s", exc)
        wordnet = None
    try:
        bert = minilm_path()
    except MiniLMMissing as exc:
        log.warning("BERTScore not measured: %s", exc)
        bert = None
    preds = [level_texts(r, "respond") for r in replies]
    refs = [level_texts(r, "respond") for r in references]
    values = text_metrics(preds, refs, wordnet=wordnet, bertscore_model=bert, bertscore_layer=BERTSCORE_LAYER)

    def mean(xs: Sequence[float | None]) -> float | None:
        vals = [float(x) for x in xs if x is not None]
        return round(sum(vals) / len(vals), 4) if vals else None

    return {"val_meteor": mean(values["meteor"]), "val_bertscore_f1": mean(values["bertscore_f1"])}


def measure_checkpoint(generate_fn: Callable[[list[str]], list[str]], prompts: Sequence[Mapping[str, str]],
                       samples: int) -> dict[str, float | None]:
    """Compliance and content scores of one checkpoint on validation prompts that carry a
    ``reference`` reply (prompts without one count for compliance only)."""
    from rrr_ray.evaluation.compliance import reply_compliance
    from rrr_ray.format import extract_assistant_reply

    batch = [p for p in prompts for _ in range(samples)]
    replies = [extract_assistant_reply(r) for r in generate_fn([p["prompt"] for p in batch])]
    valid = sum(reply_compliance(r)[0] for r in replies)
    scored = [(r, p["reference"]) for r, p in zip(replies, batch) if p.get("reference")]
    out: dict[str, float | None] = {"val_compliance": round(valid / len(batch), 4) if batch else None}
    out.update(content_scores([r for r, _ in scored], [ref for _, ref in scored]))
    return out


def choose_checkpoint(metrics: Sequence[Mapping[str, Any]], select_by: SelectBy = "eval_loss",
                      min_compliance: float = 0.98) -> int:
    """Index of the checkpoint to export.

    Among checkpoints whose ``val_compliance`` reaches ``min_compliance``, the best by ``select_by``
    (lowest for a loss, highest otherwise; the earliest on ties). When none reaches the floor, the
    most compliant one (earliest on ties). When nothing was measured, the last one.
    """
    if not metrics:
        raise ValueError("no checkpoints to choose from")
    measured = [i for i, m in enumerate(metrics) if m.get("val_compliance") is not None]
    if not measured:
        return len(metrics) - 1
    if select_by == "compliance":
        return max(measured, key=lambda i: (metrics[i]["val_compliance"], -i))
    eligible = [i for i in measured if metrics[i]["val_compliance"] >= min_compliance
                and metrics[i].get(select_by) is not None]
    if not eligible:
        log.warning("no checkpoint reached validation compliance %.2f with %s measured; taking the most "
                    "compliant", min_compliance, select_by)
        return max(measured, key=lambda i: (metrics[i]["val_compliance"], -i))
    sign = -1.0 if select_by in LOWER_IS_BETTER else 1.0
    return max(eligible, key=lambda i: (sign * float(metrics[i][select_by]), -i))


def curve_table(curve: Sequence[Mapping[str, Any]], chosen_step: int | None) -> str:
    """The training curve as a Markdown table (the chosen checkpoint in bold)."""
    head = "| step | train loss | validation loss | strict compliance | METEOR | BERTScore F1 |"
    rows = [head, "|---|---|---|---|---|---|"]

    def fmt(v: Any, pct: bool = False) -> str:
        if v is None:
            return "n/a"
        return f"{100 * v:.1f}%" if pct else f"{v:.3f}"

    for c in curve:
        step = f"**{c['step']}**" if c.get("step") == chosen_step else str(c.get("step"))
        rows.append(f"| {step} | {fmt(c.get('loss'))} | {fmt(c.get('eval_loss'))} | "
                    f"{fmt(c.get('val_compliance'), pct=True)} | {fmt(c.get('val_meteor'))} | "
                    f"{fmt(c.get('val_bertscore_f1'))} |")
    return "\n".join(rows)


def plot_curve(curve: Sequence[Mapping[str, Any]], chosen_step: int | None, path) -> None:
    """Step against validation loss, compliance, METEOR and BERTScore F1 (PNG, Agg backend)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = [c["step"] for c in curve]
    panels = [("eval_loss", "validation loss (assistant tokens)"), ("val_compliance", "strict compliance"),
              ("val_meteor", "METEOR (respond)"), ("val_bertscore_f1", "BERTScore F1 (respond)")]
    fig, axes = plt.subplots(1, len(panels), figsize=(16, 3.4))
    for ax, (key, title) in zip(axes, panels):
        pts = [(s, c.get(key)) for s, c in zip(steps, curve) if c.get(key) is not None]
        if pts:
            ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o")
        if chosen_step is not None:
            ax.axvline(chosen_step, color="grey", linestyle="--", linewidth=1)
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
