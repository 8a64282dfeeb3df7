"""The benchmark run: prompts and references, generation (cached), judge (optional), scores,
aggregates with confidence intervals, and the output folder (``python -m jobs.benchmark``)."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Literal, Optional

from pydantic import BaseModel, Field, model_validator

from rrr_ray.data.convert import DEFAULT_SEED_PATHS
from rrr_ray.data.io import atomic_write_text
from rrr_ray.data.prompts import CATEGORIES, DEFAULT_EVAL_PROMPTS, load_prompts
from rrr_ray.evaluation.generation import (Generation, GenerationCache, GenerationTask, SamplingSettings,
                                           generate_all)
from rrr_ray.evaluation.results import ItemResult, as_jsonable, differences, summarize, system_id
from rrr_ray.evaluation.stats import DEFAULT_RESAMPLES

log = logging.getLogger(__name__)

GENERATIONS_FILE = "generations.jsonl"
JUDGMENTS_FILE = "judgments.jsonl"
OUTPUT_FILES = ("summary.json", "category_metrics.json", "detailed_results.json", "report.md")
PLOTS = ("quality_radar.png", "response_time.png", "nlp_metrics_comparison.png", "category_analysis.png")


class BenchmarkError(RuntimeError):
    """A problem that stops the benchmark, said in one line (bad file, unreachable endpoint...)."""


class BenchmarkConfig(BaseModel):
    """Options of ``python -m jobs.benchmark``."""

    endpoint: str = Field("http://127.0.0.1:8000", description="Base URL of an OpenAI-compatible server "
                          "(rrr-ray's, or any other; /v1 is added when missing).")
    models: list[str] = Field(min_length=1, description="Served model names; the first is compared with each other.")
    output: str = Field(description="Folder for the cache, the results, the report and the plots.")
    prompts: str = Field(DEFAULT_EVAL_PROMPTS, description="JSON lines of {id, category, prompt[, reference]}.")
    num_prompts: Optional[int] = Field(None, ge=1, description="Use this many prompts, taken round-robin "
                                       "over the categories (default: all).")
    samples: int = Field(1, ge=1, le=100, description="Replies per prompt and system.")
    guided: Literal["both", "on", "off"] = Field("both", description="Guided decoding: both, on or off.")
    heal: bool = Field(False, description="Also generate healed replies (rrr-ray's self-healing streams) for "
                       "each model; unguided replies always ask for heal: false.")
    concurrency: int = Field(4, ge=1, le=256, description="Requests in flight at once.")
    seed: Optional[int] = Field(0, description="Sampling seed of sample 0 (sample k uses seed + k).")
    max_tokens: int = Field(256, ge=1, le=2048, description="Most tokens per reply.")
    temperature: float = Field(0.7, ge=0.0, le=2.0, description="Sampling temperature.")
    top_p: float = Field(0.9, gt=0.0, le=1.0, description="Nucleus sampling mass.")
    judge_url: Optional[str] = Field(None, description="OpenAI-compatible endpoint of the judge (default: no judge).")
    judge_model: Optional[str] = Field(None, description="The judge's model name.")
    api_key: str = Field(default_factory=lambda: os.environ.get("OPENAI_API_KEY", "none"), repr=False,
                         description="Bearer key for the endpoint and the judge (default: $OPENAI_API_KEY).")
    data: list[str] = Field(default_factory=lambda: list(DEFAULT_SEED_PATHS),
                            description="Dialogue data in which references are looked up.")
    timeout: float = Field(600.0, gt=0, description="Seconds per request.")
    score_only: bool = Field(False, description="Score the cached generations only; send no request.")
    resamples: int = Field(DEFAULT_RESAMPLES, ge=100, le=100000, description="Bootstrap resamples.")
    plots: bool = Field(True, description="Draw the PNG plots.")
    progress: bool = Field(True, description="Progress bars.")

    @model_validator(mode="after")
    def _judge_pair(self) -> "BenchmarkConfig":
        if bool(self.judge_url) != bool(self.judge_model):
            raise ValueError("--judge-url and --judge-model go together")
        if len(set(self.models)) != len(self.models):
            raise ValueError("a model is named twice in --models")
        return self

    @property
    def modes(self) -> list[tuple[bool, bool]]:
        """The decoding modes, as ``(guided, heal)``: unguided, guided, healed."""
        modes = [(g, False) for g in {"both": [False, True], "on": [True], "off": [False]}[self.guided]]
        return modes + [(False, True)] if self.heal else modes

    @property
    def sampling(self) -> SamplingSettings:
        return SamplingSettings(max_tokens=self.max_tokens, temperature=self.temperature, top_p=self.top_p)


def pick_prompts(prompts: list[dict[str, str]], n: Optional[int]) -> list[dict[str, str]]:
    """The first ``n`` prompts taken round-robin over the categories in file order (all if None)."""
    if n is None or n >= len(prompts):
        return prompts
    queues: dict[str, list[dict[str, str]]] = {}
    for p in prompts:
        queues.setdefault(p["category"], []).append(p)
    out: list[dict[str, str]] = []
    while len(out) < n:
        for q in queues.values():
            if q and len(out) < n:
                out.append(q.pop(0))
    return out


def build_tasks(cfg: BenchmarkConfig, prompts: list[dict[str, str]]) -> list[GenerationTask]:
    return [GenerationTask(endpoint=cfg.endpoint.rstrip("/"), model=m, prompt_id=p["id"], category=p["category"],
                           prompt=p["prompt"], sample=k, seed=None if cfg.seed is None else cfg.seed + k, guided=g,
                           heal=h, sampling=cfg.sampling)
            for m in cfg.models for g, h in cfg.modes for p in prompts for k in range(cfg.samples)]


def check_models(cfg: BenchmarkConfig) -> None:
    """Fail fast, in one line, on an unreachable endpoint or a model it does not serve."""
    from rrr_ray.data.generation.errors import EndpointError
    from rrr_ray.evaluation.generation import served_models

    try:
        served = asyncio.run(served_models(cfg.endpoint, cfg.api_key))
    except EndpointError as exc:
        raise BenchmarkError(str(exc)) from None
    missing = [m for m in cfg.models if served and m not in served]
    if missing:
        raise BenchmarkError(f"{cfg.endpoint} does not serve {', '.join(missing)}; it serves: {', '.join(served)}")


def _score(cfg: BenchmarkConfig, gens: list[Generation], prompts: list[dict[str, str]],
           notes: dict[str, Any]) -> list[ItemResult]:
    """Every generation scored: compliance, timings, text metrics at both levels, judge."""
    from rrr_ray.evaluation.embeddings import BERTSCORE_LAYER, MINILM_NAME, MiniLMMissing, minilm_path
    from rrr_ray.evaluation.references import find_references
    from rrr_ray.evaluation.compliance import reply_compliance
    from rrr_ray.evaluation.scoring import LEVELS, level_texts, text_metrics
    from rrr_ray.evaluation.wordnet import WordNetMissing, wordnet_reader

    refs = find_references(prompts, cfg.data)
    items = []
    for g in gens:
        t = g.task
        it = ItemResult(system=system_id(t.model, t.guided, t.heal), model=t.model, guided=t.guided, heal=t.heal,
                        prompt_id=t.prompt_id,
                        category=t.category, prompt=t.prompt, sample=t.sample, seed=t.seed, reply=g.reply,
                        error=g.error, reference=refs[t.prompt_id], output_tokens=g.output_tokens,
                        finish_reason=g.finish_reason, heal_report=g.heal_report)
        if g.ok:
            it.valid, it.error_codes = reply_compliance(g.reply or "")
            it.timings = {"response_time_s": g.total_s, "ttft_s": g.ttft_s, "tokens_per_second": g.tokens_per_second}
        items.append(it)
    scored = [it for it in items if it.error is None]
    try:
        wordnet = wordnet_reader()
        notes["meteor"] = "WordNet 3.0 from Debian's wordnet-base (local files)"
    except WordNetMissing as exc:
        wordnet, notes["meteor"] = None, f"not measured: {exc}"
        log.warning("%s", exc)
    try:
        bert_model = minilm_path()
        notes["bertscore"] = {"model": MINILM_NAME, "layer": BERTSCORE_LAYER, "idf": False,
                              "rescaled_with_baseline": False}
        notes["semantic_similarity"] = {"model": MINILM_NAME, "pooling": "mean", "measure": "cosine"}
    except MiniLMMissing as exc:
        bert_model, notes["bertscore"] = None, f"not measured: {exc}"
        log.warning("%s", exc)
    for level in LEVELS:
        preds = [level_texts(it.reply or "", level) for it in scored]
        ref_texts = [level_texts(it.reference.text, level) for it in scored]
        values = text_metrics(preds, ref_texts, wordnet=wordnet, bertscore_model=bert_model,
                              bertscore_layer=BERTSCORE_LAYER)
        for i, it in enumerate(scored):
            it.metrics[level] = {m: (None if v[i] is None else float(v[i])) for m, v in values.items()}
    if cfg.judge_url and scored:
        from rrr_ray.evaluation.judge import JUDGE_CRITERIA, JudgmentCache, judge_all

        cache = JudgmentCache(Path(cfg.output) / JUDGMENTS_FILE)
        judgments = asyncio.run(judge_all([(it.prompt, it.reply or "") for it in scored], cache, url=cfg.judge_url,
                                          model=cfg.judge_model or "", api_key=cfg.api_key,
                                          concurrency=cfg.concurrency, timeout=cfg.timeout, progress=cfg.progress))
        for it, j in zip(scored, judgments):
            it.judge = {c: getattr(j, c) for c in JUDGE_CRITERIA}
            it.judge_error = j.error
    return items


def _write_json(path: Path, data: Any) -> None:
    atomic_write_text(path, json.dumps(as_jsonable(data), indent=2, ensure_ascii=False) + "\n")


def run_benchmark(cfg: BenchmarkConfig, command: str = "") -> dict[str, Any]:
    """Run the benchmark of ``cfg`` and write its output folder; returns the summary."""
    from rrr_ray.evaluation.judge import PROMPT_DIGEST
    from rrr_ray.evaluation.report import write_report

    started = time.perf_counter()
    try:
        prompts = pick_prompts(load_prompts(cfg.prompts), cfg.num_prompts)
    except (OSError, ValueError) as exc:
        raise BenchmarkError(f"--prompts: {exc}") from None
    out = Path(cfg.output)
    out.mkdir(parents=True, exist_ok=True)
    cache = GenerationCache(out / GENERATIONS_FILE)
    tasks = build_tasks(cfg, prompts)
    missing = [t for t in tasks if cache.done(t) is None]
    sent = 0
    if cfg.score_only:
        if missing:
            log.warning("%d of %d requests are not in the cache; they are left out", len(missing), len(tasks))
        gens = [cache.done(t) for t in tasks]  # the missing ones are None, left out below
    else:
        if missing:
            check_models(cfg)
        sent = len(missing)
        gens = asyncio.run(generate_all(tasks, cache, api_key=cfg.api_key, concurrency=cfg.concurrency,
                                        timeout=cfg.timeout, progress=cfg.progress))
    generated_s = time.perf_counter() - started
    notes: dict[str, Any] = {}
    items = _score(cfg, [g for g in gens if g is not None], prompts, notes)
    systems = [system_id(m, g, h) for m in cfg.models for g, h in cfg.modes]
    overall, per_category = summarize(items, systems, CATEGORIES + tuple(sorted({p["category"] for p in prompts}
                                                                              - set(CATEGORIES))),
                                      cfg.resamples, cfg.seed or 0)
    diffs = differences(items, cfg.models, cfg.modes, cfg.resamples, cfg.seed or 0)
    summary = {
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "command": command,
        "endpoint": cfg.endpoint, "models": cfg.models, "guided": cfg.guided, "heal": cfg.heal, "systems": systems,
        "prompts_file": cfg.prompts, "prompts": len(prompts), "samples": cfg.samples, "seed": cfg.seed,
        "sampling": cfg.sampling.model_dump(),
        "requests": {"total": len(tasks), "sent_this_run": sent, "from_cache": len(tasks) - sent,
                     "failed": sum(1 for it in items if it.error)},
        "references": {src: sum(1 for p in prompts if items and _ref_source(items, p["id"]) == src)
                       for src in ("prompt_file", "nearest_user_turn")},
        "judge": ({"url": cfg.judge_url, "model": cfg.judge_model, "prompt_digest": PROMPT_DIGEST,
                   "temperature": 0} if cfg.judge_url else None),
        "metric_notes": notes | {"levels": {"respond": "the respond section (or the untagged text of a reply "
                                            "without one) against the reference's respond section",
                                            "reply": "the whole reply against the whole reference reply"},
                                 "confidence_intervals": f"95% percentile bootstrap over prompts, "
                                                         f"{cfg.resamples} resamples; differences paired"},
        "results": overall,
        "differences": diffs,
        "seconds": {"generation": round(generated_s, 1), "total": None},
    }
    _write_json(out / "category_metrics.json", per_category)
    _write_json(out / "detailed_results.json", items)
    if cfg.plots:
        from rrr_ray.evaluation.plots import draw_all

        draw_all(out, overall, per_category, systems)
    summary["seconds"]["total"] = round(time.perf_counter() - started, 1)
    _write_json(out / "summary.json", summary)
    write_report(out / "report.md", as_jsonable(summary), as_jsonable(per_category), plots=cfg.plots)
    return as_jsonable(summary)


def _ref_source(items: list[ItemResult], prompt_id: str) -> Optional[str]:
    for it in items:
        if it.prompt_id == prompt_id and it.reference is not None:
            return it.reference.source
    return None
