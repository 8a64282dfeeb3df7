"""Locust users that stream the rrr-ray graph: ``POST /generate`` (NDJSON) and ``POST /v1/chat/completions`` (SSE).

    locust -f loadtest/locustfile.py --headless -u 4 -r 4 -t 60s --host http://127.0.0.1:8000

(``python -m loadtest.run`` wraps exactly this and writes ``summary.json``.) Each request is one
Locust request (response time = end-to-end latency, so Locust's own table shows E2EL) plus custom
events, one row each in Locust's statistics and CSV:

====================  ===========================================================================
request_type          ``response_time`` is
====================  ===========================================================================
``TTFT``              time to first token, ms
``TPOT``              time per output token after the first, ms (requests with 2+ tokens)
``ITL``               mean inter-token (inter-chunk) latency of the request, ms
``E2EL``              end-to-end latency, ms
``TOKENS_PER_S``      the request's output tokens / E2EL, **in tokens/s** (not ms)
====================  ===========================================================================

Every request's full record (with each inter-chunk gap) is also appended as one JSON line to
``$RRR_LT_RECORDS_DIR/records-<pid>.jsonl``; :mod:`loadtest.run` reads them for the exact
percentiles. Environment:

``RRR_LT_MODEL``        model name sent to the server (default: first id of ``GET /v1/models``, else ``rrr-tiny``)
``RRR_LT_MAX_TOKENS``   max new tokens per request (64)
``RRR_LT_MIX``          endpoint weights, e.g. ``generate:1,chat:1`` (default) or ``generate:1``
``RRR_LT_TEMPERATURE``  sampling temperature (0.7)
``RRR_LT_IGNORE_EOS``   ``1`` sends ``ignore_eos: true`` (fixed-length outputs; off by default)
``RRR_LT_PROMPTS``      prompts file, one user message per line (``loadtest/prompts.txt``)
``RRR_LT_RECORDS_DIR``  where to write the per-request JSONL (unset: not written)
``RRR_LT_WAIT``         seconds each user waits between requests (0: closed loop)
``RRR_API_KEY``         the server's API keys (comma-separated): the first is sent as ``Authorization: Bearer``
"""

from __future__ import annotations

import json
import os
import random
import sys
from pathlib import Path

from locust import HttpUser, constant, events

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from loadtest.metrics import RequestRecord, StreamReader, StreamTracker, append_records  # noqa: E402
from rrr_ray.client import auth_headers  # noqa: E402

MAX_TOKENS = int(os.environ.get("RRR_LT_MAX_TOKENS", "64"))
TEMPERATURE = float(os.environ.get("RRR_LT_TEMPERATURE", "0.7"))
IGNORE_EOS = os.environ.get("RRR_LT_IGNORE_EOS", "0") not in ("", "0", "false", "no")
WAIT = float(os.environ.get("RRR_LT_WAIT", "0"))
RECORDS_DIR = os.environ.get("RRR_LT_RECORDS_DIR")
PROMPTS_FILE = os.environ.get("RRR_LT_PROMPTS") or str(Path(__file__).resolve().parent / "prompts.txt")


def _parse_mix(spec: str) -> dict[str, int]:
    mix = {}
    for part in spec.split(","):
        if not part.strip():
            continue
        name, _, w = part.partition(":")
        name = name.strip()
        if name not in ("generate", "chat"):
            raise ValueError(f"RRR_LT_MIX: unknown endpoint {name!r} (generate, chat)")
        mix[name] = int(w or 1)
    return mix


MIX = _parse_mix(os.environ.get("RRR_LT_MIX", "generate:1,chat:1"))
PROMPTS = [ln.strip() for ln in Path(PROMPTS_FILE).read_text(encoding="utf-8").splitlines()
           if ln.strip() and not ln.lstrip().startswith("#")]
_model_name: str | None = os.environ.get("RRR_LT_MODEL") or None


def _records_path() -> Path | None:
    if not RECORDS_DIR:
        return None
    Path(RECORDS_DIR).mkdir(parents=True, exist_ok=True)
    return Path(RECORDS_DIR) / f"records-{os.getpid()}.jsonl"


class StreamingUser(HttpUser):
    wait_time = constant(WAIT)

    def on_start(self) -> None:
        global _model_name
        self.client.headers.update(auth_headers(None))  # the first of the server's keys, if any
        if _model_name is None:  # every user that starts before the first answer asks too
            name = "rrr-tiny"
            try:
                r = self.client.get("/v1/models", name="/v1/models", timeout=10)
                ids = [m["id"] for m in r.json().get("data", [])]
                if ids:
                    name = ids[0]
            except Exception:  # noqa: BLE001 - keep the default name
                pass
            _model_name = name

    # -- tasks -------------------------------------------------------------------------------

    def generate(self) -> None:
        body = {
            "messages": [{"role": "user", "content": random.choice(PROMPTS)}],
            "max_new_tokens": MAX_TOKENS,
            "temperature": TEMPERATURE,
            "stream": True,
        }
        if IGNORE_EOS:
            body["ignore_eos"] = True
        self._stream("/generate", body, self._read_ndjson)

    def chat(self) -> None:
        body = {
            "model": _model_name,
            "messages": [{"role": "user", "content": random.choice(PROMPTS)}],
            "max_tokens": MAX_TOKENS,
            "temperature": TEMPERATURE,
            "stream": True,
            "stream_options": {"include_usage": True},
        }
        if IGNORE_EOS:
            body["ignore_eos"] = True
        self._stream("/v1/chat/completions", body, self._read_sse)

    tasks = {fn: MIX[name] for name, fn in (("generate", generate), ("chat", chat)) if MIX.get(name, 0) > 0}

    # -- plumbing ----------------------------------------------------------------------------

    def _stream(self, path: str, body: dict, reader) -> None:
        tracker = StreamTracker(path, self.environment.runner.user_count if self.environment.runner else None)
        with self.client.post(path, json=body, stream=True, catch_response=True, name=f"{path} [stream]",
                              timeout=(10, 300)) as resp:
            try:
                if resp.status_code != 200:
                    rec = tracker.fail(f"HTTP {resp.status_code}: {resp.text[:300]}")
                else:
                    rec = reader(resp, tracker)
            except Exception as exc:  # noqa: BLE001 - a broken stream is a failed request
                rec = tracker.fail(f"{type(exc).__name__}: {exc}")
            resp.request_meta["response_time"] = rec.e2el * 1000.0
            if rec.success:
                resp.success()
            else:
                resp.failure(rec.error)
        self._report(path, rec)

    @staticmethod
    def _read_ndjson(resp, tracker: StreamTracker) -> RequestRecord:
        return _read(resp, StreamReader(tracker, "ndjson"))

    @staticmethod
    def _read_sse(resp, tracker: StreamTracker) -> RequestRecord:
        return _read(resp, StreamReader(tracker, "sse"))

    def _report(self, path: str, rec: RequestRecord) -> None:
        fire = self.environment.events.request.fire
        if rec.success:
            metrics = {"TTFT": rec.ttft * 1000.0, "E2EL": rec.e2el * 1000.0}
            if rec.tpot is not None:
                metrics["TPOT"] = rec.tpot * 1000.0
            if rec.itl:
                metrics["ITL"] = sum(rec.itl) / len(rec.itl) * 1000.0
            if rec.tokens_per_s is not None:
                metrics["TOKENS_PER_S"] = rec.tokens_per_s
            for kind, value in metrics.items():
                fire(request_type=kind, name=path, response_time=value, response_length=rec.output_tokens,
                     exception=None, context={})
        out = _records_path()
        if out is not None:
            append_records(out, [rec])


@events.test_start.add_listener
def _announce(environment, **_kw) -> None:
    print(f"rrr-ray locust: mix={MIX} max_tokens={MAX_TOKENS} ignore_eos={IGNORE_EOS} "
          f"records={RECORDS_DIR or '-'}", file=sys.stderr, flush=True)


if __name__ == "__main__":  # pragma: no cover - run via the locust CLI
    print(json.dumps({"mix": MIX, "max_tokens": MAX_TOKENS}))


def _read(resp, reader: StreamReader) -> RequestRecord:
    for line in resp.iter_lines(chunk_size=None):
        if reader.feed(line):
            break
    return reader.result()
