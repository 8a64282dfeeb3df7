"""A Ray cluster of two nodes on this machine (two `ray start`, Ray's token auth on): the generation
job spreads its actors over both nodes and survives one of them stopped mid-job, losing and doubling
nothing; `--resume` afterwards finds nothing missing."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from rrr_ray.data.generation import SHARD_RE
from tests.helpers import REPO
from tests.test_data_e2e import ENV, ids_on_disk, job

pytestmark = pytest.mark.e2e

RAY = str(Path(sys.executable).with_name("ray"))
CURRENT_CLUSTER = Path("/tmp/ray/ray_current_cluster")
"""Where `ray start` writes its address, and where `ray.init()` without one looks for a cluster."""


def _cluster_processes(gcs_port: int) -> list[psutil.Process]:
    """Every process of the cluster whose GCS listens on ``gcs_port`` (not the other local clusters)."""
    marks = (f":{gcs_port}", f"--gcs_server_port={gcs_port}")
    out = []
    for p in psutil.process_iter(["cmdline"]):
        cmdline = p.info["cmdline"] or []
        if any(arg.endswith(marks[0]) or arg == marks[1] for arg in cmdline):
            out.append(p)
    return out


def _stop(processes: list[psutil.Process]) -> None:
    for p in processes:
        try:
            p.kill()
        except psutil.NoSuchProcess:
            pass
    psutil.wait_procs(processes, timeout=10)


@pytest.fixture()
def two_nodes():
    """(address, the second node's raylet) of a two-node cluster; stopped at the end (not `ray stop`,
    which would stop every Ray on the machine)."""
    from deployments.launch import free_port

    port = free_port()
    env = {**ENV, "RAY_AUTH_MODE": "token"}
    current = CURRENT_CLUSTER.read_bytes() if CURRENT_CLUSTER.exists() else None  # `ray start` overwrites it
    common = ["--num-cpus", "1", "--disable-usage-stats"]
    head = subprocess.run([RAY, "start", "--head", "--port", str(port), "--include-dashboard=false",
                           "--node-ip-address", "127.0.0.1", "--resources", '{"head": 1}', *common],
                          env=env, capture_output=True, text=True, timeout=120)
    assert head.returncode == 0, head.stderr[-2000:]
    address = f"127.0.0.1:{port}"
    try:
        worker = subprocess.run([RAY, "start", "--address", address, "--node-ip-address", "127.0.0.1",
                                 "--resources", '{"second": 1}', *common],
                                env=env, capture_output=True, text=True, timeout=120)
        assert worker.returncode == 0, worker.stderr[-2000:]
        count = ("import ray; ray.init(address=%r, logging_level='ERROR'); "
                 "print(sum(n['Alive'] for n in ray.nodes()))") % address
        deadline = time.monotonic() + 60
        while subprocess.run([sys.executable, "-c", count], env=env, capture_output=True, text=True,
                             timeout=60).stdout.strip() != "2":
            assert time.monotonic() < deadline, "the second node did not join within 60 s"
            time.sleep(1)
        (raylet,) = [p for p in _cluster_processes(port) if p.name() == "raylet"
                     and any('"second"' in a or "second" in a for a in p.cmdline())]
        yield address, raylet
    finally:
        _stop(_cluster_processes(port))
        if current is None:  # else a later ray.init() would connect to this dead cluster
            CURRENT_CLUSTER.unlink(missing_ok=True)
        else:
            CURRENT_CLUSTER.write_bytes(current)


def test_generation_job_spreads_over_two_nodes_and_survives_one_stopped(openai_endpoint, two_nodes, tmp_path):
    base_url, model = openai_endpoint
    address, second = two_nodes
    out = tmp_path / "gen"
    n = 10
    cmd = job(base_url, model, out, n, "--concurrency", "4", "--workers", "2", "--shard-size", "1",
              "--summary-json")
    env = {**ENV, "RAY_ADDRESS": address, "RAY_AUTH_MODE": "token"}
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 300
    while sum(bool(SHARD_RE.match(p.name)) for p in out.glob("shard-*.jsonl")) < 2:
        assert proc.poll() is None, f"job ended before the node was stopped: {proc.stderr.read()[-2000:]}"
        assert time.monotonic() < deadline, "no shards after 300 s"
        time.sleep(0.2)
    on_second = [c for c in second.children(recursive=True) if "GeneratorActor" in " ".join(c.cmdline())]
    assert on_second, "no generation actor ran on the second node"
    for p in [second, *second.children(recursive=True)]:
        p.send_signal(signal.SIGKILL)  # the node stops mid-job: its raylet and its workers
    before = ids_on_disk(out)
    stdout, stderr = proc.communicate(timeout=600)
    assert proc.returncode == 0, stderr[-3000:]
    summary = json.loads(stdout[stdout.index("{"):])
    assert summary["nodes"] == 2 and summary["total"] == n
    after = ids_on_disk(out)
    assert set(before) <= set(after) and len(after) == len(set(after)) == n

    resumed = subprocess.run(cmd + ["--resume"], cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert json.loads(resumed.stdout[resumed.stdout.index("{"):])["generated"] == 0
    assert sorted(ids_on_disk(out)) == sorted(after)
    print(f"{len(before)} dialogues on disk when the second node stopped; {n} after, none doubled")
