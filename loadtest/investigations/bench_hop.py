"""What one Ray Serve hop costs: CPU per streaming handle call and per streamed message.

    python -m loadtest.investigations.bench_hop --items 1,2,5,20 --calls 2000 --concurrency 16 --output out/bench-hop

Two deployments on a local Ray, nothing else running: ``Caller`` makes ``--calls`` streaming handle
calls to ``Callee`` (``--concurrency`` at once), each carrying the graph's own request
(``EngineRequest``) and streaming back ``items`` messages of the graph's own kind (``ModelChunk``,
three tokens each), through the same handle options and environment as the graph's hops
(``rrr_ray.env``: Serve's throughput mode, gRPC between replicas, token auth). Each replica's CPU
time over the calls, from ``/proc``, divided by the calls gives the CPU a hop costs per request on
each side; the slope over ``items`` gives the cost of one message. This is the floor of what a
request pays per hop of the three-deployment graph, whose replicas share the machine with the
engine and with each other (where the same work costs more: ``loadtest/README.md``).

Writes ``bench_hop.json`` (every level, the fitted per-call and per-message costs) and prints a table.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

from loadtest.investigations.cpu_share import cpu_seconds
from rrr_ray.env import apply_cpu_node_env

DEPLOYMENT_OPTIONS = {"ray_actor_options": {"num_cpus": 0.1}, "max_ongoing_requests": 256}


def deployments():
    """The two deployments (defined here so that importing this module does not import Ray)."""
    from ray import serve

    from rrr_ray.serving.streams import ModelChunk

    @serve.deployment(**DEPLOYMENT_OPTIONS)
    class Callee:
        async def stream(self, request: Any, items: int):
            for i in range(items):
                yield ModelChunk(text=[" the", " tok", "en"], num_tokens=3, tokens_per_text=[1, 1, 1],
                                 input_tokens=40, engine_ttft_s=0.01 if i == 0 else None, finished=i == items - 1)

        def pid(self) -> int:
            return os.getpid()

    @serve.deployment(**DEPLOYMENT_OPTIONS)
    class Caller:
        def __init__(self, callee: Any) -> None:
            self.callee = callee
            self.streaming = callee.options(stream=True)

        async def run(self, items: int, calls: int, concurrency: int) -> float:
            from rrr_ray.serving.messages import EngineRequest, SamplingOptions

            numbers = iter(range(calls))

            async def worker() -> None:
                for i in numbers:
                    request = EngineRequest(request_id=f"hop-{i}", model="rrr-tiny", sampling=SamplingOptions(),
                                            messages=[{"role": "user", "content": "I feel anxious about tomorrow."}])
                    async for _ in self.streaming.stream.remote(request, items):
                        pass

            start = time.perf_counter()
            await asyncio.gather(*(worker() for _ in range(concurrency)))
            return time.perf_counter() - start

        def pid(self) -> int:
            return os.getpid()

        async def callee_pid(self) -> int:
            return await self.callee.pid.remote()

    return Caller, Callee


def fit(levels: list[dict[str, Any]], key: str) -> dict[str, float]:
    """Least-squares line of ``key`` (ms per call) over the messages per call: per call, per message."""
    xs = [lv["items"] for lv in levels]
    ys = [lv[key] for lv in levels]
    n, mx, my = len(xs), sum(xs) / len(xs), sum(ys) / len(ys)
    var = sum((x - mx) ** 2 for x in xs)
    slope = sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / var if n > 1 and var else 0.0
    return {"ms_per_call": round(my - slope * mx, 3), "ms_per_message": round(slope, 4)}


async def measure(args) -> list[dict[str, Any]]:
    """Every level, then Serve shut down from the same event loop as its handles."""
    from ray import serve

    try:
        return await _levels(serve.get_app_handle("bench-hop"), args)
    finally:
        await serve.shutdown_async()


async def _levels(handle: Any, args) -> list[dict[str, Any]]:
    caller_pid, callee_pid = await handle.pid.remote(), await handle.callee_pid.remote()
    await handle.run.remote(2, max(args.concurrency * 4, 64), args.concurrency)  # connections open, code warm
    levels = []
    for _ in range(args.rounds):
        for items in args.items:
            c0, e0 = cpu_seconds(caller_pid), cpu_seconds(callee_pid)
            wall = await handle.run.remote(items, args.calls, args.concurrency)
            c1, e1 = cpu_seconds(caller_pid), cpu_seconds(callee_pid)
            level = {"items": items, "calls": args.calls, "concurrency": args.concurrency,
                     "calls_per_s": round(args.calls / wall, 1),
                     "caller_ms_per_call": round(1000 * (c1 - c0) / args.calls, 3),
                     "callee_ms_per_call": round(1000 * (e1 - e0) / args.calls, 3)}
            level["hop_ms_per_call"] = round(level["caller_ms_per_call"] + level["callee_ms_per_call"], 3)
            print(json.dumps(level), flush=True)
            levels.append(level)
    return levels


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--items", default="1,2,5,20", help="messages streamed back per call, one level each")
    ap.add_argument("--calls", type=int, default=2000, help="calls per level")
    ap.add_argument("--concurrency", type=int, default=16, help="calls at once")
    ap.add_argument("--rounds", type=int, default=1, help="times every level is measured")
    ap.add_argument("--output", default="out/bench-hop")
    args = ap.parse_args(argv)
    try:
        args.items = [int(x) for x in args.items.split(",") if x.strip()]
    except ValueError:
        ap.error(f"--items takes integers separated by commas, not {args.items!r}")
    if not args.items or min(args.items) < 1 or args.calls < 1 or args.concurrency < 1 or args.rounds < 1:
        ap.error("--items, --calls, --concurrency and --rounds must be at least 1")

    apply_cpu_node_env()
    import ray
    from ray import serve

    caller, callee = deployments()
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        serve.run(caller.bind(callee.bind()), name="bench-hop", route_prefix=None)
        levels = asyncio.run(measure(args))
    finally:
        ray.shutdown()
    result = {"date": time.strftime("%Y-%m-%d"), "argv": sys.argv[1:] if argv is None else argv, "levels": levels,
              "caller": fit(levels, "caller_ms_per_call"), "callee": fit(levels, "callee_ms_per_call"),
              "hop": fit(levels, "hop_ms_per_call")}
    out = Path(args.output)
    out.mkdir(parents=True, exist_ok=True)
    (out / "bench_hop.json").write_text(json.dumps(result, indent=2))
    print(f"\n{'side':8} {'ms per call':>12} {'ms per message':>15}")
    for side in ("caller", "callee", "hop"):
        print(f"{side:8} {result[side]['ms_per_call']:12.3f} {result[side]['ms_per_message']:15.4f}")
    print(f"[bench_hop] wrote {out / 'bench_hop.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
