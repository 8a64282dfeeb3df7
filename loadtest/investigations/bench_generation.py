"""Dialogues per minute of the generation job at concurrency 1 and 8 against one endpoint.

    python -m loadtest.investigations.bench_generation --base-url http://127.0.0.1:8000/v1 --model rrr-tiny \
        --output out/bench [--num-dialogues 96] [--concurrency 1 8] [--rounds 3] [--guided]

Runs the real job (``rrr_ray.data.generation.run_generation`` on one local Ray cluster) once per
concurrency level, each into a fresh folder, with the same seed, so every level makes the same
dialogues (each request carries a sampling seed fixed by dialogue, turn and attempt). Prints the
figures and writes ``generation_bench.json`` to ``--output``. A warm-up run (not counted) first
makes the server compile/cache what it needs. With ``--rounds N`` every level runs N times,
interleaved (c1, c8, c1, c8, ...), and the report gives the round with the median speed-up (the
lower median for an even N), listing every round: on a shared machine the speed drifts between
runs minutes apart, and one run per level mixes that drift into the ratio.
"""

from __future__ import annotations

import argparse
import json
import logging
import platform
import sys
import tempfile
import time
from pathlib import Path

from loadtest.metrics import median_index


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m loadtest.investigations.bench_generation", description=__doc__.split("\n\n")[0])
    p.add_argument("--base-url", default=None, help="OpenAI-compatible API root (default $OPENAI_BASE_URL or rrr-ray's)")
    p.add_argument("--model", default=None, help="served model name (default rrr-tiny)")
    p.add_argument("--num-dialogues", type=int, default=96, help="dialogues per concurrency level")
    p.add_argument("--concurrency", type=int, nargs="+", default=[1, 8], help="levels to measure")
    p.add_argument("--rounds", type=int, default=3, help="runs of every level, interleaved; the median round is reported")
    p.add_argument("--warmup", type=int, default=2, help="dialogues of an uncounted warm-up run")
    p.add_argument("--min-turns", type=int, default=2)
    p.add_argument("--max-turns", type=int, default=2)
    p.add_argument("--max-tokens", type=int, default=256)
    p.add_argument("--guided", action="store_true", help="guided decoding (rrr-ray and vLLM servers)")
    p.add_argument("--mode", choices=["auto", "turns", "whole"], default="auto")
    p.add_argument("--output", type=Path, required=True, help="folder for generation_bench.json")
    args = p.parse_args(argv)
    if args.rounds < 1 or args.num_dialogues < 1 or not args.concurrency or min(args.concurrency) < 1:
        p.error("--rounds, --num-dialogues and every --concurrency must be at least 1")
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")

    import ray

    from rrr_ray.data.generation import GenerationConfig, GenerationError, run_generation

    common = dict(model=args.model, min_turns=args.min_turns, max_turns=args.max_turns, max_tokens=args.max_tokens,
                  guided=args.guided, mode=args.mode, progress=False, seed=0)
    if args.base_url:
        common["base_url"] = args.base_url
    ray.init(num_cpus=2, include_dashboard=False, logging_level=logging.WARNING)
    rounds: list[list[dict]] = []
    try:
        with tempfile.TemporaryDirectory(prefix="rrr-bench-") as tmp:
            if args.warmup:
                run_generation(GenerationConfig(**common, num_dialogues=args.warmup, concurrency=2,
                                                output=Path(tmp) / "warmup"))
            for r in range(args.rounds):
                results = []
                for c in args.concurrency:
                    t = time.monotonic()
                    s = run_generation(GenerationConfig(**common, num_dialogues=args.num_dialogues, concurrency=c,
                                                        output=Path(tmp) / f"round{r}-c{c}"))
                    results.append({"concurrency": c, "dialogues": s.generated, "rejected": s.rejected,
                                    "rejected_reasons": s.rejected_reasons, "retries": s.retries,
                                    "format_retries": s.format_retries, "repaired": s.repaired,
                                    "attempts": s.attempts, "elapsed_s": s.elapsed_s,
                                    "wall_s": round(time.monotonic() - t, 3),
                                    "dialogues_per_minute": s.dialogues_per_minute})
                    print(f"{'round ' + str(r + 1) + ': ' if args.rounds > 1 else ''}concurrency {c:>2}: "
                          f"{s.generated} dialogues in {s.elapsed_s:.1f}s = {s.dialogues_per_minute:.1f} "
                          f"dialogues/min (rejected {s.rejected})", flush=True)
                rounds.append(results)
    except GenerationError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    finally:
        ray.shutdown()
    round_speedups = [speedups(rs) for rs in rounds]
    chosen = median_round(round_speedups)
    results = rounds[chosen]
    report = {
        "base_url": common.get("base_url"), "model": GenerationConfig(**common).resolved_model(),
        "num_dialogues": args.num_dialogues, "turns": [args.min_turns, args.max_turns], "guided": args.guided,
        "machine": {"platform": platform.platform(), "python": platform.python_version()},
        "results": results, "speedup": round_speedups[chosen],
        "median_round": chosen, "rounds": [{"results": rs, "speedup": sp} for rs, sp in zip(rounds, round_speedups)],
    }
    if len(results) >= 2:
        last = str(results[-1]["concurrency"])
        every = ", ".join(f"{sp[last]}x" for sp in round_speedups)
        print(f"speedup c={last} vs c={results[0]['concurrency']}: {report['speedup'][last]}x"
              + (f" (median of {args.rounds} rounds: {every})" if args.rounds > 1 else ""))
    args.output.mkdir(parents=True, exist_ok=True)
    (args.output / "generation_bench.json").write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.output / 'generation_bench.json'}")
    return 0


def speedups(results: list[dict]) -> dict[str, float | None]:
    """Dialogues per minute of every level over the first level's."""
    base = results[0]["dialogues_per_minute"] if results else 0
    return {str(r["concurrency"]): round(r["dialogues_per_minute"] / base, 2) if base else None for r in results}


def median_round(round_speedups: list[dict[str, float | None]]) -> int:
    """Index of the round with the median speed-up of the last level (``median_index``)."""
    return median_index([list(s.values())[-1] if s else None for s in round_speedups])


if __name__ == "__main__":
    sys.exit(main())
