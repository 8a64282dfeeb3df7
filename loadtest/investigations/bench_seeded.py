"""What seeded requests cost on a CPU engine, with each fix for the chunked-prefill crash.

    python -m loadtest.investigations.bench_seeded --rounds 3 --output out/bench-seeded

Two vLLM ``AsyncLLM`` engines with the graph's engine settings (serve_config.tiny.yaml's first model),
up together and measured in paired rounds, each level back to back on both:
- ``patched``: chunked prefill on (vLLM's default) with rrr-ray's plugin
  (``rrr_ray.serving.seeded_sampling``), which rewinds a discarded sample's CPU generator by state;
- ``no-chunking``: ``enable_chunked_prefill=False``, without the plugin (no partial prefills, so no
  rewind).
Both run seeded requests (request i has seed i, temperature 0.8) with long prompts (about 400
tokens, so 16 of them exceed one step's budget of 4096 tokens), and the patched engine also
unseeded, the cost of seeding itself. Prints tok/s and TTFT p50 per level and writes
``bench_seeded.json`` with every round; the figures reported are the median over rounds.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
from pathlib import Path
from typing import Any

from loadtest.client import load_prompts
from loadtest.compare.systems import EngineProcess, engine_args_from_graph
from loadtest.engine_bench import requests_for
from rrr_ray.paths import REPO
from rrr_ray.serving.derived import graph_args, graph_env

SEEDED_PLUGIN = "rrr_ray_seeded_sampling"
OTHER_PLUGINS = "rrr_ray_engine_wait"  # what the no-chunking engine loads instead of all of rrr-ray's


def long_prompts(path: Path, words: int = 300) -> Path:
    """A prompts file whose lines are the default prompts, each padded to about ``words`` words."""
    lines = []
    for p in load_prompts():
        text = p
        while len(text.split()) < words:
            text += " " + p
        lines.append(text)
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def start(name: str, model: str, prompts: Path, extra_args: list[str], plugins: str | None, out: Path,
          max_tokens: int) -> EngineProcess:
    engine_args = [a for a in engine_args_from_graph(graph_args(model)) if not a.startswith("enable_chunked")]
    cmd = [sys.executable, "-m", "loadtest.engine_bench", "--interactive", "--model", model,
           "--prompts", str(prompts), "--max-tokens", str(max_tokens), "--warmup", "2"]
    for ea in engine_args + extra_args:
        cmd += ["--engine-arg", ea]
    env = {**graph_env(), **os.environ}
    if plugins is not None:
        env["VLLM_PLUGINS"] = plugins
    print(f"[bench_seeded] starting {name}", flush=True)
    return EngineProcess(cmd, env, out / f"{name}.log", timeout=1800)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default=str(REPO / "models" / "rrr-tiny"))
    ap.add_argument("--concurrency", default="1,16")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--requests-per-level", type=int, default=None, help="default max(96, 40*concurrency)")
    ap.add_argument("--output", default="out/bench-seeded")
    args = ap.parse_args(argv)
    if not Path(args.model).exists():
        print(f"error: no model at {args.model}", file=sys.stderr)
        return 2
    out = Path(args.output)
    out.mkdir(parents=True, exist_ok=True)
    levels = [int(c) for c in args.concurrency.split(",") if c.strip()]
    prompts = long_prompts(out / "long_prompts.txt")
    engines = {
        "patched": start("patched", args.model, prompts, [], None, out, args.max_tokens),
        "no-chunking": start("no-chunking", args.model, prompts, ["enable_chunked_prefill=false"], OTHER_PLUGINS,
                             out, args.max_tokens),
    }
    runs = {"patched seeded": ("patched", True), "no-chunking seeded": ("no-chunking", True),
            "patched unseeded": ("patched", False)}
    rounds: list[dict[str, Any]] = []
    try:
        for r in range(args.rounds):
            order = list(runs) if r % 2 == 0 else list(reversed(runs))
            result: dict[str, Any] = {name: {} for name in runs}
            for c in levels:
                for name in order:
                    engine, seeded = runs[name]
                    s = engines[engine].level(c, requests_for(c, args.requests_per_level), warmup=c,
                                              seeded=seeded, temperature=0.8)
                    result[name][str(c)] = {"tok_s": s["output_throughput"], "ttft_p50_ms": s["ttft_ms"]["p50"],
                                            "completed": s["completed"], "failed": s["failed"]}
            rounds.append(result)
            print(f"[bench_seeded] round {r + 1}: {json.dumps(result)}", flush=True)
    finally:
        for e in engines.values():
            e.close()
    median = {name: {str(c): {k: statistics.median(rd[name][str(c)][k] for rd in rounds)
                              for k in ("tok_s", "ttft_p50_ms")} for c in levels} for name in runs}
    failed = sum(rd[name][str(c)]["failed"] for rd in rounds for name in runs for c in levels)
    report = {"model": args.model, "levels": levels, "rounds": rounds, "median": median, "failed_requests": failed,
              "prompt_words": 300, "max_tokens": args.max_tokens}
    (out / "bench_seeded.json").write_text(json.dumps(report, indent=2), encoding="utf-8")
    print(f"{'engine':<22}" + "".join(f"{f'c={c} tok/s':>14}{f'c={c} TTFT p50':>16}" for c in levels))
    for name in runs:
        print(f"{name:<22}" + "".join(f"{median[name][str(c)]['tok_s']:>14.1f}{median[name][str(c)]['ttft_p50_ms']:>13.1f} ms"
                                      for c in levels))
    print(f"failed requests: {failed}; every round in {out / 'bench_seeded.json'}")
    return 0 if failed == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
