"""CI smoke run of the Locust load test against the real graph (``serve_url`` from conftest.py).

Twenty seconds of 16 users streaming both ``/generate`` (NDJSON) and ``/v1/chat/completions``
(SSE): zero failures and a well-formed ``summary.json``. No timing thresholds: CI machines are noisy.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from loadtest.metrics import METRICS, check_summary
from tests.helpers import REPO

pytestmark = pytest.mark.e2e

ENDPOINTS = {"/generate", "/v1/chat/completions"}


def test_locust_16_streaming_users_against_the_graph_without_a_failure(serve_url, tmp_path):
    cmd = [sys.executable, "-m", "loadtest.run", "--host", serve_url, "--users", "16", "--duration", "20s",
           "--max-tokens", "32", "--mix", "generate:1,chat:1", "--output", str(tmp_path)]
    proc = subprocess.run(cmd, cwd=REPO, env={**os.environ, "TOKENIZERS_PARALLELISM": "false"},
                          capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, f"exit {proc.returncode}\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"

    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["failures_total"] == 0
    assert summary["host"] == serve_url.rstrip("/") and summary["percentiles"] == [50, 90, 99]
    (level,) = summary["levels"]
    assert level["users"] == 16 and level["locust_failures"] == 0 and level["locust_requests"] > 0

    overall = level["overall"]
    assert check_summary(overall) == []
    assert overall["completed"] > 0 and overall["failed"] == 0
    assert overall["total_output_tokens"] > 0 and overall["output_throughput"] > 0
    assert overall["ttft_ms"]["p50"] > 0 and overall["e2el_ms"]["p99"] >= overall["e2el_ms"]["p50"]
    assert set(level["by_endpoint"]) == ENDPOINTS  # both streaming endpoints were exercised
    for ep, s in level["by_endpoint"].items():
        assert s["completed"] > 0 and s["failed"] == 0 and check_summary(s) == [], ep

    # Locust's own outputs, with the custom metric events as rows
    for name in ("locust_stats.csv", "locust_stats_history.csv", "locust_failures.csv", "locust.html"):
        assert (tmp_path / "u16" / name).exists(), name
    rows = level["locust_stats"]
    for ep in ENDPOINTS:
        assert rows[f"POST {ep} [stream]"]["failures"] == 0
        for kind in ("TTFT", "E2EL", "TOKENS_PER_S"):
            assert rows[f"{kind} {ep}"]["requests"] > 0, (kind, ep)
    assert all(f"{m}_ms" in overall for m in METRICS)
