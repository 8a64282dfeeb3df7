"""Benchmark served RRR models: format compliance, reference metrics (BLEU, ROUGE, METEOR,
BERTScore, semantic similarity), an optional judge, response time, per category, each with a
bootstrap 95% confidence interval; summary.json, category_metrics.json, detailed_results.json,
report.md and four plots in --output.

    python -m jobs.benchmark --endpoint http://127.0.0.1:8000 --models rrr-smollm2,smollm2-135m-instruct \\
        --output out/benchmark [--num-prompts 10] [--samples 1] [--guided both|on|off] \\
        [--judge-url URL --judge-model M]

A rerun resumes from the cache in --output (generations.jsonl): only missing replies are sent;
--score-only rescores the cache. Through Ray's job API:

    ray job submit --working-dir . -- python -m jobs.benchmark --models rrr-smollm2 --output /abs/out
"""

from __future__ import annotations

import argparse
import logging
import shlex
import sys

from jobs._common import die, print_summary
from rrr_ray.config_cli import ConfigError, add_config_options, config_values, validate_config
from rrr_ray.evaluation.benchmark import BenchmarkConfig

FIELDS = tuple(BenchmarkConfig.model_fields)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m jobs.benchmark", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    add_config_options(p, BenchmarkConfig, FIELDS)
    args = p.parse_args(argv)
    args.models = [m.strip() for item in args.models for m in item.split(",") if m.strip()]
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        cfg = validate_config(BenchmarkConfig, config_values(args, BenchmarkConfig, FIELDS))
    except ConfigError as exc:
        die(str(exc))
    from rrr_ray.evaluation.benchmark import BenchmarkError, run_benchmark

    command = "python -m jobs.benchmark " + shlex.join(sys.argv[1:] if argv is None else argv)
    try:
        summary = run_benchmark(cfg, command=command)
    except BenchmarkError as exc:
        die(str(exc))
    lines = {"output": cfg.output, "requests": summary["requests"], "seconds": summary["seconds"]}
    for system, agg in summary["results"].items():
        m = agg["metrics"]
        comp = m["compliance"]["mean"]
        sim = m["respond.semantic_similarity"]["mean"]
        lines[system] = (f"compliance {'-' if comp is None else f'{comp:.1%}'}, semantic similarity "
                         f"{'-' if sim is None else f'{sim:.3f}'}, judged {agg['judged']}/{agg['scored']}")
    print_summary("benchmark", lines)
    return 0


if __name__ == "__main__":
    sys.exit(main())
