"""An async httpx client for the streaming ``/generate`` endpoint, and a closed-loop load generator.

Used by :mod:`loadtest.compare`. The Locust users (``locustfile.py``) read streams with the same
:class:`loadtest.metrics.StreamReader`.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any, Awaitable, Callable

import httpx

from loadtest.metrics import RequestRecord, StreamReader, StreamTracker

REPO = Path(__file__).resolve().parent.parent
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


async def stream_generate(client: httpx.AsyncClient, url: str, body: dict[str, Any],
                          users: int | None = None) -> RequestRecord:
    """POST a streaming ``/generate`` and time its NDJSON lines."""
    tr = StreamTracker("/generate", users)
    reader = StreamReader(tr, "ndjson")
    try:
        async with client.stream("POST", url, json=body) as resp:
            if resp.status_code != 200:
                detail = (await resp.aread()).decode("utf-8", "replace")[:300]
                return tr.fail(f"HTTP {resp.status_code}: {detail}")
            async for line in resp.aiter_lines():
                if reader.feed(line):
                    break
            return reader.result()
    except (httpx.HTTPError, json.JSONDecodeError, OSError) as exc:
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


def http_client(concurrency: int, timeout: float = 300.0) -> httpx.AsyncClient:
    limits = httpx.Limits(max_connections=concurrency + 4, max_keepalive_connections=concurrency + 4)
    return httpx.AsyncClient(timeout=httpx.Timeout(timeout, connect=10.0), limits=limits, trust_env=False)


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
