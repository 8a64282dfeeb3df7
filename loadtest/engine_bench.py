"""System (a) of the side-by-side benchmark: vLLM ``AsyncLLM`` called directly in-process (the limit).

    python -m loadtest.engine_bench --model models/rrr-tiny --concurrency 1,4,16 --out records.json

``--out`` gets, per level, the records and their :func:`~loadtest.metrics.summarize` (``summary``).

Same prompts (chat template applied by the model's tokenizer), same closed-loop concurrency, same
:class:`~loadtest.metrics.RequestRecord` as the HTTP clients; each engine output (a delta of one or
more tokens) counts as one chunk.

With ``--interactive`` the engine stays up and runs one level per command, so that
:mod:`loadtest.compare` can alternate it with the graph level by level: each command is a JSON line
on stdin, ``{"concurrency": C, "requests": N, "warmup": W}`` (W unmeasured requests first; optional
``"seeded": true``, ``"temperature": T``),
answered by one stdout line ``@@rrr {"wall_s": ..., "records": [...]}`` (other stdout lines are
the engine's logs); the first such line reports the start-up, end of input stops the engine.

With ``--variant NAME=JSON`` (repeatable) several engines, each with its own settings over the
common ones, run side by side in one process: every engine starts first (its start-up timed), then
``--rounds`` rounds each run every level on every engine, the engines' order rotating by round, so
that a load on the machine falls on all of them alike. The JSON holds each round's figures and the
median, the printout the median with every round and each variant's ratio to the first:

    python -m loadtest.engine_bench --model models/rrr-smollm2 --concurrency 1,16 --max-tokens 128 \
        --requests-per-level 6,32 --rounds 3 --temperature 0.7 --top-p 0.9 \
        --engine-arg engine_cpus=[0] --variant 'float32={"dtype": "float32"}' \
        --variant 'bfloat16={"dtype": "bfloat16"}' --out out/speed/dtype.json

``engine_cpus=[N,...]`` (an ``--engine-arg`` or a variant's key) runs the model in the engine-core
process bound to those CPUs, as the served engine does (``EngineConfig.engine_cpus``). Two keys of a
variant are not engine arguments: ``env`` (environment variables its engine process starts with,
e.g. ``{"RRR_VLLM_TOP_P": "sort"}``) and ``sampling`` (``temperature``/``top_p`` of its requests).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import time
import uuid
from dataclasses import asdict
from typing import Any

from rrr_ray.serving.hardware import resolve_dtype

# The settings of rrr_ray.serving.vllm_engine.VLLMEngine for the embedded model (serve_config.yaml);
# loadtest.compare passes the graph's own values with --engine-arg.
DEFAULT_ENGINE_ARGS: dict[str, Any] = {
    "dtype": "float32",
    "max_model_len": 1024,
    "max_num_seqs": 32,
    "disable_log_stats": True,
}


def parse_engine_args(pairs: list[str]) -> dict[str, Any]:
    """``key=value`` pairs, values parsed as JSON when they are JSON (``true``, ``8``, ``"x"``)."""
    out: dict[str, Any] = {}
    for p in pairs:
        k, _, v = p.partition("=")
        try:
            out[k.replace("-", "_")] = json.loads(v)
        except json.JSONDecodeError:
            out[k.replace("-", "_")] = v
    return out


def build_engine(model: str, overrides: dict[str, Any]):
    from vllm import AsyncEngineArgs
    from vllm.v1.engine.async_llm import AsyncLLM

    kwargs = {**DEFAULT_ENGINE_ARGS, **overrides}
    kwargs["dtype"] = resolve_dtype(kwargs["dtype"])  # `auto`: the CPU's best, as the served engine
    if (cpus := kwargs.pop("engine_cpus", None)) is not None:  # as EngineConfig.engine_cpus
        from rrr_ray.serving.vllm_compat.cpu_binding import ENGINE_CPUS_KEY, PINNED_EXECUTOR

        kwargs.update(distributed_executor_backend=PINNED_EXECUTOR,
                      additional_config={**kwargs.get("additional_config", {}), ENGINE_CPUS_KEY: cpus})
    return AsyncLLM.from_engine_args(AsyncEngineArgs(model=model, **kwargs))


class LoRAEngine:
    """An ``AsyncLLM`` whose requests all go to one LoRA adapter (``--lora NAME=PATH``)."""

    def __init__(self, engine, name: str, path: str) -> None:
        from vllm.lora.request import LoRARequest

        self.engine, self.lora_request = engine, LoRARequest(name, 1, path)

    def generate(self, *args, **kwargs):
        return self.engine.generate(*args, lora_request=self.lora_request, **kwargs)

    def __getattr__(self, name: str):
        return getattr(self.engine, name)


async def one_request(engine, prompt: str, max_tokens: int, ignore_eos: bool, temperature: float, users: int,
                      seed: int | None = None, top_p: float = 1.0):
    from vllm import SamplingParams
    from vllm.sampling_params import RequestOutputKind

    from loadtest.metrics import StreamTracker

    sp = SamplingParams(max_tokens=max_tokens, ignore_eos=ignore_eos, temperature=temperature, seed=seed,
                        top_p=top_p, output_kind=RequestOutputKind.DELTA)
    tr = StreamTracker("engine", users)
    n_out, n_in = 0, 0
    try:
        async for out in engine.generate(prompt, sp, request_id=uuid.uuid4().hex):
            if out.prompt_token_ids is not None and not n_in:
                n_in = len(out.prompt_token_ids)
            k = len(out.outputs[0].token_ids) if out.outputs else 0
            if k:
                n_out += k
                tr.chunk(k)
        return tr.finish(n_out, n_in)
    except Exception as exc:  # noqa: BLE001 - recorded as a failed request
        return tr.fail(f"{type(exc).__name__}: {exc}")


async def warm_up(engine, prompts: list[str], n: int, max_tokens: int, ignore_eos: bool,
                  temperature: float) -> None:
    """``n`` unmeasured requests, one after the other (the engine's first steps are slow)."""
    for i in range(n):
        await one_request(engine, prompts[i % len(prompts)], max_tokens, ignore_eos, temperature, 0)


async def run_level(engine, prompts: list[str], c: int, n: int, max_tokens: int, ignore_eos: bool,
                    temperature: float, warmup: int = 0, seeded: bool = False, top_p: float = 1.0,
                    label: str = "engine") -> dict[str, Any]:
    """``n`` requests from ``c`` closed-loop clients, after ``warmup`` unmeasured ones:
    ``{"wall_s", "records"}``. ``seeded``: request ``i`` samples with ``seed=i``."""
    from loadtest.client import closed_loop

    async def make(i: int):
        return await one_request(engine, prompts[i % len(prompts)], max_tokens, ignore_eos, temperature, c,
                                 seed=i if seeded else None, top_p=top_p)

    if warmup:
        await closed_loop(make, c, warmup)
    records, wall = await closed_loop(make, c, n)
    ok = [r for r in records if r.success]
    print(f"[{label}] c={c}: {len(ok)}/{len(records)} ok, {sum(r.output_tokens for r in ok) / wall:.1f} tok/s",
          flush=True)
    return {"wall_s": wall, "records": [asdict(r) for r in records]}


async def run_levels(engine, prompts: list[str], levels: list[int], n_for, max_tokens: int, ignore_eos: bool,
                     temperature: float, warmup: int) -> dict[str, Any]:
    await warm_up(engine, prompts, warmup, max_tokens, ignore_eos, temperature)
    return {str(c): await run_level(engine, prompts, c, n_for(c), max_tokens, ignore_eos, temperature)
            for c in levels}


REPLY = "@@rrr "  # marks the protocol's lines among the engine's log lines on stdout


async def serve_commands(engine, prompts: list[str], max_tokens: int, ignore_eos: bool, temperature: float,
                         warmup: int, startup_s: float) -> None:
    """``--interactive``: one level per JSON command line on stdin, until end of input."""
    await warm_up(engine, prompts, warmup, max_tokens, ignore_eos, temperature)
    print(REPLY + json.dumps({"startup_s": startup_s}), flush=True)
    loop = asyncio.get_running_loop()
    while line := await loop.run_in_executor(None, sys.stdin.readline):
        cmd = json.loads(line)
        result = await run_level(engine, prompts, int(cmd["concurrency"]), int(cmd["requests"]), max_tokens,
                                 ignore_eos, float(cmd.get("temperature", temperature)), int(cmd.get("warmup", 0)),
                                 bool(cmd.get("seeded", False)))
        print(REPLY + json.dumps(result), flush=True)


def level_figures(level: dict[str, Any]) -> dict[str, Any]:
    """tok/s (output tokens over the level's wall time) and per-token latency of one level."""
    from loadtest.metrics import RequestRecord, summarize

    s = summarize([RequestRecord(**r) for r in level["records"]], level["wall_s"])
    return {"tok_s": round(s["output_throughput"] or 0.0, 2), "tpot_p50_ms": s["tpot_ms"].get("p50"),
            "ttft_p50_ms": s["ttft_ms"].get("p50"), "completed": s["completed"], "failed": s["failed"]}


def parse_variants(items: list[str]) -> dict[str, dict[str, Any]]:
    """``NAME=JSON`` pairs: a variant's engine arguments over the common ones."""
    out: dict[str, dict[str, Any]] = {}
    for item in items:
        name, _, spec = item.partition("=")
        try:
            args = json.loads(spec or "{}")
        except json.JSONDecodeError as exc:
            raise ValueError(f"--variant {item!r}: not NAME=JSON ({exc.msg})") from None
        if not name or not isinstance(args, dict) or name in out:
            raise ValueError(f"--variant {item!r}: expected a new NAME=JSON object")
        out[name] = args
    return out


def run_variants(model: str, variants: dict[str, dict[str, Any]], common: dict[str, Any], prompts: list[str],
                 levels: list[int], n_for, rounds: int, max_tokens: int, ignore_eos: bool, temperature: float,
                 top_p: float, warmup: int) -> dict[str, Any]:
    """Every variant's engine started, then ``rounds`` rounds of every level on every engine (the
    order rotating by round); each round's figures and the medians."""
    import os

    engines, out, sampling = {}, {}, {}
    try:
        for name, spec in variants.items():
            extra = {k: v for k, v in spec.items() if k not in ("env", "sampling")}
            env = {k: str(v) for k, v in (spec.get("env") or {}).items()}
            sampling[name] = {"temperature": temperature, "top_p": top_p, **(spec.get("sampling") or {})}
            saved = {k: os.environ.get(k) for k in env}
            os.environ.update(env)  # the engine process starts with them
            t0 = time.perf_counter()
            try:
                engines[name] = build_engine(model, {**common, **extra})
            finally:
                for k, v in saved.items():
                    if v is None:
                        os.environ.pop(k, None)
                    else:
                        os.environ[k] = v
            startup = time.perf_counter() - t0
            print(f"[{name}] started in {startup:.1f}s", flush=True)
            out[name] = {"engine_args": {**DEFAULT_ENGINE_ARGS, **common, **extra}, "env": env,
                         "sampling": sampling[name], "startup_s": round(startup, 1), "rounds": []}
            out[name]["engine_args"]["dtype"] = resolve_dtype(out[name]["engine_args"]["dtype"])

        async def measure() -> None:
            for name, engine in engines.items():
                await warm_up(engine, prompts, warmup, max_tokens, ignore_eos, sampling[name]["temperature"])
            names = list(engines)
            for r in range(rounds):
                for name in names[r % len(names):] + names[:r % len(names)]:
                    figures = {}
                    for c in levels:
                        level = await run_level(engines[name], prompts, c, n_for(c), max_tokens, ignore_eos,
                                                sampling[name]["temperature"], top_p=sampling[name]["top_p"],
                                                label=f"{name} round {r + 1}")
                        figures[str(c)] = level_figures(level)
                    out[name]["rounds"].append(figures)

        asyncio.run(measure())
    finally:
        for engine in engines.values():
            engine.shutdown()
    first = next(iter(out))
    for name, v in out.items():
        v["median"] = {str(c): {k: statistics.median(rd[str(c)][k] for rd in v["rounds"])
                                for k in ("tok_s", "tpot_p50_ms")} for c in levels}
        v["tok_s_ratio_to_" + first] = {str(c): round(v["median"][str(c)]["tok_s"] /
                                                      out[first]["median"][str(c)]["tok_s"], 3) for c in levels}
    return out


def print_variants(results: dict[str, Any]) -> None:
    first = next(iter(results))
    for name, v in results.items():
        for c, m in v["median"].items():
            rounds = [rd[c]["tok_s"] for rd in v["rounds"]]
            print(f"[summary] {name:>18} c={c:>3}: {m['tok_s']:7.1f} tok/s median (rounds {rounds}), "
                  f"TPOT p50 {m['tpot_p50_ms']:.1f} ms, x{v['tok_s_ratio_to_' + first][c]} vs {first}; "
                  f"start-up {v['startup_s']} s", flush=True)


def chat_prompts(model: str, prompts: list[str]) -> list[str]:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model)
    return [tok.apply_chat_template([{"role": "user", "content": p}], tokenize=False, add_generation_prompt=True)
            for p in prompts]


def requests_for(c: int, per_level: int | None) -> int:
    """Measured requests at concurrency ``c``: the given number, else ``max(96, 40 c)`` (40 per client,
    so that a closed loop's ramp-up and tail weigh little against its steady state)."""
    return per_level if per_level else max(96, 40 * c)


def main(argv: list[str] | None = None) -> None:
    from loadtest.client import load_prompts

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="models/rrr-tiny")
    ap.add_argument("--prompts", default=None)
    ap.add_argument("--concurrency", default="1,4,16")
    ap.add_argument("--requests-per-level", default=None,
                    help="measured requests per level: one number, or one per --concurrency level "
                         "(default: max(96, 40 c))")
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--temperature", type=float, default=0.0)
    ap.add_argument("--top-p", type=float, default=1.0, help="nucleus sampling mass (the product's default: 0.9)")
    ap.add_argument("--variant", action="append", default=[], metavar="NAME=JSON",
                    help="an engine with these AsyncEngineArgs over the common ones (repeatable; see the module doc)")
    ap.add_argument("--rounds", type=int, default=1, help="rounds of all levels on every variant's engine")
    ap.add_argument("--no-ignore-eos", action="store_true")
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--engine-arg", action="append", default=[], help="AsyncEngineArgs key=value (repeatable)")
    ap.add_argument("--lora", metavar="NAME=PATH", help="send every request to this LoRA adapter "
                    "(with --engine-arg enable_lora=true)")
    ap.add_argument("--out", help="JSON file for the per-level records (not with --interactive)")
    ap.add_argument("--interactive", action="store_true",
                    help="keep the engine up and run the levels that stdin asks for (see the module doc)")
    args = ap.parse_args(argv)
    if not args.interactive and not args.out:
        ap.error("--out is required (or --interactive)")

    levels = [int(x) for x in args.concurrency.split(",") if x]
    counts = [int(x) for x in (args.requests_per_level or "").split(",") if x]
    if len(counts) > 1 and len(counts) != len(levels):
        ap.error("--requests-per-level: give one number, or one per --concurrency level")
    per_level = dict(zip(levels, counts)) if len(counts) > 1 else {c: (counts[0] if counts else None) for c in levels}
    prompts = chat_prompts(args.model, load_prompts(args.prompts))
    if args.variant:
        if args.interactive or args.lora or not args.out:
            ap.error("--variant needs --out, and goes without --interactive and --lora")
        try:
            variants = parse_variants(args.variant)
        except ValueError as exc:
            ap.error(str(exc))
        results = run_variants(args.model, variants, parse_engine_args(args.engine_arg), prompts, levels,
                               lambda c: requests_for(c, per_level[c]), args.rounds, args.max_tokens,
                               not args.no_ignore_eos, args.temperature, args.top_p, args.warmup)
        print_variants(results)
        os.makedirs(os.path.dirname(args.out) or ".", exist_ok=True)
        with open(args.out, "w", encoding="utf-8") as f:
            json.dump({"date": time.strftime("%Y-%m-%d"), "command": " ".join(sys.argv), "model": args.model,
                       "max_tokens": args.max_tokens, "temperature": args.temperature, "top_p": args.top_p,
                       "variants": results}, f, indent=1)
        return
    t0 = time.perf_counter()
    engine = build_engine(args.model, parse_engine_args(args.engine_arg))
    startup = time.perf_counter() - t0
    if args.lora:
        name, _, path = args.lora.partition("=")
        engine = LoRAEngine(engine, name, path)
    print(f"[engine] started in {startup:.1f}s", flush=True)
    if args.interactive:
        try:
            asyncio.run(serve_commands(engine, prompts, args.max_tokens, not args.no_ignore_eos, args.temperature,
                                       args.warmup, startup))
        finally:
            engine.shutdown()
            del engine
        return
    try:
        results = asyncio.run(run_levels(engine, prompts, levels, lambda c: requests_for(c, per_level[c]),
                                         args.max_tokens, not args.no_ignore_eos, args.temperature, args.warmup))
    finally:
        engine.shutdown()
        del engine
    from loadtest.metrics import RequestRecord, summarize

    for level in results.values():  # each level's figures beside its records, for readers without loadtest
        level["summary"] = summarize([RequestRecord.from_dict(r) for r in level["records"]], level["wall_s"])
    os.makedirs(os.path.dirname(args.out) or ".", exist_ok=True)
    with open(args.out, "w", encoding="utf-8") as f:
        json.dump({"startup_s": startup, "engine_args": {**DEFAULT_ENGINE_ARGS, **parse_engine_args(args.engine_arg)},
                   "levels": results}, f)


if __name__ == "__main__":
    main()
