"""Measure the served default against its base and the seed's curated replies; print the figures and
write them as JSON (what the model card and docs/model.md quote).

    python -m jobs.report_default_model [--samples 3 --temperature 0.7 --output out/default_model/report.json]

- **Format**: strict compliance (``rrr_ray.validate`` on the raw reply, no repair) of the merged
  fine-tune (``models/rrr-smollm2``), unguided and guided, and of the base, on the held-out prompts
  (``data/eval_prompts.jsonl``, 40 prompts in five categories), ``--samples`` replies each at
  ``--temperature``; by category too. Replies come from the real vLLM engine.
- **Coherence**: the median per-token perplexity of the spoken replies (the respond sections; a
  reply with no tags, as the base's, counts whole) under the base model, conditioned on the user
  turn in ChatML, for each model's replies and for the seed's curated replies; the distinct-bigram
  ratio over all of them. Every reply is kept in the JSON.
- **Speed** (``--speed``): tok/s at 1 and 16 streams and engine start-up of the merged model and of
  the unmerged adapter (vLLM LoRA) on the base, from ``python -m loadtest.engine_bench`` run as its
  own process with the served engine settings (``rrr_ray.serving.derived``).

The figures come from ``rrr_ray.training.report``; this job reads its options, runs the speed
command and writes the JSON and the card.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import subprocess
import sys
import tempfile
import time
from datetime import date
from pathlib import Path
from typing import Any

from jobs._common import die, env_defaults, print_summary


def parse_args(argv=None) -> argparse.Namespace:
    from rrr_ray.data.prompts import DEFAULT_EVAL_PROMPTS
    from rrr_ray.model_names import ADAPTER_NAME, MERGED_NAME
    from rrr_ray.training.pretrained import SMOLLM2_135M

    p = argparse.ArgumentParser(prog="python -m jobs.report_default_model", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tuned", default=f"models/{MERGED_NAME}", help="merged fine-tune folder")
    p.add_argument("--base", default=f"models/{SMOLLM2_135M.name}", help="base model folder")
    p.add_argument("--adapter", default=f"models/{ADAPTER_NAME}", help="the unmerged adapter (speed only)")
    p.add_argument("--prompts", default=DEFAULT_EVAL_PROMPTS, help="held-out prompts (JSON lines)")
    p.add_argument("--seed-replies", default="data/seed/curated_seed_dialogues",
                   help="the seed's curated dialogues (the coherence reference)")
    p.add_argument("--samples", type=int, default=3, help="replies per prompt")
    p.add_argument("--temperature", type=float, default=0.7)
    p.add_argument("--max-tokens", type=int, default=256, help="most tokens of an unguided reply")
    p.add_argument("--guided-max-tokens", type=int, default=512,
                   help="most tokens of a guided reply (room for the longest reply the guided regex admits)")
    p.add_argument("--speed", action="store_true", help="also measure tok/s and start-up (about 6 minutes)")
    p.add_argument("--output", default="out/default_model/report.json")
    return p.parse_args(argv)


def engine_speed(model: str, lora: str | None = None) -> dict[str, Any]:
    """tok/s at 1 and 16 streams (64 tokens a request, EOS ignored) and start-up, from the engine
    benchmark's command with the served engine settings and environment."""
    from rrr_ray.serving.derived import SERVE_CONFIG, graph_env, served_engine_args

    with tempfile.TemporaryDirectory() as d:
        out = Path(d) / "levels.json"
        cmd = [sys.executable, "-m", "loadtest.engine_bench", "--model", model, "--concurrency", "1,16",
               "--requests-per-level", "8,32", "--out", str(out)]
        cmd += [f"--engine-arg={k}={json.dumps(v)}" for k, v in served_engine_args(model, lora=lora).items()]
        if lora:
            cmd += ["--lora", lora]
        subprocess.run(cmd, check=True, env={**graph_env(SERVE_CONFIG), **os.environ})
        data = json.loads(out.read_text())
    levels = {}
    for c, lv in data["levels"].items():
        s = lv["summary"]
        levels[c] = {"tok_s": s.get("output_throughput"), "ttft_p50_ms": s.get("ttft_ms", {}).get("p50"),
                     "itl_p50_ms": s.get("itl_ms", {}).get("p50"), "requests": s.get("completed")}
    return {"startup_s": round(data["startup_s"], 1), "engine_args": data["engine_args"], "levels": levels}


def main(argv=None) -> int:
    env_defaults()
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    from rrr_ray.data.prompts import load_prompts
    from rrr_ray.training.report import measure_default_model

    for path in (args.tuned, args.base):
        if not (Path(path) / "config.json").exists():
            die(f"{path}: not a model folder (make install builds it)")
    try:
        prompts = load_prompts(args.prompts)
    except (FileNotFoundError, ValueError) as exc:
        die(str(exc))
    t0 = time.monotonic()
    figures = measure_default_model(args.tuned, args.base, prompts, args.seed_replies, args.samples,
                                    args.temperature, args.max_tokens, args.guided_max_tokens)
    report: dict[str, Any] = {
        "date": date.today().isoformat(),
        "command": "python -m jobs.report_default_model " + " ".join(argv if argv is not None else sys.argv[1:]),
        "models": {"tuned": args.tuned, "base": args.base}, "prompts": args.prompts, "n_prompts": len(prompts),
        "samples_per_prompt": args.samples, "temperature": args.temperature, "max_tokens": args.max_tokens,
        "guided_max_tokens": args.guided_max_tokens, **figures,
    }
    if args.speed:
        report["speed"] = {"merged": engine_speed(args.tuned),
                           "unmerged_lora": engine_speed(args.base, lora=f"rrr={args.adapter}")}
    report["minutes"] = round((time.monotonic() - t0) / 60, 1)
    out = Path(args.output)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2))
    training = Path(args.adapter) / "training.json"
    if out.parent.resolve() == Path(args.adapter).resolve() and training.exists():
        from rrr_ray.training.cards import default_model_card

        (Path(args.adapter) / "README.md").write_text(default_model_card(json.loads(training.read_text()), report))
    c, coh, q = report["compliance"], report["coherence"], report["coherence_vs_seed"]
    print_summary(f"default model report -> {out}", {
        **{f"compliance_{k}": v["strict"] for k, v in c.items()},
        "tuned_by_category": c["tuned"]["by_category"],
        **{f"perplexity_{k}": v["median_perplexity"] for k, v in coh.items()},
        **{f"distinct_bigrams_{k}": v["distinct_bigram_ratio"] for k, v in coh.items()},
        "tuned_perplexity_vs_seed": q["tuned"]["perplexity_ratio"],
        "tuned_bigrams_vs_seed": q["tuned"]["distinct_bigram_ratio_vs_seed"],
        **({f"speed_{k}": v for k, v in report["speed"].items()} if args.speed else {}),
        "minutes": report["minutes"],
    })
    return 0


if __name__ == "__main__":
    sys.exit(main())
