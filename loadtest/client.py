"""An async client for the streaming ``/generate`` endpoint, and a closed-loop load generator.

Used by :mod:`loadtest.compare`. The client is aiohttp, as in vLLM's ``bench serve``: on a
machine that also runs the server it takes about half the CPU httpx does (0.06 vs 0.12 of a core
at 16 streams, measured here). The Locust users (``locustfile.py``) read streams with the same
:class:`loadtest.metrics.StreamReader`.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import time
from pathlib import Path
from typing import Any, Awaitable, Callable

import aiohttp
import httpx
import psutil

from loadtest.metrics import RequestRecord, StreamReader, StreamTracker
from rrr_ray.paths import REPO

DEFAULT_PROMPTS = Path(__file__).resolve().parent / "prompts.txt"


def load_prompts(path: str | Path | None = None) -> list[str]:
    """One user message per non-blank line (``#`` starts a comment line)."""
    text = Path(path or DEFAULT_PROMPTS).read_text(encoding="utf-8")
    prompts = [ln.strip() for ln in text.splitlines() if ln.strip() and not ln.lstrip().startswith("#")]
    if not prompts:
        raise ValueError(f"no prompts in {path}")
    return prompts


def generate_payload(prompt: str, max_tokens: int, *, temperature: float = 0.0, ignore_eos: bool = False,
                     model: str | None = None) -> dict[str, Any]:
    body: dict[str, Any] = {
        "messages": [{"role": "user", "content": prompt}],
        "max_new_tokens": max_tokens,
        "temperature": temperature,
        "top_p": 1.0,
        "top_k": -1,
        "repetition_penalty": 1.0,
        "stream": True,
    }
    if ignore_eos:
        body["ignore_eos"] = True
    if model:
        body["model"] = model
    return body


async def stream_generate(client: aiohttp.ClientSession, url: str, body: dict[str, Any],
                          users: int | None = None) -> RequestRecord:
    """POST a streaming ``/generate`` and time its NDJSON lines."""
    tr = StreamTracker("/generate", users)
    reader = StreamReader(tr, "ndjson")
    try:
        async with client.post(url, json=body) as resp:
            if resp.status != 200:
                detail = (await resp.read()).decode("utf-8", "replace")[:300]
                return tr.fail(f"HTTP {resp.status}: {detail}")
            async for raw in resp.content:
                if reader.feed(raw.decode("utf-8").rstrip("\r\n")):
                    break
            return reader.result()
    except (aiohttp.ClientError, asyncio.TimeoutError, json.JSONDecodeError, UnicodeDecodeError, ValueError,
            OSError) as exc:
        return tr.fail(f"{type(exc).__name__}: {exc}")


async def closed_loop(make_request: Callable[[int], Awaitable[RequestRecord]], concurrency: int,
                      n_requests: int) -> tuple[list[RequestRecord], float]:
    """``concurrency`` workers issue ``n_requests`` requests back to back (as ``bench serve
    --max-concurrency``). Returns the records and the wall time of the whole level."""
    loop = asyncio.get_running_loop()
    counter = iter(range(n_requests))
    records: list[RequestRecord] = []

    async def worker() -> None:
        for i in counter:
            records.append(await make_request(i))

    t0 = loop.time()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return records, loop.time() - t0


def http_client(concurrency: int, timeout: float = 300.0) -> aiohttp.ClientSession:
    """A session for ``stream_generate``: ``concurrency`` + 4 pooled connections (use it with ``async with``)."""
    return aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=concurrency + 4),
                                 timeout=aiohttp.ClientTimeout(total=timeout, connect=10.0))


async def wait_healthy(base_url: str, timeout: float = 180.0, proc=None) -> None:
    """Poll ``GET {base_url}/health`` until it answers 200 (or raise ``TimeoutError``)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    async with httpx.AsyncClient(timeout=5.0, trust_env=False) as c:
        while loop.time() < deadline:
            if proc is not None and proc.poll() is not None:
                raise RuntimeError(f"server exited with {proc.returncode} before becoming healthy")
            try:
                if (await c.get(f"{base_url}/health")).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            await asyncio.sleep(0.5)
    raise TimeoutError(f"{base_url}/health not healthy after {timeout:.0f}s")


async def all_healthy(base_url: str, variants: list[str], proc: subprocess.Popen, timeout_s: float) -> None:
    """Every variant's ``/health`` answering 200 within ``timeout_s`` in all."""
    deadline = time.monotonic() + timeout_s
    for v in variants:
        await wait_healthy(f"{base_url}/{v}", max(deadline - time.monotonic(), 1.0), proc)


def stop_serve_run(proc: subprocess.Popen, tree: list[Any]) -> None:
    """``serve run`` stopped as by Ctrl-C, then anything of its process tree that outlives it."""
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGINT)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    _, alive = psutil.wait_procs(tree, timeout=15)
    for p in alive:
        try:
            p.kill()
        except psutil.NoSuchProcess:
            pass
