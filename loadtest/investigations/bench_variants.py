"""Graph variants side by side in one run: the measurement behind each serving change.

    python -m loadtest.investigations.bench_variants --variant 'r200={}' \\
        --variant 'r100={"args": {"max_hop_messages_per_s": 100}}' --concurrency 16 --rounds 4 --output out/variants

Every variant is the graph of ``--config`` (default serve_config.tiny.yaml: rrr-tiny, every stage in
a deployment of its own unless ``--placement ingress``) changed by its JSON: ``args`` merged into
the application's arguments (one level deep: ``{"postprocessor": {"access_log": false}}`` changes
one field), ``env`` added to its replicas' environment (``runtime_env.env_vars``). All the variants
are applications of one Serve instance (route prefix ``/<name>``, one engine each, pinned as the
config says: an idle engine takes no CPU), started by ``serve run`` on a Ray of their own, so their
levels can alternate seconds apart: round r measures every variant once, in turn (the order
reversed every other round), so the machine's drift falls on all of them. Each level is a closed
loop of ``--concurrency`` streaming ``/generate`` clients (greedy, ``--max-tokens`` with
``ignore_eos``) after as many warm-up requests; besides the client's figures it reads each
replica's CPU time from ``/proc`` and reports milliseconds of CPU per request per deployment, the
figure that tells what a change costs when the levels' throughputs move with the machine.

Writes ``variants.json`` (every level of every round, and the medians) and prints a table.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Optional

import psutil
import yaml

from loadtest.client import all_healthy, stop_serve_run
from loadtest.compare.measure import measure_http_level
from loadtest.investigations.cpu_share import cpu_seconds
from rrr_ray.paths import REPO
from rrr_ray.serving.derived import graph_args, graph_env

STAGES = ("RRRIngress", "RRRPostProcessor", "RRRModel")
"""The deployments whose replicas' CPU is read (``ray::ServeReplica:<variant>:<deployment>...``)."""


def parse_variant(text: str) -> tuple[str, dict[str, Any]]:
    """``NAME=JSON`` -> (name, spec); raises ``ValueError`` with what is wrong."""
    name, sep, spec_text = text.partition("=")
    if not sep or not name.isidentifier():
        raise ValueError(f"--variant takes NAME=JSON with NAME a plain word, not {text!r}")
    try:
        spec = json.loads(spec_text or "{}")
    except json.JSONDecodeError as exc:
        raise ValueError(f"--variant {name}: its JSON does not parse ({exc})") from None
    if not isinstance(spec, dict) or set(spec) - {"args", "env"}:
        raise ValueError(f"--variant {name}: the JSON is an object with 'args' and/or 'env', not {spec_text!r}")
    if not isinstance(spec.get("args", {}), dict) or not isinstance(spec.get("env", {}), dict):
        raise ValueError(f"--variant {name}: 'args' and 'env' are JSON objects")
    return name, spec


def merged(app: dict[str, Any], changes: dict[str, Any]) -> dict[str, Any]:
    """``app`` with ``changes``: a dict merged into a dict field, anything else replaced."""
    out = dict(app)
    for key, value in changes.items():
        out[key] = {**out[key], **value} if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def serve_config(variants: dict[str, dict[str, Any]], args, port: int) -> dict[str, Any]:
    """One Serve config with every variant as an application of its own."""
    applications = []
    for name, spec in variants.items():
        app = merged(graph_args(args.model, args.config, args.placement), spec.get("args", {}))
        env = {**graph_env(args.config), **{k: str(v) for k, v in spec.get("env", {}).items()}}
        applications.append({"name": name, "route_prefix": f"/{name}", "import_path": "deployments.app:build_app",
                             "runtime_env": {"env_vars": env}, "args": app})
    return {"proxy_location": "HeadOnly", "http_options": {"host": "127.0.0.1", "port": port},
            "applications": applications}


def replica_pids(variant: str) -> dict[str, int]:
    found = {}
    for p in psutil.process_iter(["name", "cmdline"]):
        title = f"{p.info['name'] or ''} {' '.join(p.info['cmdline'] or [])}"
        for stage in STAGES:
            if f"ServeReplica:{variant}:{stage}" in title:
                found[stage] = p.pid
    return found


def cpu_now(pids: dict[str, int]) -> dict[str, float]:
    """Each replica's CPU seconds so far (0 for one that is gone)."""
    return {stage: cpu_seconds(pid) or 0.0 for stage, pid in pids.items()}


def measure(variants: list[str], base_url: str, args) -> list[dict[str, Any]]:
    from loadtest.client import load_prompts

    prompts = load_prompts(args.prompts)
    pids = {v: replica_pids(v) for v in variants}
    c = args.concurrency
    rows = []
    for r in range(args.rounds):
        for v in (variants if r % 2 == 0 else variants[::-1]):
            before = cpu_now(pids[v])
            s = asyncio.run(measure_http_level(f"{base_url}/{v}", v, args, c, args.requests, c, prompts, True))
            done = max(s["completed"], 1)
            cpu = {k: round(1000 * (t - before[k]) / done, 3) for k, t in cpu_now(pids[v]).items()}
            row = {"variant": v, "round": r, "output_tok_s": round(s["output_throughput"], 1),
                   "ttft_ms_p50": round(s["ttft_ms"]["p50"], 1), "failed": args.requests - s["completed"],
                   "cpu_ms_per_request": cpu, "replicas_cpu_ms_per_request": round(sum(cpu.values()), 3)}
            print(f"[variants] round {r} {v}: {row['output_tok_s']:.0f} tok/s, TTFT p50 {row['ttft_ms_p50']:.1f} ms, "
                  f"replicas {row['replicas_cpu_ms_per_request']:.2f} ms CPU/request {cpu}", flush=True)
            rows.append(row)
    return rows


def medians(rows: list[dict[str, Any]], variants: list[str]) -> dict[str, dict[str, Any]]:
    out = {}
    for v in variants:
        mine = [r for r in rows if r["variant"] == v]
        out[v] = {key: {"median": statistics.median(r[key] for r in mine), "rounds": [r[key] for r in mine]}
                  for key in ("output_tok_s", "ttft_ms_p50", "replicas_cpu_ms_per_request")}
        out[v]["failed"] = sum(r["failed"] for r in mine)
    return out


def main(argv: Optional[list[str]] = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m loadtest.investigations.bench_variants", description=__doc__.split("\n\n")[0])
    ap.add_argument("--variant", action="append", default=[], metavar="NAME=JSON", help="a variant (two or more)")
    ap.add_argument("--config", default=None, help="the serve config the variants start from (default serve_config.tiny.yaml)")
    ap.add_argument("--model", default="models/rrr-tiny", help="the config's first model, pointed here (the only one served)")
    ap.add_argument("--placement", default="deployment", choices=("deployment", "ingress"),
                    help="every stage in a deployment of its own, or all in the ingress replica")
    ap.add_argument("--concurrency", type=int, default=16)
    ap.add_argument("--requests", type=int, default=640, help="measured requests per level")
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--prompts", default=None, help="prompts file (default loadtest/prompts.txt)")
    ap.add_argument("--timeout", type=float, default=600, help="seconds the variants may take to start")
    ap.add_argument("--output", default="out/variants")
    args = ap.parse_args(argv)
    try:
        variants = dict(parse_variant(v) for v in args.variant)
    except ValueError as exc:
        ap.error(str(exc))
    if len(variants) < 2 or len(variants) != len(args.variant):
        ap.error("give two or more --variant, each with a name of its own")
    if min(args.concurrency, args.requests, args.max_tokens, args.rounds) < 1:
        ap.error("--concurrency, --requests, --max-tokens and --rounds must be at least 1")

    from deployments.launch import free_port
    from rrr_ray.env import apply_cpu_node_env

    apply_cpu_node_env({"RAY_SERVE_HAPROXY_STATS_PORT": str(free_port()),  # beside `make serve`, whose are taken
                        "RAY_SERVE_HAPROXY_METRICS_PORT": str(free_port())})
    out = Path(args.output)
    out.mkdir(parents=True, exist_ok=True)
    port = free_port()
    config_path = out / "variants.serve.yaml"
    config_path.write_text(yaml.safe_dump(serve_config(variants, args, port), sort_keys=False))
    names, base_url = list(variants), f"http://127.0.0.1:{port}"
    # A Ray of its own ("local"): `serve run` would otherwise deploy into a running cluster's Serve
    # and replace its applications.
    log = open(out / "serve.log", "w")
    proc = subprocess.Popen([str(Path(sys.executable).parent / "serve"), "run", "--address", "local", str(config_path)],
                            cwd=str(REPO), stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    tree: list[Any] = []
    try:
        asyncio.run(all_healthy(base_url, names, proc, args.timeout))
        tree = psutil.Process(proc.pid).children(recursive=True)
        print(f"[variants] {', '.join(names)} up at {base_url}", flush=True)
        rows = measure(names, base_url, args)
    except (RuntimeError, TimeoutError) as exc:
        print(f"error: {exc}; see {out / 'serve.log'}", file=sys.stderr)
        return 1
    finally:
        stop_serve_run(proc, tree)
        log.close()
    summary = medians(rows, names)
    result = {"date": time.strftime("%Y-%m-%d"), "argv": sys.argv[1:] if argv is None else argv, "variants": variants,
              "medians": summary, "rounds": rows}
    (out / "variants.json").write_text(json.dumps(result, indent=2))
    print(f"\n{'variant':12} {'tok/s':>8} {'TTFT p50 ms':>12} {'replicas CPU ms/request':>24}  failed  (medians of {args.rounds} rounds)")
    for v in names:
        m = summary[v]
        print(f"{v:12} {m['output_tok_s']['median']:8.0f} {m['ttft_ms_p50']['median']:12.1f} "
              f"{m['replicas_cpu_ms_per_request']['median']:24.2f}  {m['failed']:6d}")
    print(f"[variants] wrote {out / 'variants.json'}")
    return 0 if all(summary[v]["failed"] == 0 for v in names) else 1


if __name__ == "__main__":
    sys.exit(main())
