"""Side-by-side benchmark, one run, same model and prompts: engine vs rrr-ray graph vs seed-style server.

    python -m loadtest.compare --model models/rrr-tiny --output out/compare [--serve-url URL]

Systems, measured one at a time (the cores are few) at each concurrency (closed loop: N clients
issue requests back to back, ``--requests-per-level`` in all, default ``max(8, 2N)``), all with
the same chat prompts, greedy decoding and a fixed ``--max-tokens`` with ``ignore_eos`` so that
every request yields the same number of tokens:

* **a / engine**: vLLM ``AsyncLLM`` in-process (:mod:`loadtest.engine_bench`, a subprocess): the limit;
* **b / serve**: the rrr-ray Serve graph over HTTP, streaming ``POST /generate`` (NDJSON). Given by
  ``--serve-url`` of a running graph, else started with ``rrr_ray.serving.launch`` when that exists;
* **c / seed**: :mod:`loadtest.seed_server` (FastAPI + transformers ``generate`` +
  ``TextIteratorStreamer``, as the seed's ``simple_api.py``), its own process on a free port.

Writes ``compare.json``: ``throughput_ratio_vs_engine_c16`` (b/a output tok/s at 16),
``ttft_overhead_ms_p50_c1`` (b minus a, TTFT p50 at 1), ``throughput_ratio_vs_seed_c16`` (b/c),
``seed_ratio_vs_engine_c16`` (c/a), the targets and whether they hold, and every system's full
:func:`loadtest.metrics.summarize` per level; prints a table.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from loadtest.metrics import RequestRecord, summarize
from rrr_ray.serving.launch import free_port

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
SYSTEMS = {"a": "engine", "b": "serve", "c": "seed"}
TARGETS = {
    "throughput_ratio_vs_engine_c16": (">=", 0.90),
    "ttft_overhead_ms_p50_c1": ("<=", 15.0),
    "throughput_ratio_vs_seed_c16": (">=", 5.0),
}


def requests_for(c: int, per_level: int | None) -> int:
    return per_level if per_level else max(8, 2 * c)


# --- (a) the engine ------------------------------------------------------------------------

def run_engine(args, levels: list[int], out: Path) -> dict[str, Any]:
    rec_file = out / "engine_records.json"
    cmd = [sys.executable, "-m", "loadtest.engine_bench", "--model", args.model, "--concurrency",
           ",".join(map(str, levels)), "--max-tokens", str(args.max_tokens), "--out", str(rec_file),
           "--warmup", str(args.warmup)]
    if args.requests_per_level:
        cmd += ["--requests-per-level", str(args.requests_per_level)]
    if args.prompts:
        cmd += ["--prompts", args.prompts]
    for ea in args.engine_arg:
        cmd += ["--engine-arg", ea]
    env = dict(os.environ)
    for key, value in graph_env().items():  # the graph's engine environment (this process's values win)
        env.setdefault(key, value)
    print(f"[compare] (a) engine: {' '.join(cmd[2:])}", flush=True)
    with open(out / "engine.log", "w") as log:
        proc = subprocess.run(cmd, cwd=str(REPO), env=env, stdout=log, stderr=subprocess.STDOUT,
                              timeout=args.timeout)
    if proc.returncode != 0 or not rec_file.exists():
        raise RuntimeError(f"engine benchmark failed (exit {proc.returncode}); see {out / 'engine.log'}")
    data = json.loads(rec_file.read_text())
    levels_out = {}
    for c, lv in data["levels"].items():
        recs = [RequestRecord.from_dict(r) for r in lv["records"]]
        levels_out[c] = summarize(recs, lv["wall_s"])
    return {"startup_s": data["startup_s"], "engine_args": data["engine_args"], "levels": levels_out}


# --- (b), (c) over HTTP --------------------------------------------------------------------

async def measure_http(base_url: str, label: str, args, levels: list[int], prompts: list[str]) -> dict[str, Any]:
    from loadtest.client import closed_loop, generate_payload, http_client, stream_generate

    url = f"{base_url}/generate"
    ignore_eos = True
    notes = []
    async with http_client(max(levels)) as client:
        probe = await stream_generate(client, url, generate_payload(prompts[0], args.max_tokens, ignore_eos=True))
        if not probe.success and ("HTTP 4" in probe.error):
            ignore_eos = False
            notes.append(f"{label}: /generate refused ignore_eos ({probe.error[:120]}); sent without it")
        for i in range(args.warmup):
            await stream_generate(client, url, generate_payload(prompts[i % len(prompts)], args.max_tokens,
                                                                ignore_eos=ignore_eos))
        out: dict[str, Any] = {}
        for c in levels:
            n = requests_for(c, args.requests_per_level)

            async def make(i: int, c=c):
                return await stream_generate(client, url, generate_payload(
                    prompts[i % len(prompts)], args.max_tokens, ignore_eos=ignore_eos), users=c)

            records, wall = await closed_loop(make, c, n)
            out[str(c)] = summarize(records, wall)
            s = out[str(c)]
            print(f"[compare] ({label}) c={c}: {s['completed']}/{n} ok, {s['output_throughput']:.1f} tok/s, "
                  f"TTFT p50 {s['ttft_ms']['p50']:.1f} ms", flush=True)
    return {"levels": out, "ignore_eos": ignore_eos, "notes": notes}


@contextlib.contextmanager
def seed_server(model: str, log_path: Path, env: dict[str, str] | None = None):
    """Run ``loadtest.seed_server`` on a free port as its own process; yields (url, process)."""
    port = free_port()
    cmd = [sys.executable, "-m", "loadtest.seed_server", "--model", model, "--port", str(port)]
    log = open(log_path, "w")
    proc = subprocess.Popen(cmd, cwd=str(REPO), env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        yield f"http://127.0.0.1:{port}", proc
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()


def graph_args(model: str) -> dict[str, Any]:
    """serve_config.yaml's application args, serving only its first model, from ``model``."""
    from rrr_ray.serving.launch import load_app_args

    app = load_app_args()
    first = dict(app["models"][0])
    first["path"] = model
    app["models"] = [first]
    app["default_model"] = first["name"]
    return app


def graph_env() -> dict[str, str]:
    """serve_config.yaml's ``runtime_env.env_vars``: (a) and (b) run their engines with them."""
    from rrr_ray.serving.launch import load_app_env

    try:
        return load_app_env()
    except (OSError, ValueError):
        return {}


def engine_args_from_graph(app: dict[str, Any]) -> list[str]:
    """The graph's engine settings as ``--engine-arg`` pairs for (a), so both run the same engine."""
    m = app["models"][0]
    pairs = {k: m[k] for k in ("dtype", "max_model_len", "max_num_seqs", "enforce_eager") if k in m}
    pairs.update(m.get("engine_kwargs") or {})
    return [f"{k}={json.dumps(v)}" for k, v in pairs.items()]


@contextlib.contextmanager
def serve_graph(args):
    """The rrr-ray graph: ``--serve-url`` as given, else started in-process with
    ``rrr_ray.serving.launch.start_graph`` (serve_config.yaml's first model, pointed at ``--model``)."""
    if args.serve_url:
        yield args.serve_url.rstrip("/")
        return
    from rrr_ray.serving.launch import start_graph, stop_graph

    app = graph_args(args.model)
    for kv in args.graph_arg:
        k, _, v = kv.partition("=")
        try:
            app[k] = json.loads(v)
        except json.JSONDecodeError:
            app[k] = v
    print(f"[compare] (b) starting the graph: {json.dumps(app)}", flush=True)
    try:
        url = start_graph(app, timeout_s=args.timeout, env=graph_env())
    except Exception as exc:
        with contextlib.suppress(Exception):
            stop_graph()
        raise RuntimeError(f"the graph did not start: {type(exc).__name__}: {exc}") from exc
    try:
        yield url.rstrip("/")
    finally:
        stop_graph()


# --- the report ------------------------------------------------------------------------------

def _get(systems, name, c, *path):
    v = systems.get(name, {}).get("levels", {}).get(str(c))
    for p in path:
        if v is None:
            return None
        v = v.get(p)
    return v


def ratios(systems: dict[str, Any], levels: list[int]) -> dict[str, Any]:
    lo, hi = min(levels), max(levels)

    def div(x, y):
        return x / y if x is not None and y else None

    def sub(x, y):
        return x - y if x is not None and y is not None else None

    tput = lambda s, c: _get(systems, s, c, "output_throughput")  # noqa: E731
    ttft = lambda s, c: _get(systems, s, c, "ttft_ms", "p50")  # noqa: E731
    out = {
        "throughput_ratio_vs_engine_c16": div(tput("serve", 16), tput("engine", 16)),
        "ttft_overhead_ms_p50_c1": sub(ttft("serve", 1), ttft("engine", 1)),
        "throughput_ratio_vs_seed_c16": div(tput("serve", 16), tput("seed", 16)),
        "seed_ratio_vs_engine_c16": div(tput("seed", 16), tput("engine", 16)),
    }
    for c in levels:
        out[f"throughput_ratio_vs_engine_c{c}"] = div(tput("serve", c), tput("engine", c))
        out[f"throughput_ratio_vs_seed_c{c}"] = div(tput("serve", c), tput("seed", c))
        out[f"seed_ratio_vs_engine_c{c}"] = div(tput("seed", c), tput("engine", c))
        out[f"ttft_overhead_ms_p50_c{c}"] = sub(ttft("serve", c), ttft("engine", c))
    out["levels_used"] = {"low": lo, "high": hi}
    return out


def median_round(rounds: list[dict[str, Any]], levels: list[int]) -> int:
    """Index of the round with the median b/a throughput at the highest level (the lower median for
    an even count, so the report never rounds up); 0 when no round has both systems."""
    key = f"throughput_ratio_vs_engine_c{max(levels)}"
    scored = sorted((r[key], i) for i, r in ((i, ratios(rs, levels)) for i, rs in enumerate(rounds))
                    if r[key] is not None)
    return scored[(len(scored) - 1) // 2][1] if scored else 0


def check_targets(r: dict[str, Any]) -> dict[str, Any]:
    res = {}
    for k, (op, bound) in TARGETS.items():
        v = r.get(k)
        res[k] = {"target": f"{op} {bound}", "value": v,
                  "ok": None if v is None else (v >= bound if op == ">=" else v <= bound)}
    return res


def table(systems: dict[str, Any], levels: list[int]) -> str:
    head = f"{'system':<8}{'c':>4}{'ok':>5}{'tok/s':>10}{'req/s':>8}{'TTFT p50':>10}{'TTFT p99':>10}" \
           f"{'TPOT p50':>10}{'ITL p50':>9}{'E2EL p50':>10}"
    lines = [head, "-" * len(head)]
    for name in ("engine", "serve", "seed"):
        for c in levels:
            s = systems.get(name, {}).get("levels", {}).get(str(c))
            if not s:
                continue
            lines.append(f"{name:<8}{c:>4}{s['completed']:>5}{s['output_throughput']:>10.1f}"
                         f"{s['request_throughput']:>8.2f}{s['ttft_ms']['p50']:>10.1f}{s['ttft_ms']['p99']:>10.1f}"
                         f"{s['tpot_ms']['p50']:>10.2f}{s['itl_ms']['p50']:>9.2f}{s['e2el_ms']['p50']:>10.0f}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    from loadtest.client import load_prompts, wait_healthy

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="models/rrr-tiny")
    ap.add_argument("--output", default="out/compare")
    ap.add_argument("--concurrency", default="1,4,16")
    ap.add_argument("--requests-per-level", type=int, default=None, help="default max(8, 2*concurrency)")
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--prompts", default=None)
    ap.add_argument("--warmup", type=int, default=2, help="unmeasured requests per system before measuring")
    ap.add_argument("--skip", default="", help="systems to skip, e.g. b or a,c (a engine, b serve, c seed)")
    ap.add_argument("--serve-url", default=None, help="base URL of a running rrr-ray graph serving --model")
    ap.add_argument("--engine-arg", action="append", default=[],
                    help="AsyncEngineArgs key=value for (a) (default: the graph's settings from serve_config.yaml)")
    ap.add_argument("--graph-arg", action="append", default=[],
                    help="override an app arg of the graph started for (b), e.g. stream_interval_ms=0")
    ap.add_argument("--timeout", type=float, default=1800, help="seconds allowed to each system")
    ap.add_argument("--rounds", type=int, default=1,
                    help="run (a) then (b) this many times, back to back; the report's figures are the round "
                         "with the median b/a at the highest level, and every round is listed (the machine drifts)")
    args = ap.parse_args(argv)
    if args.rounds < 1:
        print("error: --rounds must be at least 1", file=sys.stderr)
        return 2
    if not Path(args.model).exists():
        print(f"error: no model at {args.model}", file=sys.stderr)
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
            args.engine_arg = engine_args_from_graph(graph_args(args.model))
        except (ImportError, OSError, ValueError, KeyError) as exc:
            print(f"[compare] serve_config.yaml not usable ({exc}); engine defaults for (a)", file=sys.stderr)
    systems: dict[str, Any] = {}
    errors: dict[str, str] = {}
    t_start = time.time()
    rounds: list[dict[str, Any]] = []
    for i in range(args.rounds):
        here: dict[str, Any] = {}
        rdir = out if args.rounds == 1 else out / f"round{i + 1}"
        rdir.mkdir(parents=True, exist_ok=True)
        tag = "" if args.rounds == 1 else f" (round {i + 1})"
        if "a" not in skip:
            try:
                here["engine"] = run_engine(args, levels, rdir)
            except (RuntimeError, subprocess.TimeoutExpired) as exc:
                errors["engine" + tag] = str(exc)
        if "b" not in skip:
            try:
                with serve_graph(args) as url:
                    asyncio.run(wait_healthy(url, timeout=60))
                    here["serve"] = {"url": url, **asyncio.run(measure_http(url, "serve", args, levels, prompts))}
            except (RuntimeError, TimeoutError, OSError, ImportError) as exc:
                errors["serve" + tag] = str(exc)
        rounds.append(here)
    picked = median_round(rounds, levels)
    systems.update(rounds[picked])
    if "c" not in skip:
        try:
            with seed_server(args.model, out / "seed_server.log") as (url, proc):
                asyncio.run(wait_healthy(url, timeout=180, proc=proc))
                systems["seed"] = {"url": url, **asyncio.run(measure_http(url, "seed", args, levels, prompts))}
        except (RuntimeError, TimeoutError, OSError) as exc:
            errors["seed"] = str(exc)

    r = ratios(systems, levels)
    report = {
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "wall_s": time.time() - t_start,
        "config": {"model": args.model, "concurrency": levels, "max_tokens": args.max_tokens,
                   "requests_per_level": {str(c): requests_for(c, args.requests_per_level) for c in levels},
                   "temperature": 0.0, "ignore_eos": True, "prompts": args.prompts or str(HERE / "prompts.txt"),
                   "endpoint_b_c": "/generate (NDJSON stream)", "cpus": os.cpu_count(),
                   "engine_env": {k: os.environ.get(k, v) for k, v in graph_env().items() if k.startswith("RRR_")}},
        **{k: r[k] for k in ("throughput_ratio_vs_engine_c16", "ttft_overhead_ms_p50_c1",
                             "throughput_ratio_vs_seed_c16", "seed_ratio_vs_engine_c16")},
        "ratios": r,
        "targets": check_targets(r),
        "rounds": [{"round": i + 1, "picked": i == picked, "ratios": ratios(rs, levels),
                    "output_throughput": {name: {c: v["output_throughput"] for c, v in sys_["levels"].items()}
                                          for name, sys_ in rs.items()}} for i, rs in enumerate(rounds)],
        "systems": systems,
        "errors": errors,
    }
    (out / "compare.json").write_text(json.dumps(report, indent=2))
    print(table(systems, levels))
    for k in ("throughput_ratio_vs_engine_c16", "ttft_overhead_ms_p50_c1", "throughput_ratio_vs_seed_c16",
              "seed_ratio_vs_engine_c16"):
        v = report[k]
        print(f"{k}: {'n/a' if v is None else f'{v:.3f}'}")
    for name, e in errors.items():
        print(f"[compare] {name} failed: {e}", file=sys.stderr)
    print(f"[compare] wrote {out / 'compare.json'}")
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
