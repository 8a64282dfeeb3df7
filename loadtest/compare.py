"""Side-by-side benchmark, one run, same model and prompts: engine vs rrr-ray graph vs seed-style server.

    python -m loadtest.compare --model models/rrr-tiny --rounds 5 --output out/compare [--serve-url URL]

Systems, all with the same chat prompts, greedy decoding and a fixed ``--max-tokens`` with
``ignore_eos`` so that every request yields the same number of tokens, each level a closed loop
(N clients issue requests back to back, as ``vllm bench serve --max-concurrency``):

* **a / engine**: vLLM ``AsyncLLM`` in-process (:mod:`loadtest.engine_bench --interactive`, a
  subprocess that keeps its engine up): the limit;
* **b / serve**: the rrr-ray Serve graph over HTTP, streaming ``POST /generate`` (NDJSON). Given by
  ``--serve-url`` of a running graph, else started with ``deployments.launch``;
* **c / seed**: :mod:`loadtest.seed_server` (FastAPI + transformers ``generate`` +
  ``TextIteratorStreamer``, as the seed's ``simple_api.py``), its own process on a free port.

(a) and (b) are up together and measured in pairs: every round runs each level on (a) and on (b)
back to back, seconds apart, (a) first in odd rounds and (b) first in even ones, so that the
machine's drift (large on shared cores) falls on both sides of each ratio. Only one of them works
at a time; the other idles (on a single GPU, give each half the memory, or run them apart with
``--skip``). Each block starts with ``c`` unmeasured requests (connections open, engine warm) and
runs ``max(96, 40 c)`` measured requests unless ``--requests-per-level`` says otherwise, so that
the ramp-up and the tail of a closed loop weigh little against its steady state. (c) runs once,
alone, afterwards (at most 96 requests per level: it is slow).

``--placements deployment,ingress`` measures the graph's two shapes one after the other, each
paired with the same (a): every stage in a deployment of its own (ingress -> post-processor ->
model, two Ray hops each way), and every stage inside the ingress replica.

Writes ``compare.json``: per shape (``shapes``; the first shape's figures also at the top level)
``throughput_ratio_vs_engine_c16`` and ``_c64`` (b/a output tok/s), ``ttft_overhead_ms_p50_c1``
(b minus a, TTFT p50 at 1), ``ttft_ratio_vs_engine_c16`` (b/a TTFT p50), ``throughput_ratio_vs_seed_c16``
(b/c), from the round with the median b/a at the highest level, every round's figures, the
targets (``TARGETS``) and whether they hold, and every system's full
:func:`loadtest.metrics.summarize` per level, with, for (b), where its TTFT went
(``ttft_breakdown_ms``: HTTP, Ray hops and post-processing, model stage); prints a table per shape.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import queue
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, Optional

from loadtest.engine_bench import requests_for
from loadtest.metrics import RequestRecord, median_index, summarize
from deployments.launch import free_port

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
SYSTEMS = {"a": "engine", "b": "serve", "c": "seed"}
TARGETS = {
    "throughput_ratio_vs_engine_c16": (">=", 0.95),
    "throughput_ratio_vs_engine_c64": (">=", 0.95),
    "ttft_overhead_ms_p50_c1": ("<=", 10.0),
    "ttft_ratio_vs_engine_c16": ("<=", 1.5),
    "throughput_ratio_vs_seed_c16": (">=", 5.0),
}
"""The graph against the engine (b/a) and the seed (b/c); a level that was not measured is not judged."""
PLACEMENTS = ("deployment", "ingress")
"""The graph's shapes: every stage in a deployment of its own (ingress -> post-processor -> model,
two Ray hops), or every stage inside the ingress replica (no Ray hop)."""


SEED_MAX_REQUESTS = 96  # (c) decodes one request at a time per thread: keep its levels short


def seed_requests_for(c: int, per_level: int | None) -> int:
    """Measured requests of (c) at concurrency ``c``: as (a) and (b), at most ``SEED_MAX_REQUESTS``."""
    return min(requests_for(c, per_level), SEED_MAX_REQUESTS)


# --- (a) the engine ------------------------------------------------------------------------

class EngineProcess:
    """System (a): ``loadtest.engine_bench --interactive`` in a subprocess, one level per call.

    Its stdout carries the engine's logs (copied to ``log_path``) and, marked, the replies."""

    def __init__(self, cmd: list[str], env: dict[str, str], log_path: Path, timeout: float) -> None:
        from loadtest.engine_bench import REPLY

        self.reply_prefix = REPLY
        self.timeout = timeout
        self.log_path = log_path
        self.log = open(log_path, "w")
        self.proc = subprocess.Popen(cmd, cwd=str(REPO), env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=subprocess.STDOUT, text=True, bufsize=1)
        self.lines: queue.Queue[str | None] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()
        try:
            self.startup_s = self._reply()["startup_s"]
        except RuntimeError:
            self.close()
            raise

    @classmethod
    def start(cls, args, out: Path) -> "EngineProcess":
        cmd = [sys.executable, "-m", "loadtest.engine_bench", "--interactive", "--model", args.model,
               "--max-tokens", str(args.max_tokens), "--warmup", str(args.warmup)]
        if args.prompts:
            cmd += ["--prompts", args.prompts]
        for ea in args.engine_arg:
            cmd += ["--engine-arg", ea]
        env = dict(os.environ)
        for key, value in graph_env(args.config).items():  # the graph's engine environment (ours win)
            env.setdefault(key, value)
        print(f"[compare] (a) engine: {' '.join(cmd[2:])}", flush=True)
        return cls(cmd, env, out / "engine.log", args.timeout)

    def _read(self) -> None:
        for line in self.proc.stdout:
            self.lines.put(line)
        self.lines.put(None)

    def _reply(self) -> dict[str, Any]:
        deadline = time.monotonic() + self.timeout
        while True:
            try:
                line = self.lines.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                raise RuntimeError(f"engine benchmark silent for {self.timeout:.0f} s; see {self.log_path}") from None
            if line is None:
                raise RuntimeError(f"engine benchmark exited ({self.proc.wait()}); see {self.log_path}")
            if line.startswith(self.reply_prefix):
                return json.loads(line[len(self.reply_prefix):])
            self.log.write(line)

    def level(self, c: int, n: int, warmup: int, **options: Any) -> dict[str, Any]:
        """One level; ``options`` are the command's optional fields (``seeded``, ``temperature``)."""
        self.proc.stdin.write(json.dumps({"concurrency": c, "requests": n, "warmup": warmup, **options}) + "\n")
        self.proc.stdin.flush()
        data = self._reply()
        summary = summarize([RequestRecord.from_dict(r) for r in data["records"]], data["wall_s"])
        print(f"[compare] (engine) c={c}: {summary['completed']}/{n} ok, {summary['output_throughput']:.1f} tok/s, "
              f"TTFT p50 {summary['ttft_ms']['p50']:.1f} ms", flush=True)
        return summary

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.proc.stdin.close()
        try:
            self.proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        if self.log.closed:
            return
        with contextlib.suppress(queue.Empty):  # the engine's last log lines (the reader may still be adding)
            while (line := self.lines.get(timeout=1.0)) is not None:
                self.log.write(line)
        self.log.close()


# --- (b), (c) over HTTP --------------------------------------------------------------------

async def probe_ignore_eos(base_url: str, label: str, args, prompts: list[str]) -> tuple[bool, list[str]]:
    """Whether ``/generate`` takes ``ignore_eos`` (the seed-style server may refuse unknown fields)."""
    from loadtest.client import generate_payload, http_client, stream_generate

    async with http_client(1) as client:
        probe = await stream_generate(client, f"{base_url}/generate",
                                      generate_payload(prompts[0], args.max_tokens, ignore_eos=True))
    if not probe.success and "HTTP 4" in probe.error:
        return False, [f"{label}: /generate refused ignore_eos ({probe.error[:120]}); sent without it"]
    return True, []


async def measure_http_level(base_url: str, label: str, args, c: int, n: int, warmup: int, prompts: list[str],
                             ignore_eos: bool) -> dict[str, Any]:
    """One level over HTTP: ``warmup`` unmeasured requests at concurrency ``c`` (connections opened),
    then ``n`` measured ones."""
    from loadtest.client import closed_loop, generate_payload, http_client, stream_generate

    url = f"{base_url}/generate"
    async with http_client(c) as client:
        async def make(i: int):
            return await stream_generate(client, url, generate_payload(
                prompts[i % len(prompts)], args.max_tokens, ignore_eos=ignore_eos), users=c)

        if warmup:
            await closed_loop(make, c, warmup)
        records, wall = await closed_loop(make, c, n)
    s = summarize(records, wall)
    print(f"[compare] ({label}) c={c}: {s['completed']}/{n} ok, {s['output_throughput']:.1f} tok/s, "
          f"TTFT p50 {s['ttft_ms']['p50']:.1f} ms", flush=True)
    return s


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


def graph_args(model: str, config: Optional[str] = None, placement: Optional[str] = None) -> dict[str, Any]:
    """The application args of ``config`` (default serve_config.tiny.yaml), serving only its first model,
    from ``model``; ``placement`` (one of ``PLACEMENTS``) gives the post-processor and the model
    that placement instead of the config's."""
    from deployments.launch import TINY_CONFIG
    from rrr_ray.serving.config import load_app_args

    app = load_app_args(Path(config or TINY_CONFIG))
    first = dict(app["models"][0])
    first["path"] = model
    if placement is not None:
        first["placement"] = placement
        app["postprocessor"] = {**app.get("postprocessor", {}), "placement": placement}
    app["models"] = [first]
    app["default_model"] = first["name"]
    return app


def graph_env(config: Optional[str] = None) -> dict[str, str]:
    """The config's ``runtime_env.env_vars`` (default serve_config.tiny.yaml): (a) and (b) run their engines
    with them."""
    from deployments.launch import TINY_CONFIG
    from rrr_ray.serving.config import load_app_env

    try:
        return load_app_env(Path(config or TINY_CONFIG))
    except (OSError, ValueError):
        return {}


def engine_kwargs_from_graph(app: dict[str, Any]) -> dict[str, Any]:
    """The engine settings of the graph's first model (``EngineConfig.vllm_engine_args``, which the
    graph's engine uses, less the model's path and name)."""
    from rrr_ray.serving.engine import EngineConfig

    fields = {k: v for k, v in app["models"][0].items() if k in EngineConfig.model_fields}
    kwargs = EngineConfig(**fields).vllm_engine_args()
    for own in ("model", "served_model_name"):
        kwargs.pop(own)
    return kwargs


def engine_args_from_graph(app: dict[str, Any]) -> list[str]:
    """The graph's engine settings as ``--engine-arg`` pairs for (a), so both run the same engine."""
    return [f"{k}={json.dumps(v)}" for k, v in engine_kwargs_from_graph(app).items()]


@contextlib.contextmanager
def serve_graph(args, placement: Optional[str] = None):
    """The rrr-ray graph: ``--serve-url`` as given, else started in-process with
    ``deployments.launch.start_graph`` (the config's first model, pointed at ``--model``, in
    ``placement``)."""
    if args.serve_url:
        yield args.serve_url.rstrip("/")
        return
    from deployments.launch import start_graph, stop_graph

    app = graph_args(args.model, args.config, placement)
    for kv in args.graph_arg:
        k, _, v = kv.partition("=")
        try:
            app[k] = json.loads(v)
        except json.JSONDecodeError:
            app[k] = v
    print(f"[compare] (b) starting the graph: {json.dumps(app)}", flush=True)
    try:
        url = start_graph(app, timeout_s=args.timeout, env=graph_env(args.config))
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
    out = {}
    for c in sorted({*levels, 1, 16, 64}):
        out[f"throughput_ratio_vs_engine_c{c}"] = div(tput("serve", c), tput("engine", c))
        out[f"throughput_ratio_vs_seed_c{c}"] = div(tput("serve", c), tput("seed", c))
        out[f"seed_ratio_vs_engine_c{c}"] = div(tput("seed", c), tput("engine", c))
        out[f"ttft_overhead_ms_p50_c{c}"] = sub(ttft("serve", c), ttft("engine", c))
        out[f"ttft_ratio_vs_engine_c{c}"] = div(ttft("serve", c), ttft("engine", c))
    out["levels_used"] = {"low": lo, "high": hi}
    return out


def median_round(rounds: list[dict[str, Any]], levels: list[int]) -> int:
    """Index of the round with the median b/a throughput at the highest level (``median_index``)."""
    key = f"throughput_ratio_vs_engine_c{max(levels)}"
    return median_index([ratios(rs, levels)[key] for rs in rounds])


def check_targets(r: dict[str, Any]) -> dict[str, Any]:
    """Each target with its value and ``ok`` (None where its level was not measured)."""
    res = {}
    for k, (op, bound) in TARGETS.items():
        v = r.get(k)
        res[k] = {"target": f"{op} {bound}", "value": v,
                  "ok": None if v is None else (v >= bound if op == ">=" else v <= bound)}
    return res


def table(systems: dict[str, Any], levels: list[int]) -> str:
    """One line per system and level; the graph's lines end with where its TTFT p50 went
    (``loadtest.metrics.ttft_breakdown``: HTTP / Ray hops and post-processing / model stage)."""
    head = f"{'system':<8}{'c':>4}{'ok':>5}{'tok/s':>10}{'req/s':>8}{'TTFT p50':>10}{'TTFT p99':>10}" \
           f"{'TPOT p50':>10}{'ITL p50':>9}{'E2EL p50':>10}  TTFT p50 http / graph / model"
    lines = [head, "-" * len(head)]
    for name in ("engine", "serve", "seed"):
        for c in levels:
            s = systems.get(name, {}).get("levels", {}).get(str(c))
            if not s:
                continue
            b = s.get("ttft_breakdown_ms")
            split = "" if not b else f"  {b['http']['p50']:.1f} / {b['graph']['p50']:.1f} / {b['model']['p50']:.1f}"
            lines.append(f"{name:<8}{c:>4}{s['completed']:>5}{s['output_throughput']:>10.1f}"
                         f"{s['request_throughput']:>8.2f}{s['ttft_ms']['p50']:>10.1f}{s['ttft_ms']['p99']:>10.1f}"
                         f"{s['tpot_ms']['p50']:>10.2f}{s['itl_ms']['p50']:>9.2f}{s['e2el_ms']['p50']:>10.0f}{split}")
    return "\n".join(lines)


HEADLINE = ("throughput_ratio_vs_engine_c16", "throughput_ratio_vs_engine_c64", "ttft_overhead_ms_p50_c1",
            "ttft_ratio_vs_engine_c16", "throughput_ratio_vs_seed_c16", "seed_ratio_vs_engine_c16")


def run_rounds(blocks: dict[str, Any], levels: list[int], args, errors: dict[str, str],
               label: str) -> list[dict[str, Any]]:
    """``--rounds`` paired rounds of every level on each system of ``blocks`` (name -> function(c, n,
    warmup)), back to back, the order reversed every other round."""
    rounds: list[dict[str, Any]] = [{} for _ in range(args.rounds)]
    for i, here in enumerate(rounds):
        print(f"[compare] {label}: round {i + 1} of {args.rounds}", flush=True)
        for c in levels:
            order = list(blocks) if i % 2 == 0 else list(reversed(blocks))
            for name in order:
                time.sleep(args.settle_s)
                try:
                    level = blocks[name](c, requests_for(c, args.requests_per_level), c)
                except (RuntimeError, OSError) as exc:
                    errors[f"{name} ({label}, round {i + 1}, c={c})"] = str(exc)
                    continue
                here.setdefault(name, {"levels": {}})["levels"][str(c)] = level
    return rounds


def shape_report(rounds: list[dict[str, Any]], meta: dict[str, dict[str, Any]], levels: list[int],
                 seed: Optional[dict[str, Any]]) -> dict[str, Any]:
    """One shape's figures: those of the round with the median b/a at the highest level, and every round's."""
    picked = median_round(rounds, levels)
    systems = {name: {**meta.get(name, {}), **sys_} for name, sys_ in rounds[picked].items()}
    if seed is not None:
        systems["seed"] = seed
    r = ratios(systems, levels)
    return {
        **{k: r[k] for k in HEADLINE},
        "ratios": r,
        "targets": check_targets(r),
        "rounds": [{"round": i + 1, "picked": i == picked, "ratios": ratios(rs, levels),
                    "output_throughput": {name: {c: v["output_throughput"] for c, v in sys_["levels"].items()}
                                          for name, sys_ in rs.items()},
                    "ttft_p50_ms": {name: {c: v["ttft_ms"]["p50"] for c, v in sys_["levels"].items()}
                                    for name, sys_ in rs.items()}} for i, rs in enumerate(rounds)],
        "systems": systems,
    }


def main(argv: list[str] | None = None) -> int:
    from loadtest.client import load_prompts, wait_healthy

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
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
    args = ap.parse_args(argv)
    if args.rounds < 1:
        print("error: --rounds must be at least 1", file=sys.stderr)
        return 2
    if not Path(args.model).exists():
        print(f"error: no model at {args.model}", file=sys.stderr)
        return 2
    placements: list[Optional[str]] = [None]
    if args.placements:
        placements = [p.strip() for p in args.placements.split(",") if p.strip()]
        unknown = [p for p in placements if p not in PLACEMENTS]
        if unknown or not placements:
            print(f"error: --placements takes {', '.join(PLACEMENTS)}, not {args.placements!r}", file=sys.stderr)
            return 2
        if args.serve_url:
            print("error: --placements starts each shape itself; not with --serve-url", file=sys.stderr)
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
    shape_rounds: dict[str, tuple[list[dict[str, Any]], dict[str, dict[str, Any]]]] = {}
    with contextlib.ExitStack() as stack:
        engine_block: dict[str, Any] = {}
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
    seed = None
    if "c" not in skip:
        try:
            with seed_server(args.model, out / "seed_server.log") as (url, proc):
                asyncio.run(wait_healthy(url, timeout=180, proc=proc))
                ignore_eos, notes = asyncio.run(probe_ignore_eos(url, "seed", args, prompts))
                seed_levels = {}
                for c in levels:
                    n = seed_requests_for(c, args.requests_per_level)
                    seed_levels[str(c)] = asyncio.run(
                        measure_http_level(url, "seed", args, c, n, args.warmup, prompts, ignore_eos))
                seed = {"url": url, "levels": seed_levels, "ignore_eos": ignore_eos, "notes": notes}
        except (RuntimeError, TimeoutError, OSError) as exc:
            errors["seed"] = str(exc)

    shapes = {label: shape_report(rounds, meta, levels, seed) for label, (rounds, meta) in shape_rounds.items()}
    first = shapes[next(iter(shapes))]
    report = {
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "wall_s": time.time() - t_start,
        "config": {"model": args.model, "concurrency": levels, "max_tokens": args.max_tokens,
                   "requests_per_level": {str(c): requests_for(c, args.requests_per_level) for c in levels},
                   "seed_requests_per_level": {str(c): seed_requests_for(c, args.requests_per_level)
                                               for c in levels},
                   "rounds": args.rounds, "schedule": "paired: each level on (a) and (b) back to back, "
                                                     "(a) first in odd rounds, (b) first in even ones; "
                                                     "the shapes one after the other, with the same (a)",
                   "placements": list(shapes), "argv": sys.argv[1:] if argv is None else argv,
                   "temperature": 0.0, "ignore_eos": True, "prompts": args.prompts or str(HERE / "prompts.txt"),
                   "endpoint_b_c": "/generate (NDJSON stream)", "cpus": os.cpu_count(),
                   "serve_config": args.config or "serve_config.tiny.yaml",
                   "engine_env": {k: os.environ.get(k, v) for k, v in graph_env(args.config).items()
                                  if k.startswith("RRR_")}},
        **{k: first[k] for k in HEADLINE},  # the first shape's: the config's own, or the first of --placements
        **{k: first[k] for k in ("ratios", "targets", "rounds", "systems")},
        "shapes": shapes,
        "errors": errors,
    }
    (out / "compare.json").write_text(json.dumps(report, indent=2))
    for label, shape in shapes.items():
        print(f"\n[compare] shape: {label} (median round of {args.rounds})")
        print(table(shape["systems"], levels))
        for k in HEADLINE:
            v = shape[k]
            rounds_v = " / ".join("n/a" if (x := rd["ratios"].get(k)) is None else f"{x:.3f}" for rd in shape["rounds"])
            print(f"{k}: {'n/a' if v is None else f'{v:.3f}'}   (rounds: {rounds_v})")
    for name, e in errors.items():
        print(f"[compare] {name} failed: {e}", file=sys.stderr)
    print(f"[compare] wrote {out / 'compare.json'}")
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
