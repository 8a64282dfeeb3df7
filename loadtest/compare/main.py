"""The command of :mod:`loadtest.compare`: read the options, measure each graph shape in paired
rounds beside the engine, the seed-style server alone after them, and write ``compare.json``."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import sys
import time
from pathlib import Path
from typing import Any, Callable, Optional

from loadtest.client import DEFAULT_PROMPTS, load_prompts, wait_healthy
from loadtest.compare import __doc__ as DOC
from loadtest.compare.measure import (measure_http_level, probe_ignore_eos, requests_for, run_rounds,
                                      seed_requests_for)
from loadtest.compare.report import HEADLINE, shape_report, table
from loadtest.compare.systems import EngineProcess, engine_args_from_graph, seed_server, serve_graph
from rrr_ray.serving.derived import PLACEMENTS, graph_args, graph_env

Rounds = list[dict[str, Any]]


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="python -m loadtest.compare", description=DOC.split("\n\n")[0])
    ap.add_argument("--model", default="models/rrr-tiny")
    ap.add_argument("--output", default="out/compare")
    ap.add_argument("--concurrency", default="1,4,16")
    ap.add_argument("--requests-per-level", type=int, default=None,
                    help="measured requests per level and system (default max(96, 40*concurrency); (c) at most 96)")
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--prompts", default=None)
    ap.add_argument("--warmup", type=int, default=2, help="unmeasured requests per system before measuring")
    ap.add_argument("--skip", default="", help="systems to skip, e.g. b or a,c (a engine, b serve, c seed)")
    ap.add_argument("--serve-url", default=None, help="base URL of a running rrr-ray graph serving --model")
    ap.add_argument("--config", default=None,
                    help="serve config whose first model's settings (b) and (a) use (default: serve_config.tiny.yaml)")
    ap.add_argument("--placements", default=None,
                    help=f"graph shapes to measure in turn, each paired with the same (a): a comma list of "
                         f"{', '.join(PLACEMENTS)} (default: the config's own; not with --serve-url)")
    ap.add_argument("--engine-arg", action="append", default=[],
                    help="AsyncEngineArgs key=value for (a) (default: the graph's settings from serve_config.tiny.yaml)")
    ap.add_argument("--graph-arg", action="append", default=[],
                    help="override an app arg of the graph started for (b), e.g. stream_interval_ms=0")
    ap.add_argument("--timeout", type=float, default=1800, help="seconds allowed to each system")
    ap.add_argument("--rounds", type=int, default=1,
                    help="paired rounds: each runs every level on (a) and (b) back to back; the report's figures "
                         "are the round with the median b/a at the highest level, and every round is listed")
    ap.add_argument("--settle-s", type=float, default=1.0,
                    help="pause before each measured block, so that the other system's engine is idle")
    return ap.parse_args(argv)


def placements_of(args: argparse.Namespace) -> list[Optional[str]]:
    """The shapes to measure (``[None]``: the config's own); ValueError says what is wrong."""
    if args.rounds < 1:
        raise ValueError("--rounds must be at least 1")
    if not Path(args.model).exists():
        raise ValueError(f"no model at {args.model}")
    if not args.placements:
        return [None]
    placements = [p.strip() for p in args.placements.split(",") if p.strip()]
    if not placements or any(p not in PLACEMENTS for p in placements):
        raise ValueError(f"--placements takes {', '.join(PLACEMENTS)}, not {args.placements!r}")
    if args.serve_url:
        raise ValueError("--placements starts each shape itself; not with --serve-url")
    return placements


def measure_shapes(args: argparse.Namespace, placements: list[Optional[str]], levels: list[int], skip: set[str],
                   prompts: list[str], out: Path, errors: dict[str, str]) -> dict[str, tuple[Rounds, dict]]:
    """(a) started once; each shape of (b) started in turn and measured in paired rounds beside it."""
    shape_rounds: dict[str, tuple[Rounds, dict]] = {}
    with contextlib.ExitStack() as stack:
        engine_block: dict[str, Callable[..., dict[str, Any]]] = {}
        engine_meta: dict[str, dict[str, Any]] = {}
        if "a" not in skip:
            try:
                engine = EngineProcess.start(args, out)
                stack.callback(engine.close)
                engine_block["engine"] = engine.level
                engine_meta["engine"] = {"startup_s": engine.startup_s, "engine_args": args.engine_arg}
            except (RuntimeError, OSError) as exc:
                errors["engine"] = str(exc)
        for placement in placements:
            label = placement or "config"
            blocks, meta = dict(engine_block), dict(engine_meta)
            with contextlib.ExitStack() as graph:
                if "b" not in skip:
                    try:
                        url = graph.enter_context(serve_graph(args, placement))
                        asyncio.run(wait_healthy(url, timeout=60))
                        ignore_eos, notes = asyncio.run(probe_ignore_eos(url, "serve", args, prompts))
                        meta["serve"] = {"url": url, "placement": label, "ignore_eos": ignore_eos, "notes": notes}
                        blocks["serve"] = lambda c, n, w, url=url, ie=ignore_eos: asyncio.run(
                            measure_http_level(url, "serve", args, c, n, w, prompts, ie))
                    except (RuntimeError, TimeoutError, OSError, ImportError) as exc:
                        errors[f"serve ({label})"] = str(exc)
                shape_rounds[label] = (run_rounds(blocks, levels, args, errors, label), meta)
    return shape_rounds


def measure_seed(args: argparse.Namespace, levels: list[int], prompts: list[str], out: Path,
                 errors: dict[str, str]) -> Optional[dict[str, Any]]:
    """(c) alone, once, after the paired rounds."""
    try:
        with seed_server(args.model, out / "seed_server.log") as (url, proc):
            asyncio.run(wait_healthy(url, timeout=180, proc=proc))
            ignore_eos, notes = asyncio.run(probe_ignore_eos(url, "seed", args, prompts))
            seed_levels = {}
            for c in levels:
                n = seed_requests_for(c, args.requests_per_level)
                seed_levels[str(c)] = asyncio.run(
                    measure_http_level(url, "seed", args, c, n, args.warmup, prompts, ignore_eos))
            return {"url": url, "levels": seed_levels, "ignore_eos": ignore_eos, "notes": notes}
    except (RuntimeError, TimeoutError, OSError) as exc:
        errors["seed"] = str(exc)
        return None


def run_config(args: argparse.Namespace, levels: list[int], shapes: list[str], argv: list[str] | None) -> dict:
    """What was run, as ``compare.json`` records it."""
    return {"model": args.model, "concurrency": levels, "max_tokens": args.max_tokens,
            "requests_per_level": {str(c): requests_for(c, args.requests_per_level) for c in levels},
            "seed_requests_per_level": {str(c): seed_requests_for(c, args.requests_per_level) for c in levels},
            "rounds": args.rounds, "schedule": "paired: each level on (a) and (b) back to back, "
                                              "(a) first in odd rounds, (b) first in even ones; "
                                              "the shapes one after the other, with the same (a)",
            "placements": shapes, "argv": sys.argv[1:] if argv is None else argv,
            "temperature": 0.0, "ignore_eos": True, "prompts": args.prompts or str(DEFAULT_PROMPTS),
            "endpoint_b_c": "/generate (NDJSON stream)", "cpus": os.cpu_count(),
            "serve_config": args.config or "serve_config.tiny.yaml",
            "engine_env": {k: os.environ.get(k, v) for k, v in graph_env(args.config).items()
                           if k.startswith("RRR_")}}


def print_shapes(shapes: dict[str, Any], levels: list[int], rounds: int) -> None:
    for label, shape in shapes.items():
        print(f"\n[compare] shape: {label} (median round of {rounds})")
        print(table(shape["systems"], levels))
        for k in HEADLINE:
            v = shape[k]
            rounds_v = " / ".join("n/a" if (x := rd["ratios"].get(k)) is None else f"{x:.3f}" for rd in shape["rounds"])
            print(f"{k}: {'n/a' if v is None else f'{v:.3f}'}   (rounds: {rounds_v})")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        placements = placements_of(args)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    args.model = str(Path(args.model).resolve())
    levels = [int(x) for x in args.concurrency.split(",") if x.strip()]
    skip = {s.strip() for s in args.skip.split(",") if s.strip()}
    prompts = load_prompts(args.prompts)
    out = Path(args.output)
    out.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    if not args.engine_arg:
        try:
            args.engine_arg = engine_args_from_graph(graph_args(args.model, args.config))
        except (ImportError, OSError, ValueError, KeyError) as exc:
            print(f"[compare] {args.config or 'serve_config.tiny.yaml'} not usable ({exc}); engine defaults for (a)",
                  file=sys.stderr)

    errors: dict[str, str] = {}
    t_start = time.time()
    shape_rounds = measure_shapes(args, placements, levels, skip, prompts, out, errors)
    seed = None if "c" in skip else measure_seed(args, levels, prompts, out, errors)
    shapes = {label: shape_report(rounds, meta, levels, seed) for label, (rounds, meta) in shape_rounds.items()}
    first = shapes[next(iter(shapes))]  # the config's own shape, or the first of --placements
    report = {
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "wall_s": time.time() - t_start,
        "config": run_config(args, levels, list(shapes), argv),
        **{k: first[k] for k in HEADLINE},
        **{k: first[k] for k in ("ratios", "targets", "rounds", "systems")},
        "shapes": shapes,
        "errors": errors,
    }
    (out / "compare.json").write_text(json.dumps(report, indent=2))
    print_shapes(shapes, levels, args.rounds)
    for name, e in errors.items():
        print(f"[compare] {name} failed: {e}", file=sys.stderr)
    print(f"[compare] wrote {out / 'compare.json'}")
    return 1 if errors else 0
