"""How ``loadtest.compare`` measures: one level over HTTP (closed loop, as ``vllm bench serve
--max-concurrency``), and the paired rounds that alternate the systems level by level."""

from __future__ import annotations

import time
from typing import Any

from loadtest.client import closed_loop, generate_payload, http_client, stream_generate
from loadtest.engine_bench import requests_for
from loadtest.metrics import summarize

SEED_MAX_REQUESTS = 96  # (c) decodes one request at a time per thread: keep its levels short


def seed_requests_for(c: int, per_level: int | None) -> int:
    """Measured requests of (c) at concurrency ``c``: as (a) and (b), at most ``SEED_MAX_REQUESTS``."""
    return min(requests_for(c, per_level), SEED_MAX_REQUESTS)


async def probe_ignore_eos(base_url: str, label: str, args, prompts: list[str]) -> tuple[bool, list[str]]:
    """Whether ``/generate`` takes ``ignore_eos`` (the seed-style server may refuse unknown fields)."""
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
