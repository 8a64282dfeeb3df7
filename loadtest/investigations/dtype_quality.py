"""Does serving in bfloat16 change what the model says? The same held-out prompts and seeds in float32
and in bfloat16: strict RRR compliance, the perplexity of the spoken replies under the base model and
the distinct-bigram ratio (the coherence measures of ``jobs.report_default_model``, from the same
library functions: the ratio over all replies, and per reply for an interval), each dtype with its
95% bootstrap interval over prompts, and the paired difference bfloat16 - float32 with its interval.

    python -m loadtest.investigations.dtype_quality --model models/rrr-smollm2 --samples 3 --out out/speed/dtype_quality.json
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path
from typing import Any

DTYPES = ("float32", "bfloat16")


def grouped(replies: list[dict[str, Any]], values: list[float | None]) -> dict[str, list[float | None]]:
    out: dict[str, list[float | None]] = {}
    for r, v in zip(replies, values):
        out.setdefault(r["id"], []).append(v)
    return out


def main(argv: list[str] | None = None) -> None:
    from rrr_ray import validate
    from rrr_ray.data.prompts import DEFAULT_EVAL_PROMPTS, load_prompts
    from rrr_ray.evaluation.refusal import generate_replies
    from rrr_ray.evaluation.stats import bootstrap_difference, bootstrap_mean
    from rrr_ray.training.merge import load_causal_lm
    from rrr_ray.training.quality import distinct_bigram_ratio, median, respond_perplexities, spoken_text

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="models/rrr-smollm2")
    ap.add_argument("--base", default="models/smollm2-135m-instruct", help="scores the perplexity")
    ap.add_argument("--prompts", default=DEFAULT_EVAL_PROMPTS)
    ap.add_argument("--samples", type=int, default=3)
    ap.add_argument("--temperature", type=float, default=0.7)
    ap.add_argument("--top-p", type=float, default=0.9)
    ap.add_argument("--max-tokens", type=int, default=256)
    ap.add_argument("--out", default="out/speed/dtype_quality.json")
    args = ap.parse_args(argv)
    t0 = time.monotonic()
    prompts = load_prompts(args.prompts)
    replies = {dt: generate_replies(args.model, prompts, args.samples, args.temperature, args.top_p,
                                    args.max_tokens, dt) for dt in DTYPES}
    model, tok = load_causal_lm(args.base)
    per: dict[str, dict[str, Any]] = {}
    for dt, rs in replies.items():
        texts = [spoken_text(r["reply"]) for r in rs]
        scored = [(i, (r["prompt"], t)) for i, (r, t) in enumerate(zip(rs, texts)) if t]
        ppl = respond_perplexities(model, tok, [p for _, p in scored])
        log_ppl: list[float | None] = [None] * len(rs)
        for (i, _), v in zip(scored, ppl):
            log_ppl[i] = math.log(v)
        per[dt] = {"valid": grouped(rs, [float(validate(r["reply"]).valid) for r in rs]),
                   "log_ppl": grouped(rs, log_ppl), "median_perplexity": median(ppl),
                   "bigrams": grouped(rs, [distinct_bigram_ratio([t]) if t else None for t in texts]),
                   "pooled_bigrams": distinct_bigram_ratio(t for t in texts if t)}
    result: dict[str, Any] = {"date": time.strftime("%Y-%m-%d"), "model": args.model, "prompts": args.prompts,
                              "samples": args.samples, "temperature": args.temperature, "top_p": args.top_p,
                              "dtypes": {}, "bfloat16_minus_float32": {}}
    for dt, v in per.items():
        result["dtypes"][dt] = {"strict_compliance": bootstrap_mean(v["valid"]).model_dump(),
                                "mean_log_perplexity": bootstrap_mean(v["log_ppl"]).model_dump(),
                                "median_perplexity": v["median_perplexity"],
                                "distinct_bigrams_per_reply": bootstrap_mean(v["bigrams"]).model_dump(),
                                "distinct_bigrams_pooled": v["pooled_bigrams"]}
    a, b = per["bfloat16"], per["float32"]
    result["bfloat16_minus_float32"] = {"strict_compliance": bootstrap_difference(a["valid"], b["valid"]).model_dump(),
                                        "mean_log_perplexity": bootstrap_difference(a["log_ppl"],
                                                                                    b["log_ppl"]).model_dump(),
                                        "distinct_bigrams_per_reply": bootstrap_difference(a["bigrams"],
                                                                                           b["bigrams"]).model_dump()}
    result["minutes"] = round((time.monotonic() - t0) / 60, 1)
    result["replies"] = replies
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2))
    for dt, v in result["dtypes"].items():
        c, lp, bg = v["strict_compliance"], v["mean_log_perplexity"], v["distinct_bigrams_per_reply"]
        print(f"[dtype-quality] {dt}: strict {c['mean']:.3f} [{c['low']:.3f}, {c['high']:.3f}], mean log-ppl "
              f"{lp['mean']:.3f} [{lp['low']:.3f}, {lp['high']:.3f}] (median ppl {v['median_perplexity']:.1f}), "
              f"distinct bigrams per reply {bg['mean']:.3f} [{bg['low']:.3f}, {bg['high']:.3f}], "
              f"pooled {v['distinct_bigrams_pooled']:.3f}")
    for k, d in result["bfloat16_minus_float32"].items():
        print(f"[dtype-quality] bfloat16 - float32 {k}: {d['mean']:+.3f} [{d['low']:+.3f}, {d['high']:+.3f}]")


if __name__ == "__main__":
    main()
