"""Multi-turn TTFT through the graph, with and without vLLM's prefix caching.

    python -m loadtest.investigations.bench_multiturn --model models/rrr-smollm2 --config serve_config.yaml --output out/bench

The graph (``--config``'s shape, its first model pointed at ``--model``) serves the model twice:
under its own name with prefix caching (vLLM's default) and as ``<name>-no-prefix-cache`` with
``enable_prefix_caching: false``, each in its own engine. Every conversation has ``--turns`` user
messages (consecutive prompts of ``loadtest/prompts.txt``, the first tagged with the conversation's
number so that no two conversations share a cached block); each turn sends the whole history over
streaming ``POST /generate`` (greedy, at most ``--max-tokens``, no healing) and appends the reply
as the assistant's message. The two models hold the same conversation in lockstep, turn by turn,
the one that goes first alternating, so that each pair of figures is measured seconds apart on
the same prompt (greedy decoding gives both the same replies; the report counts those that differ).

Reports, per model and turn, the client's TTFT p50, the model stage's TTFT p50, the prompt's
tokens and those the engine found cached (``metadata.cached_input_tokens``), and the last turn's
TTFT ratio; writes ``multiturn.json``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from pathlib import Path
from typing import Any, Optional

from loadtest.metrics import percentile

NO_CACHE_SUFFIX = "-no-prefix-cache"


def graph_with_and_without_cache(model: str, config: Optional[str]) -> tuple[dict[str, Any], str, str]:
    """The app args serving ``model`` twice (prefix caching on, off); the two served names."""
    from rrr_ray.serving.derived import graph_args

    app = graph_args(model, config)
    cached = dict(app["models"][0])
    uncached = {**cached, "name": cached["name"] + NO_CACHE_SUFFIX,
                "engine_kwargs": {**cached.get("engine_kwargs", {}), "enable_prefix_caching": False}}
    app["models"] = [cached, uncached]
    return app, cached["name"], uncached["name"]


async def one_turn(client: Any, url: str, model: str, messages: list[dict[str, str]],
                   max_tokens: int) -> dict[str, Any]:
    """One streamed turn: the reply's text, the client's TTFT and the server's metadata."""
    body = {"model": model, "messages": messages, "max_new_tokens": max_tokens, "temperature": 0.0,
            "heal": False, "stream": True}
    parts: list[str] = []
    ttft = None
    start = time.perf_counter()
    async with client.post(url, json=body) as resp:
        if resp.status != 200:
            raise RuntimeError(f"{model}: HTTP {resp.status}: {(await resp.read())[:300]!r}")
        async for raw in resp.content:
            line = raw.decode("utf-8").strip()
            if not line:
                continue
            obj = json.loads(line)
            if obj.get("error"):
                raise RuntimeError(f"{model}: stream error: {obj['error']}")
            if obj.get("token"):
                ttft = ttft if ttft is not None else time.perf_counter() - start
                parts.append(obj["token"])
            if obj.get("finished"):
                meta = obj.get("metadata") or {}
                return {"text": "".join(parts), "ttft_s": ttft, "engine_ttft_s": meta.get("engine_time_to_first_token_seconds"),
                        "input_tokens": meta.get("input_tokens"), "cached_tokens": meta.get("cached_input_tokens")}
    raise RuntimeError(f"{model}: the stream ended without a finished line")


async def conversations(url: str, models: tuple[str, str], prompts: list[str], n: int, turns: int,
                        max_tokens: int) -> dict[str, list[list[dict[str, Any]]]]:
    """``n`` conversations held by both models in lockstep: per model, per conversation, its turns."""
    import aiohttp

    from loadtest.client import http_client

    out: dict[str, list[list[dict[str, Any]]]] = {m: [] for m in models}
    async with http_client(2) as client:
        for k in range(n):
            history = {m: [] for m in models}
            turns_of = {m: [] for m in models}
            for t in range(turns):
                prompt = prompts[(k * turns + t) % len(prompts)]
                if t == 0:
                    prompt = f"(conversation {k + 1}) {prompt}"
                order = models if (k + t) % 2 == 0 else models[::-1]
                for m in order:
                    history[m].append({"role": "user", "content": prompt})
                    try:
                        turn = await one_turn(client, url, m, history[m], max_tokens)
                    except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
                        raise RuntimeError(f"{m}: {type(exc).__name__}: {exc}") from exc
                    history[m].append({"role": "assistant", "content": turn["text"]})
                    turns_of[m].append(turn)
            for m in models:
                out[m].append(turns_of[m])
            print(f"[multiturn] conversation {k + 1}/{n}: last turn TTFT "
                  + ", ".join(f"{m} {turns_of[m][-1]['ttft_s'] * 1000:.1f} ms" for m in models), flush=True)
    return out


def per_turn(convs: list[list[dict[str, Any]]], turns: int) -> list[dict[str, Any]]:
    rows = []
    for t in range(turns):
        ts = [c[t] for c in convs]
        ms = lambda key: percentile([x[key] * 1000 for x in ts if x[key] is not None], 50)  # noqa: E731
        rows.append({"turn": t + 1, "ttft_ms_p50": ms("ttft_s"), "engine_ttft_ms_p50": ms("engine_ttft_s"),
                     "input_tokens_mean": sum(x["input_tokens"] or 0 for x in ts) / len(ts),
                     "cached_tokens_mean": sum(x["cached_tokens"] or 0 for x in ts) / len(ts)})
    return rows


def report(results: dict[str, list[list[dict[str, Any]]]], cached: str, uncached: str, turns: int) -> dict[str, Any]:
    rows = {m: per_turn(results[m], turns) for m in (cached, uncached)}
    last_on, last_off = rows[cached][-1], rows[uncached][-1]
    differing = sum(a["text"] != b["text"] for ca, cb in zip(results[cached], results[uncached]) for a, b in zip(ca, cb))
    return {
        "last_turn": turns,
        "last_turn_ttft_ms_p50": {"prefix_caching": last_on["ttft_ms_p50"], "no_prefix_caching": last_off["ttft_ms_p50"]},
        "last_turn_ttft_ratio": last_on["ttft_ms_p50"] / last_off["ttft_ms_p50"] if last_off["ttft_ms_p50"] else None,
        "last_turn_cached_fraction": (last_on["cached_tokens_mean"] / last_on["input_tokens_mean"]
                                      if last_on["input_tokens_mean"] else None),
        "replies_differing": differing,
        "per_turn": rows,
        "conversations": results,
    }


def main(argv: list[str] | None = None) -> int:
    from loadtest.client import load_prompts

    ap = argparse.ArgumentParser(prog="python -m loadtest.investigations.bench_multiturn", description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="models/rrr-smollm2")
    ap.add_argument("--config", default="serve_config.yaml", help="serve config whose first model's settings and shape are used")
    ap.add_argument("--conversations", type=int, default=12)
    ap.add_argument("--turns", type=int, default=5)
    ap.add_argument("--max-tokens", type=int, default=96)
    ap.add_argument("--prompts", default=None)
    ap.add_argument("--timeout", type=float, default=600, help="seconds allowed to the graph's start")
    ap.add_argument("--output", type=Path, default=Path("out/bench"))
    args = ap.parse_args(argv)
    if args.conversations < 1 or args.turns < 2 or args.max_tokens < 1:
        ap.error("--conversations and --max-tokens must be at least 1, --turns at least 2")
    if not Path(args.model).exists():
        print(f"error: no model at {args.model}", file=sys.stderr)
        return 2
    model = str(Path(args.model).resolve())
    from deployments.launch import start_graph, stop_graph
    from rrr_ray.serving.derived import graph_env

    app, cached, uncached = graph_with_and_without_cache(model, args.config)
    prompts = load_prompts(args.prompts)
    started = time.time()
    url = start_graph(app, timeout_s=args.timeout, env=graph_env(args.config))
    try:
        results = asyncio.run(conversations(f"{url}/generate", (cached, uncached), prompts, args.conversations,
                                            args.turns, args.max_tokens))
    except RuntimeError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    finally:
        stop_graph()
    out = {"created": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "wall_s": round(time.time() - started, 1),
           "command": "python -m loadtest.investigations.bench_multiturn " + " ".join(sys.argv[1:] if argv is None else argv),
           "model": model, "config": args.config, "conversations_per_model": args.conversations,
           "max_tokens": args.max_tokens, **report(results, cached, uncached, args.turns)}
    args.output.mkdir(parents=True, exist_ok=True)
    (args.output / "multiturn.json").write_text(json.dumps(out, indent=2))
    print(f"{'model':<36}{'turn':>5}{'TTFT p50':>10}{'model TTFT':>12}{'prompt':>8}{'cached':>8}")
    for m, rows in out["per_turn"].items():
        for r in rows:
            print(f"{m:<36}{r['turn']:>5}{r['ttft_ms_p50']:>10.1f}{r['engine_ttft_ms_p50']:>12.1f}"
                  f"{r['input_tokens_mean']:>8.0f}{r['cached_tokens_mean']:>8.0f}")
    print(f"turn {args.turns} TTFT p50: {out['last_turn_ttft_ms_p50']}, ratio {out['last_turn_ttft_ratio']:.3f}; "
          f"replies differing: {out['replies_differing']}")
    print(f"wrote {args.output / 'multiturn.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
