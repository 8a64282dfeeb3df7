"""Per-request streaming metrics and their summary, with the metric set of vLLM's ``bench serve``.

One :class:`RequestRecord` per request (whatever measured it: the Locust users, the in-process
engine benchmark, the HTTP clients of :mod:`loadtest.compare`); :func:`summarize` turns a list of
them into request/token throughput and mean/median/std/p50/p90/p99 of

* **TTFT**: time to first token (first chunk carrying text), from sending the request;
* **TPOT**: time per output token after the first, ``(e2el - ttft) / (output_tokens - 1)``, one
  value per request with more than one output token (as vLLM);
* **ITL**: inter-token latency, the gaps between successive text-carrying chunks, pooled over all
  requests (as vLLM: a chunk that carries several tokens gives one gap);
* **E2EL**: end-to-end latency, from sending the request to the end of the stream.

Throughput uses the measurement window (first request sent to last request finished) unless the
caller passes ``duration_s``. Only successful requests count (failed ones are reported apart).

This module is imported by the Locust file, so it imports neither ``requests`` nor ``urllib3`` nor
``httpx``: stdlib and numpy only.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

PERCENTILES: tuple[int, ...] = (50, 90, 99)
METRICS: tuple[str, ...] = ("ttft", "tpot", "itl", "e2el")
STAT_KEYS: tuple[str, ...] = ("mean", "median", "std", "min", "max") + tuple(f"p{p}" for p in PERCENTILES)
SUMMARY_KEYS: tuple[str, ...] = (
    "completed",
    "failed",
    "duration_s",
    "total_input_tokens",
    "total_output_tokens",
    "request_throughput",
    "output_throughput",
    "total_token_throughput",
    "ttft_ms",
    "tpot_ms",
    "itl_ms",
    "e2el_ms",
    "tokens_per_s_per_request",
)


@dataclass
class RequestRecord:
    """What one streamed request measured. Times in seconds; ``start`` is wall-clock (``time.time``)."""

    endpoint: str
    success: bool
    start: float
    e2el: float
    ttft: float | None = None
    itl: list[float] = field(default_factory=list)
    output_tokens: int = 0
    input_tokens: int = 0
    chunks: int = 0
    error: str = ""
    users: int | None = None
    server_ttft: float | None = None  # the graph's own TTFT (its ingress; /generate's metadata)
    engine_ttft: float | None = None  # the model stage's TTFT (from its call, template and tokens included)

    @property
    def end(self) -> float:
        return self.start + self.e2el

    @property
    def tpot(self) -> float | None:
        return tpot(self.e2el, self.ttft, self.output_tokens)

    @property
    def tokens_per_s(self) -> float | None:
        if not self.success or self.e2el <= 0:
            return None
        return self.output_tokens / self.e2el

    def to_json(self) -> str:
        return json.dumps(asdict(self), separators=(",", ":"))

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "RequestRecord":
        names = cls.__dataclass_fields__.keys()
        return cls(**{k: v for k, v in d.items() if k in names})


def tpot(e2el: float, ttft: float | None, output_tokens: int) -> float | None:
    """vLLM's TPOT: time per output token after the first; ``None`` below two tokens."""
    if ttft is None or output_tokens < 2:
        return None
    return (e2el - ttft) / (output_tokens - 1)


def ttft_and_itl(start: float, chunk_times: Sequence[float]) -> tuple[float | None, list[float]]:
    """TTFT and inter-chunk gaps from the arrival times of the text-carrying chunks (same clock as ``start``)."""
    if not chunk_times:
        return None, []
    ttft = chunk_times[0] - start
    itl = [b - a for a, b in zip(chunk_times, chunk_times[1:])]
    return ttft, itl


class StreamTracker:
    """Time-stamps a streamed response chunk by chunk, then makes its :class:`RequestRecord`.

    ``tracker = StreamTracker("/generate")`` right before sending; ``tracker.chunk()`` when a chunk
    with non-empty text arrives; ``tracker.finish(...)`` or ``tracker.fail(...)`` at the end.
    """

    def __init__(self, endpoint: str, users: int | None = None):
        self.endpoint = endpoint
        self.users = users
        self.wall_start = time.time()
        self.t0 = time.perf_counter()
        self.times: list[float] = []
        self.text_tokens = 0  # text-carrying chunks; the fallback token count

    def chunk(self, n: int = 1, now: float | None = None) -> None:
        self.times.append(time.perf_counter() if now is None else now)
        self.text_tokens += n

    def finish(self, output_tokens: int | None = None, input_tokens: int = 0) -> RequestRecord:
        e2el = time.perf_counter() - self.t0
        ttft, itl = ttft_and_itl(self.t0, self.times)
        n = output_tokens if output_tokens is not None else self.text_tokens
        ok = n > 0 and ttft is not None
        return RequestRecord(
            endpoint=self.endpoint, success=ok, start=self.wall_start, e2el=e2el, ttft=ttft, itl=itl,
            output_tokens=int(n), input_tokens=int(input_tokens or 0), chunks=len(self.times),
            error="" if ok else "no output tokens", users=self.users,
        )

    def fail(self, error: str) -> RequestRecord:
        rec = self.finish()
        rec.success = False
        rec.error = error[:500]
        return rec


def median_index(scores: Sequence[float | None]) -> int:
    """Index of the median score, ``None`` scores left out: the lower median for an even count, so
    that a report of the median round never rounds up; 0 when no score is known."""
    known = sorted((s, i) for i, s in enumerate(scores) if s is not None)
    return known[(len(known) - 1) // 2][1] if known else 0


def percentile(values: Sequence[float], q: float) -> float:
    """Linear-interpolation percentile (numpy's default, which vLLM uses); 0.0 for no values."""
    if not values:
        return 0.0
    xs = sorted(values)
    if len(xs) == 1:
        return float(xs[0])
    pos = (len(xs) - 1) * q / 100.0
    lo = math.floor(pos)
    hi = min(lo + 1, len(xs) - 1)
    return float(xs[lo] + (xs[hi] - xs[lo]) * (pos - lo))


def stats_ms(values_s: Sequence[float], percentiles: Iterable[int] = PERCENTILES) -> dict[str, float]:
    """mean/median/std/min/max/pNN of ``values_s`` (seconds), in milliseconds; zeros when empty."""
    vals = [float(v) * 1000.0 for v in values_s]
    n = len(vals)
    mean = sum(vals) / n if n else 0.0
    std = math.sqrt(sum((v - mean) ** 2 for v in vals) / n) if n else 0.0  # population std, as np.std
    out = {
        "mean": mean,
        "median": percentile(vals, 50),
        "std": std,
        "min": min(vals) if vals else 0.0,
        "max": max(vals) if vals else 0.0,
        "count": n,
    }
    for p in percentiles:
        out[f"p{p}"] = percentile(vals, p)
    return out


def summarize(records: Sequence[RequestRecord], duration_s: float | None = None) -> dict[str, Any]:
    """The ``bench serve`` metric set over ``records`` (see the module docstring)."""
    ok = [r for r in records if r.success]
    failed = [r for r in records if not r.success]
    if duration_s is None:
        duration_s = (max(r.end for r in ok) - min(r.start for r in ok)) if ok else 0.0
    dur = duration_s if duration_s and duration_s > 0 else float("nan")
    out_tok = sum(r.output_tokens for r in ok)
    in_tok = sum(r.input_tokens for r in ok)
    tps = [r.tokens_per_s for r in ok if r.tokens_per_s is not None]
    summary = {
        "completed": len(ok),
        "failed": len(failed),
        "duration_s": duration_s,
        "total_input_tokens": in_tok,
        "total_output_tokens": out_tok,
        "request_throughput": _finite(len(ok) / dur),
        "output_throughput": _finite(out_tok / dur),
        "total_token_throughput": _finite((in_tok + out_tok) / dur),
        "ttft_ms": stats_ms([r.ttft for r in ok if r.ttft is not None]),
        "tpot_ms": stats_ms([t for r in ok if (t := r.tpot) is not None]),
        "itl_ms": stats_ms([g for r in ok for g in r.itl]),
        "e2el_ms": stats_ms([r.e2el for r in ok]),
        # tokens/s of each request (output tokens / its e2el); the stats are in tok/s, not ms
        "tokens_per_s_per_request": {k: v / 1000.0 if k not in ("count",) else v for k, v in stats_ms(tps).items()},
        "errors": _error_counts(failed),
    }
    breakdown = ttft_breakdown(ok)
    if breakdown:
        summary["ttft_breakdown_ms"] = breakdown
    return summary


def ttft_breakdown(records: Sequence[RequestRecord]) -> dict[str, dict[str, float]]:
    """Where a request's TTFT went, from the records whose server reported its own TTFTs: ``http``
    (client TTFT minus the ingress's: the HTTP proxy, the HTTP server, the client), ``graph`` (the
    ingress's minus the model stage's: the Ray hops and the post-processing) and ``model`` (the model
    stage's: chat template, tokens, engine queue, prefill, first batch). Empty when none reported."""
    timed = [r for r in records if r.ttft is not None and r.server_ttft is not None and r.engine_ttft is not None]
    if not timed:
        return {}
    return {"http": stats_ms([r.ttft - r.server_ttft for r in timed]),
            "graph": stats_ms([r.server_ttft - r.engine_ttft for r in timed]),
            "model": stats_ms([r.engine_ttft for r in timed])}


def summarize_by_endpoint(records: Sequence[RequestRecord], duration_s: float | None = None) -> dict[str, Any]:
    """:func:`summarize` per endpoint (the throughputs over the same window as the whole run)."""
    if duration_s is None:
        ok = [r for r in records if r.success]
        duration_s = (max(r.end for r in ok) - min(r.start for r in ok)) if ok else 0.0
    eps = sorted({r.endpoint for r in records})
    return {ep: summarize([r for r in records if r.endpoint == ep], duration_s) for ep in eps}


def check_summary(summary: dict[str, Any]) -> list[str]:
    """Problems with a summary's shape (empty list when well-formed)."""
    problems = [f"missing key {k!r}" for k in SUMMARY_KEYS if k not in summary]
    for m in METRICS:
        block = summary.get(f"{m}_ms", {})
        for k in STAT_KEYS:
            v = block.get(k)
            if not isinstance(v, (int, float)) or (isinstance(v, float) and not math.isfinite(v)):
                problems.append(f"{m}_ms.{k} is {v!r}")
    return problems


def _finite(x: float) -> float:
    return x if math.isfinite(x) else 0.0


def _error_counts(failed: Sequence[RequestRecord]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for r in failed:
        key = (r.error or "unknown").splitlines()[0][:120]
        counts[key] = counts.get(key, 0) + 1
    return counts


# --- records on disk -------------------------------------------------------------------------

def append_records(path: str | Path, records: Iterable[RequestRecord]) -> None:
    with open(path, "a", encoding="utf-8") as f:
        for r in records:
            f.write(r.to_json() + "\n")


def read_records(path: str | Path) -> list[RequestRecord]:
    """Records from a JSONL file, or from every ``*.jsonl`` in a folder."""
    path = Path(path)
    files = sorted(path.glob("*.jsonl")) if path.is_dir() else [path]
    out = []
    for f in files:
        for line in f.read_text(encoding="utf-8").splitlines():
            if line.strip():
                out.append(RequestRecord.from_dict(json.loads(line)))
    return out


# --- stream parsing (shared by the Locust users and the httpx clients) ------------------------

SSE_DONE = object()


def parse_ndjson_line(line: str | bytes) -> dict[str, Any] | None:
    """One object of the ``/generate`` NDJSON stream (``None`` for a blank line)."""
    if isinstance(line, bytes):
        line = line.decode("utf-8")
    line = line.strip()
    return json.loads(line) if line else None


def parse_sse_line(line: str | bytes) -> dict[str, Any] | object | None:
    """The JSON payload of an SSE ``data:`` line, :data:`SSE_DONE` for ``data: [DONE]``, else ``None``."""
    if isinstance(line, bytes):
        line = line.decode("utf-8")
    line = line.strip()
    if not line.startswith("data:"):
        return None
    data = line[5:].strip()
    if data == "[DONE]":
        return SSE_DONE
    return json.loads(data)


def sse_delta_text(obj: dict[str, Any]) -> str:
    """The text of a chat-completion chunk (``choices[0].delta.content``; ``text`` for completions)."""
    choices = obj.get("choices") or []
    if not choices:
        return ""
    c = choices[0]
    delta = c.get("delta") or {}
    return delta.get("content") or c.get("text") or ""


class StreamReader:
    """Turns the lines of one streamed response into a :class:`RequestRecord`.

    ``feed(line)`` returns True once the stream is over (finished or failed); ``result()`` gives
    the record. One reader for NDJSON (``/generate``) and SSE (``/v1/chat/completions``), used by
    both the Locust users (sync lines) and the httpx clients (async lines).
    """

    def __init__(self, tracker: StreamTracker, kind: str) -> None:
        if kind not in ("ndjson", "sse"):
            raise ValueError(f"unknown stream kind {kind!r}")
        self.tracker = tracker
        self.kind = kind
        self._final: dict[str, Any] | None = None
        self._usage: dict[str, Any] = {}
        self._failed: RequestRecord | None = None

    def feed(self, line: str | bytes) -> bool:
        obj = parse_ndjson_line(line) if self.kind == "ndjson" else parse_sse_line(line)
        if obj is None:
            return False
        if obj is SSE_DONE:
            self._final = self._usage
            return True
        if obj.get("error"):
            self._failed = self.tracker.fail(f"stream error: {obj['error']}")
            return True
        if self.kind == "ndjson":
            if obj.get("token"):
                self.tracker.chunk()
            if obj.get("finished"):
                meta = obj.get("metadata") or {}
                self._final = {"completion_tokens": meta.get("output_tokens"),
                               "prompt_tokens": meta.get("input_tokens", 0),
                               "server_ttft": meta.get("time_to_first_token_seconds"),
                               "engine_ttft": meta.get("engine_time_to_first_token_seconds")}
                return True
            return False
        if sse_delta_text(obj):
            self.tracker.chunk()
        if obj.get("usage"):
            self._usage = obj["usage"]
        return False

    def result(self) -> RequestRecord:
        if self._failed is not None:
            return self._failed
        if self._final is None:
            end = "a finished line" if self.kind == "ndjson" else "data: [DONE]"
            return self.tracker.fail(f"stream ended without {end}")
        record = self.tracker.finish(self._final.get("completion_tokens"), self._final.get("prompt_tokens", 0))
        record.server_ttft, record.engine_ttft = self._final.get("server_ttft"), self._final.get("engine_ttft")
        return record
