"""Throughput of the three ways to get a valid reply, side by side on a running graph: unguided
(``heal: false``, the model's own text), guided (``guided: true``, every token under the format's
grammar) and healed (``heal: true``: free text, repaired only where it breaks).

    python -m loadtest.investigations.bench_decoding --url http://127.0.0.1:8000 --model rrr-smollm2 \\
        --concurrency 16 --rounds 3 --output out/bench_decoding

Each round runs every mode once on the same prompts (data/eval_prompts.jsonl, in a rotated mode
order per round), with ``concurrency`` closed-loop streams and natural stops (no ``ignore_eos``,
which would turn healing off). Throughput is output tokens over the wall time of the mode's run;
the figures are the median round, and the JSON keeps every round.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

from loadtest.client import http_client, wait_healthy
from loadtest.metrics import parse_ndjson_line

MODES: dict[str, dict[str, Any]] = {"unguided": {"heal": False}, "guided": {"guided": True}, "healed": {"heal": True}}


async def _one(session, url: str, body: dict[str, Any]) -> dict[str, Any]:
    start = time.perf_counter()
    first = None
    final: dict[str, Any] = {}
    async with session.post(url, json=body) as resp:
        if resp.status != 200:
            return {"error": f"HTTP {resp.status}: {(await resp.read())[:200]!r}"}
        async for raw in resp.content:
            item = parse_ndjson_line(raw)
            if item is None:
                continue
            if first is None and item.get("token"):
                first = time.perf_counter() - start
            if item.get("finished"):
                final = item
    if final.get("error"):
        return {"error": final["error"]}
    meta = final.get("metadata") or {}
    return {"tokens": meta.get("output_tokens", 0), "valid": bool((final.get("validation") or {}).get("valid")),
            "healed": bool(final.get("heal")), "ttft_s": first, "finish_reason": meta.get("finish_reason")}


async def run_mode(base_url: str, model: str, mode: str, prompts: list[str], concurrency: int,
                   max_tokens: int, seed: int) -> dict[str, Any]:
    """Every prompt once, ``concurrency`` streams at a time."""
    url = base_url.rstrip("/") + "/generate"
    queue = list(enumerate(prompts))
    results: list[dict[str, Any]] = []
    session = http_client(concurrency)

    async def worker() -> None:
        while queue:
            i, prompt = queue.pop(0)
            body = {"messages": [{"role": "user", "content": prompt}], "model": model, "stream": True,
                    "max_new_tokens": max_tokens, "seed": seed + i, **MODES[mode]}
            results.append(await _one(session, url, body))

    start = time.perf_counter()
    try:
        await asyncio.gather(*(worker() for _ in range(concurrency)))
    finally:
        await session.close()
    wall = time.perf_counter() - start
    ok = [r for r in results if "error" not in r]
    tokens = sum(r["tokens"] for r in ok)
    ttfts = [r["ttft_s"] for r in ok if r["ttft_s"] is not None]
    return {"mode": mode, "requests": len(results), "errors": len(results) - len(ok), "wall_s": round(wall, 2),
            "output_tokens": tokens, "tokens_per_s": round(tokens / wall, 2) if wall else None,
            "compliance": round(sum(r["valid"] for r in ok) / len(ok), 4) if ok else None,
            "healed": sum(r["healed"] for r in ok),
            "ttft_p50_s": round(statistics.median(ttfts), 3) if ttfts else None,
            "finish_reasons": {k: sum(r["finish_reason"] == k for r in ok) for k in {r["finish_reason"] for r in ok}}}


def main(argv: list[str] | None = None) -> int:
    from rrr_ray.data.prompts import DEFAULT_EVAL_PROMPTS, load_prompts

    p = argparse.ArgumentParser(prog="python -m loadtest.investigations.bench_decoding", description=__doc__.split("\n\n")[0])
    p.add_argument("--url", default="http://127.0.0.1:8000")
    p.add_argument("--model", default=None, help="served model (default: the graph's first)")
    p.add_argument("--concurrency", type=int, default=16)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--max-tokens", type=int, default=256)
    p.add_argument("--prompts", default=DEFAULT_EVAL_PROMPTS)
    p.add_argument("--modes", default="unguided,guided,healed")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--output", default="out/bench_decoding")
    args = p.parse_args(argv)
    modes = [m for m in args.modes.split(",") if m]
    bad = [m for m in modes if m not in MODES]
    if bad or args.concurrency < 1 or args.rounds < 1:
        print(f"error: modes are {', '.join(MODES)}; --concurrency and --rounds at least 1", file=sys.stderr)
        return 2
    prompts = [q["prompt"] for q in load_prompts(args.prompts)]
    try:
        asyncio.run(wait_healthy(args.url, timeout=30))
    except Exception as exc:  # unreachable or unhealthy: one line
        print(f"error: {args.url} is not healthy: {exc}", file=sys.stderr)
        return 2
    rounds = []
    for r in range(args.rounds):
        order = modes[r % len(modes):] + modes[:r % len(modes)]
        runs = {m: asyncio.run(run_mode(args.url, args.model, m, prompts, args.concurrency, args.max_tokens,
                                        args.seed)) for m in order}
        rounds.append({"round": r + 1, "order": order, "modes": runs})
        print(f"round {r + 1}: " + "; ".join(f"{m} {runs[m]['tokens_per_s']} tok/s, compliance "
                                              f"{runs[m]['compliance']}, healed {runs[m]['healed']}"
                                              for m in modes), flush=True)
    base = modes[0]
    ratios = {m: [rd["modes"][m]["tokens_per_s"] / rd["modes"][base]["tokens_per_s"] for rd in rounds]
              for m in modes[1:]}
    summary = {"created": time.strftime("%Y-%m-%d"), "command": "python -m loadtest.investigations.bench_decoding " + " ".join(
        sys.argv[1:] if argv is None else argv), "model": args.model, "concurrency": args.concurrency,
        "prompts": len(prompts), "max_tokens": args.max_tokens,
        "median": {m: {"tokens_per_s": statistics.median(rd["modes"][m]["tokens_per_s"] for rd in rounds),
                       "compliance": statistics.median(rd["modes"][m]["compliance"] for rd in rounds)}
                   for m in modes},
        "ratio_to_" + base: {m: {"median": round(statistics.median(v), 3), "rounds": [round(x, 3) for x in v]}
                             for m, v in ratios.items()},
        "rounds": rounds}
    out = Path(args.output)
    out.mkdir(parents=True, exist_ok=True)
    (out / "bench_decoding.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(json.dumps({k: summary[k] for k in ("median", "ratio_to_" + base)}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
