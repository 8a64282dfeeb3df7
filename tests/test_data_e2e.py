"""End to end: the generation job on Ray against a real OpenAI-compatible server on loopback serving
the embedded model, then validate, convert and curate its output; and a crash-and-resume run.

Needs the ``openai_endpoint`` fixture (``(base_url, model_name)``), from tests/conftest.py (rrr-ray's
own Serve stack) or, as a fallback, ``pytest -p tests._vllm_api_server``.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from rrr_ray.data.generation import SHARD_RE, conversation_id
from rrr_ray.data.records import read_dialogues
from tests.helpers import REPO, SEED_DIR

pytestmark = pytest.mark.e2e

ENV = {**os.environ, "PYTHONUNBUFFERED": "1"}  # with rrr_ray.env's CPU-node settings (conftest)
ENV.pop("RAY_ADDRESS", None)  # each job starts its own local cluster in-process


def job(base_url: str, model: str, out: Path, n: int, *extra: str) -> list[str]:
    # --guided: rrr-ray's endpoint (and vLLM's) constrain replies to the RRR grammar, so the tiny
    # model's replies validate; the job still validates every one of them.
    return [sys.executable, "-m", "jobs.generate_dialogues", "--base-url", base_url, "--model", model,
            "--num-dialogues", str(n), "--output", str(out), "--seed", "7", "--guided", "--no-progress",
            "--min-turns", "1", "--max-turns", "2", "--max-attempts", str(4 * n), *extra]


def rrr(*argv) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "rrr_ray.cli", *map(str, argv)], cwd=REPO, env=ENV,
                          capture_output=True, text=True, timeout=300)


def ids_on_disk(out: Path) -> list[str]:
    return [r.conversation_id for r in read_dialogues(out)] if any(out.glob("shard-*.jsonl")) else []


def test_generate_on_ray_then_validate_convert_curate(openai_endpoint, tmp_path):
    import datasets

    base_url, model = openai_endpoint
    out = tmp_path / "gen"
    proc = subprocess.run(job(base_url, model, out, 4, "--concurrency", "2", "--shard-size", "2", "--summary-json"),
                          cwd=REPO, env=ENV, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads(proc.stdout[proc.stdout.index("{"):])
    assert summary["total"] == summary["generated"] == 4 and summary["dialogues_per_minute"] > 0
    records = read_dialogues(out)
    assert len({r.conversation_id for r in records}) == 4
    assert all(r.conversation_id.startswith("gen-s7-") for r in records)

    v = rrr("validate", out, "--json")
    assert v.returncode == 0, v.stdout[-2000:]
    assert json.loads(v.stdout)["totals"]["valid"] == 4

    c = rrr("convert", out, "--output", tmp_path / "ds")
    assert c.returncode == 0, c.stderr
    ds = datasets.load_from_disk(str(tmp_path / "ds"))
    assert len(ds) == 4 and set(ds.column_names) == {"conversation_id", "messages", "num_turns"}

    cur = tmp_path / "curated"
    shutil.copytree(SEED_DIR / "curated_seed_dialogues", cur)
    a = rrr("curate", "accept", "--all-valid", "-c", cur, "-s", out)
    assert a.returncode == 0 and "4 accepted" in a.stdout, a.stderr
    assert len(read_dialogues(cur)) == 14
    lst = rrr("curate", "list", "-c", cur, "-s", out)
    assert "4 candidates: 0 pending, 4 accepted, 0 rejected" in lst.stdout


def test_crash_and_resume_loses_and_duplicates_nothing(openai_endpoint, tmp_path):
    base_url, model = openai_endpoint
    out = tmp_path / "gen"
    n = 8
    cmd = job(base_url, model, out, n, "--concurrency", "2", "--shard-size", "1")
    proc = subprocess.Popen(cmd, cwd=REPO, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            start_new_session=True)
    deadline = time.monotonic() + 300
    try:
        while sum(bool(SHARD_RE.match(p.name)) for p in out.glob("shard-*.jsonl")) < 2:
            assert proc.poll() is None, f"job ended before the crash: {proc.stderr.read()[-2000:]}"
            assert time.monotonic() < deadline, "no shards after 300 s"
            time.sleep(0.2)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)  # the driver and its in-process Ray cluster, mid-run
        proc.wait()
    before = ids_on_disk(out)
    assert 2 <= len(before) < n, "the crash came too late to test anything"

    proc = subprocess.run(cmd + ["--resume", "--summary-json"], cwd=REPO, env=ENV, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads(proc.stdout[proc.stdout.index("{"):])
    after = ids_on_disk(out)
    lost = set(before) - set(after)
    duplicated = len(after) - len(set(after))
    assert (len(lost), duplicated) == (0, 0)
    assert len(after) == n and summary["resumed_with"] == len(before)
    assert set(after) <= {conversation_id(7, i) for i in range(4 * n)}
    assert not list(out.glob(".*.tmp"))
