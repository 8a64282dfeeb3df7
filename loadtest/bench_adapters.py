"""LoRA adapters on demand, measured: load time, throughput with adapters mixed, routing by adapter.

    python -m loadtest.bench_adapters --rounds 3 --output out/adapters

On rrr-tiny (``--model``) with a LoRA adapter (``--adapter``; default: one made here with peft,
rank ``--rank`` on the seven projections, random weights: the cost of a LoRA does not depend on its
values), copied under four names into a served folder, and the adapter merged into the model.

Part 1, one ``serve run`` with three applications (every stage in the ingress replica, engines
pinned as serve_config.tiny.yaml says): ``base`` (rrr-tiny, no LoRA), ``merged`` (the adapter
merged in) and ``lora`` (rrr-tiny with adapters on demand). Each round, in turn (the order reversed
every other round): closed loops of ``--concurrency`` streaming /generate clients (greedy,
``--max-tokens`` with ignore_eos) on the base, the merged model, the LoRA engine's base, and 1, 2 and
4 adapters mixed (request i names adapter i mod k); then a cold adapter's first request (unloaded
just before) and the same adapter's next one (warm), one client.

Part 2, a second ``serve run``: ``mux`` and ``nomux``, rrr-tiny in a model deployment of two
replicas, ``max_cpu_loras: 2`` each (the four adapters fit in the two replicas together, not in
one), with and without Serve model multiplexing. Each round, per application: ``--requests``
requests at ``--concurrency``, each naming one of the four adapters at random (seeded); the share
whose replica held its adapter already (``metadata.adapter_load_seconds == 0``).

Writes ``adapters.json`` (every round, and the medians) and prints the tables.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Optional

import psutil
import yaml

from loadtest.client import all_healthy, stop_serve_run
from rrr_ray.paths import REPO
from rrr_ray.serving.derived import graph_args, graph_env

ADAPTERS = ("a1", "a2", "a3", "a4")
PROJECTIONS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def make_adapter(model: str, out: Path, rank: int) -> Path:
    """A LoRA adapter on ``model`` with random weights (B not zero, so it changes the output)."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    peft_model = get_peft_model(AutoModelForCausalLM.from_pretrained(model), LoraConfig(
        r=rank, lora_alpha=rank, target_modules=PROJECTIONS, init_lora_weights=False, task_type="CAUSAL_LM"))
    peft_model.save_pretrained(str(out))
    return out


def prepare(args, work: Path) -> tuple[Path, Path]:
    """The served adapter folder (four names) and the merged model."""
    from rrr_ray.training.merge import merge_adapter, set_adapter_base
    from rrr_ray.training.publish import publish_adapter

    model = str((REPO / args.model).resolve())
    adapter = Path(args.adapter) if args.adapter else make_adapter(model, work / "adapter", args.rank)
    folder = work / "served"
    for name in ADAPTERS:
        set_adapter_base(publish_adapter(adapter, folder, name), model)
    merged = merge_adapter(model, adapter, work / "merged", "float32")
    return folder, Path(merged)


def app(name: str, model: str, config: Optional[str], placement: str, **model_changes) -> dict[str, Any]:
    args = graph_args(model, config, placement)
    args["models"][0].update(model_changes)
    return {"name": name, "route_prefix": f"/{name}", "import_path": "deployments.app:build_app",
            "runtime_env": {"env_vars": graph_env(config)}, "args": {**args, "runtime_adapters": "on"}}


def part1_config(args, folder: Path, merged: Path, port: int) -> dict[str, Any]:
    adapters = {"folders": [str(folder)], "max_loras": 4, "max_cpu_loras": 4}
    apps = [app("base", args.model, args.config, "ingress"), app("merged", str(merged), args.config, "ingress"),
            app("lora", args.model, args.config, "ingress", adapters=adapters, max_lora_rank=max(16, args.rank))]
    return {"proxy_location": "HeadOnly", "http_options": {"host": "127.0.0.1", "port": port}, "applications": apps}


def part2_config(args, folder: Path, port: int) -> dict[str, Any]:
    def two_replicas(name: str, multiplexed: bool) -> dict[str, Any]:
        return app(name, args.model, args.config, "deployment", max_lora_rank=max(16, args.rank),
                   adapters={"folders": [str(folder)], "max_loras": 2, "max_cpu_loras": 2, "multiplexed": multiplexed},
                   deployment={"num_cpus": 0.05, "num_replicas": 2, "max_ongoing_requests": 64})

    apps = [two_replicas("mux", True), two_replicas("nomux", False)]
    for a in apps:
        a["args"]["postprocessor"] = {**a["args"].get("postprocessor", {}), "placement": "ingress"}
    return {"proxy_location": "HeadOnly", "http_options": {"host": "127.0.0.1", "port": port}, "applications": apps}


# -- measuring --------------------------------------------------------------------------------------

async def level(url: str, models: list[Optional[str]], args, prompts: list[str]) -> dict[str, Any]:
    """A closed loop of ``--concurrency`` streams, request i naming ``models[i % len(models)]``."""
    from loadtest.client import closed_loop, generate_payload, http_client, stream_generate
    from loadtest.metrics import summarize

    c = args.concurrency
    async with http_client(c) as client:
        async def make(i: int):
            return await stream_generate(client, f"{url}/generate", generate_payload(
                prompts[i % len(prompts)], args.max_tokens, ignore_eos=True, model=models[i % len(models)]), users=c)

        await closed_loop(make, c, c)  # warm-up: connections opened, adapters loaded
        records, wall = await closed_loop(make, c, args.requests)
    s = summarize(records, wall)
    return {"output_tok_s": round(s["output_throughput"], 1), "ttft_ms_p50": round(s["ttft_ms"]["p50"], 1),
            "failed": args.requests - s["completed"]}


async def one(client: Any, url: str, model: str, prompt: str, max_tokens: int) -> dict[str, Any]:
    """A /generate request (not streamed): its status, wall time and metadata."""
    started = time.perf_counter()
    r = await client.post(f"{url}/generate", json={"prompt": prompt, "model": model, "max_new_tokens": max_tokens,
                                                   "temperature": 0.0})
    elapsed = time.perf_counter() - started
    body = r.json()
    return {"status": r.status_code, "latency_s": elapsed, "metadata": body.get("metadata") or {},
            "error": body.get("error")}


async def cold_warm(url: str, args, prompt: str) -> dict[str, Any]:
    """The first request for an adapter unloaded just before, and the next one."""
    import httpx

    async with httpx.AsyncClient(timeout=300, trust_env=False) as client:
        name = (await client.get(f"{url}/v1/models")).json()["data"][0]["id"]
        model = f"{name}:{ADAPTERS[-1]}"
        await client.post(f"{url}/v1/unload_lora_adapter", json={"lora_name": model})
        cold = await one(client, url, model, prompt, args.max_tokens)
        warm = await one(client, url, model, prompt, args.max_tokens)
    return {"cold_s": round(cold["latency_s"], 4), "warm_s": round(warm["latency_s"], 4),
            "cold_load_s": cold["metadata"].get("adapter_load_seconds"),
            "warm_load_s": warm["metadata"].get("adapter_load_seconds"),
            "failed": sum(1 for x in (cold, warm) if x["status"] != 200)}


async def routing(url: str, base: str, args, prompts: list[str], seed: int) -> dict[str, Any]:
    """``--requests`` requests at ``--concurrency``, each for a random one of the adapters."""
    import httpx

    rng = random.Random(seed)
    picks = [rng.choice(ADAPTERS) for _ in range(args.requests)]
    queue = iter(range(args.requests))
    results: list[dict[str, Any]] = []
    async with httpx.AsyncClient(timeout=300, trust_env=False,
                                 limits=httpx.Limits(max_connections=args.concurrency + 4)) as client:
        async def worker() -> None:
            for i in queue:
                results.append(await one(client, url, f"{base}:{picks[i]}", prompts[i % len(prompts)],
                                         args.max_tokens))

        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(args.concurrency)))
        wall = time.perf_counter() - started
    ok = [r for r in results if r["status"] == 200]
    warm = sum(1 for r in ok if r["metadata"].get("adapter_load_seconds") == 0)
    return {"warm_share": round(warm / max(len(ok), 1), 4), "cold_loads": len(ok) - warm,
            "requests_per_s": round(len(ok) / wall, 2), "failed": len(results) - len(ok)}


def part1(base_url: str, args, prompts: list[str]) -> list[dict[str, Any]]:
    import httpx

    name = httpx.get(f"{base_url}/lora/v1/models", timeout=30).json()["data"][0]["id"]
    variants: dict[str, tuple[str, list[Optional[str]]]] = {
        "base": ("base", [None]), "merged": ("merged", [None]), "lora_engine_base": ("lora", [None]),
        **{f"adapters_{k}": ("lora", [f"{name}:{a}" for a in ADAPTERS[:k]]) for k in (1, 2, 4)}}
    rows = []
    for r in range(args.rounds):
        order = list(variants) if r % 2 == 0 else list(variants)[::-1]
        for v in order:
            application, models = variants[v]
            row = {"part": 1, "variant": v, "round": r,
                   **asyncio.run(level(f"{base_url}/{application}", models, args, prompts))}
            print(f"[adapters] round {r} {v}: {row['output_tok_s']:.0f} tok/s, TTFT p50 {row['ttft_ms_p50']:.1f} ms, "
                  f"{row['failed']} failed", flush=True)
            rows.append(row)
        row = {"part": 1, "variant": "cold_vs_warm", "round": r,
               **asyncio.run(cold_warm(f"{base_url}/lora", args, prompts[r % len(prompts)]))}
        print(f"[adapters] round {r} cold {row['cold_s'] * 1000:.0f} ms (load {row['cold_load_s']} s), "
              f"warm {row['warm_s'] * 1000:.0f} ms", flush=True)
        rows.append(row)
    return rows


def part2(base_url: str, args, prompts: list[str]) -> list[dict[str, Any]]:
    import httpx

    rows = []
    for r in range(args.rounds):
        for v in (["mux", "nomux"] if r % 2 == 0 else ["nomux", "mux"]):
            name = httpx.get(f"{base_url}/{v}/v1/models", timeout=30).json()["data"][0]["id"]
            row = {"part": 2, "variant": v, "round": r,
                   **asyncio.run(routing(f"{base_url}/{v}", name, args, prompts, seed=r))}
            print(f"[adapters] round {r} {v}: {row['warm_share']:.1%} warm, {row['cold_loads']} cold loads, "
                  f"{row['requests_per_s']:.1f} requests/s, {row['failed']} failed", flush=True)
            rows.append(row)
    return rows


def run_serve(config: dict[str, Any], names: list[str], port: int, out: Path, tag: str, args, body) -> list:
    path = out / f"{tag}.serve.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    log = open(out / f"{tag}.serve.log", "w")
    proc = subprocess.Popen([str(Path(sys.executable).parent / "serve"), "run", "--address", "local", str(path)],
                            cwd=str(REPO), stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    tree: list[Any] = []
    base_url = f"http://127.0.0.1:{port}"
    try:
        asyncio.run(all_healthy(base_url, names, proc, args.timeout))
        tree = psutil.Process(proc.pid).children(recursive=True)
        print(f"[adapters] {', '.join(names)} up at {base_url}", flush=True)
        return body(base_url)
    finally:
        stop_serve_run(proc, tree)
        log.close()


def medians(rows: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for v in dict.fromkeys(r["variant"] for r in rows):
        mine = [r for r in rows if r["variant"] == v]
        keys = [k for k, x in mine[0].items() if k not in ("part", "variant", "round", "failed")
                and isinstance(x, (int, float))]
        out[v] = {k: {"median": statistics.median(r[k] for r in mine if r[k] is not None),
                      "rounds": [r[k] for r in mine]} for k in keys if any(r[k] is not None for r in mine)}
        out[v]["failed"] = sum(r["failed"] for r in mine)
    return out


def main(argv: Optional[list[str]] = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m loadtest.bench_adapters", description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="models/rrr-tiny", help="the base model (served as serve_config.tiny.yaml's first)")
    ap.add_argument("--config", default=None, help="the serve config the graphs start from (default serve_config.tiny.yaml)")
    ap.add_argument("--adapter", default=None, help="a LoRA adapter on --model (default: made here with random weights)")
    ap.add_argument("--rank", type=int, default=8, help="rank of the adapter made here")
    ap.add_argument("--concurrency", type=int, default=16)
    ap.add_argument("--requests", type=int, default=160, help="measured requests per level")
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--parts", default="1,2", help="which parts to run (1: load time and throughput, 2: routing)")
    ap.add_argument("--prompts", default=None, help="prompts file (default loadtest/prompts.txt)")
    ap.add_argument("--timeout", type=float, default=600, help="seconds the graphs may take to start")
    ap.add_argument("--output", default="out/adapters")
    args = ap.parse_args(argv)
    if min(args.concurrency, args.requests, args.max_tokens, args.rounds, args.rank) < 1:
        ap.error("--concurrency, --requests, --max-tokens, --rounds and --rank must be at least 1")
    parts = {p.strip() for p in args.parts.split(",") if p.strip()}
    if not parts or parts - {"1", "2"}:
        ap.error("--parts takes 1, 2 or 1,2")
    if args.adapter and not (Path(args.adapter) / "adapter_config.json").exists():
        ap.error(f"--adapter {args.adapter}: no adapter_config.json")

    from deployments.launch import free_port
    from loadtest.client import load_prompts
    from rrr_ray.env import apply_cpu_node_env

    apply_cpu_node_env({"RAY_SERVE_HAPROXY_STATS_PORT": str(free_port()),
                        "RAY_SERVE_HAPROXY_METRICS_PORT": str(free_port())})
    out = Path(args.output)
    if (out / "work").exists():
        shutil.rmtree(out / "work")
    (out / "work").mkdir(parents=True)
    prompts = load_prompts(args.prompts)
    folder, merged = prepare(args, out / "work")
    rows: list[dict[str, Any]] = []
    try:
        if "1" in parts:
            port = free_port()
            rows += run_serve(part1_config(args, folder, merged, port), ["base", "merged", "lora"], port, out,
                              "part1", args, lambda url: part1(url, args, prompts))
        if "2" in parts:
            port = free_port()
            rows += run_serve(part2_config(args, folder, port), ["mux", "nomux"], port, out, "part2", args,
                              lambda url: part2(url, args, prompts))
    except (RuntimeError, TimeoutError) as exc:
        print(f"error: {exc}; see the serve logs in {out}", file=sys.stderr)
        return 1
    summary = medians(rows)
    result = {"date": time.strftime("%Y-%m-%d"), "argv": sys.argv[1:] if argv is None else argv,
              "medians": summary, "rounds": rows}
    (out / "adapters.json").write_text(json.dumps(result, indent=2))
    print(f"\n{'part 1':18} {'tok/s':>8} {'TTFT p50 ms':>12}  failed  (medians of {args.rounds} rounds, "
          f"{args.concurrency} streams)")
    for v, m in summary.items():
        if "output_tok_s" in m:
            print(f"{v:18} {m['output_tok_s']['median']:8.0f} {m['ttft_ms_p50']['median']:12.1f}  {m['failed']:6d}")
    if "cold_vs_warm" in summary:
        m = summary["cold_vs_warm"]
        print(f"cold adapter, first request {m['cold_s']['median'] * 1000:.0f} ms (load "
              f"{m['cold_load_s']['median'] * 1000:.0f} ms); warm {m['warm_s']['median'] * 1000:.0f} ms")
    for v in ("mux", "nomux"):
        if v in summary:
            m = summary[v]
            print(f"part 2 {v:6}: {m['warm_share']['median']:.1%} of requests on a replica holding their adapter, "
                  f"{m['requests_per_s']['median']:.1f} requests/s, {m['failed']} failed")
    print(f"[adapters] wrote {out / 'adapters.json'}")
    return 0 if all(m["failed"] == 0 for m in summary.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
