"""Faults, load and exposure of the running graph (the session's ``serve_url`` and applications
beside it, in the default shape: ingress -> post-processor -> model deployments): a model replica
killed mid-stream, disconnects under load, backpressure, and the sockets the stack listens on."""

from __future__ import annotations

import concurrent.futures
import ipaddress
import json
import os
import signal
import subprocess
import sys
import time

import httpx
import psutil
import pytest

from tests.conftest import FAKE_MODEL
from tests.test_serving_e2e import PROMPT, extra_app, health_status, stream_lines, unfinished, wait_until

pytestmark = pytest.mark.e2e


def graph_args(model: dict) -> dict:
    """The default shape on one fake-engine model: three deployments."""
    return {"models": [model], "ingress": {"num_cpus": 0.02, "max_ongoing_requests": 64},
            "postprocessor": {"placement": "deployment", "num_cpus": 0.02}}


def replica_processes(app: str, deployment: str) -> list[psutil.Process]:
    name = f"ServeReplica:{app}:{deployment}"
    return [p for p in psutil.process_iter(["cmdline"]) if name in " ".join(p.info["cmdline"] or [])]


def test_a_model_replica_killed_mid_stream_ends_the_stream_at_once_and_serve_replaces_it(serve_url):
    """SIGKILL to the model deployment's replica while it streams: the client gets a terminal error
    line within 5 s (no hang, no silent cut), /health reports the model while no replica answers,
    and requests succeed again within 60 s of the kill."""
    model = dict(FAKE_MODEL, name="fake-kill", engine_kwargs={"token_interval_s": 0.1, "start_s": 6.0},
                 deployment={"num_cpus": 0.02, "num_replicas": 1})
    with extra_app(serve_url, "rrr-kill", "/kill", graph_args(model)) as url:
        _kill_mid_stream(url)


def _kill_mid_stream(kill_url: str) -> None:
    (replica,) = replica_processes("rrr-kill", "RRRModel:fake-kill")
    body = {"prompt": PROMPT, "stream": True, "max_new_tokens": 400}
    lines: list[dict] = []
    with httpx.stream("POST", f"{kill_url}/generate", json=body, timeout=60) as r:
        assert r.status_code == 200
        for line in r.iter_lines():
            if not line:
                continue
            lines.append(json.loads(line))
            if len(lines) == 3:
                killed = time.monotonic()
                os.kill(replica.pid, signal.SIGKILL)
        ended = time.monotonic()
    final = lines[-1]
    assert final["finished"] is True and "RRRModel:fake-kill failed" in final["error"], final
    assert ended - killed <= 5, f"the terminal line came {ended - killed:.1f} s after the kill"

    health = httpx.get(f"{kill_url}/health", timeout=30)  # the replacement takes 6 s to start its engine
    assert health.status_code == 503 and health.json()["models"] == {"fake-kill": False}, health.text
    assert "RRRModel:fake-kill" in health.json()["error"]

    def answers() -> bool:
        r = httpx.post(f"{kill_url}/generate", json={"prompt": "hi", "max_new_tokens": 8}, timeout=30)
        return r.status_code == 200 and r.json()["metadata"]["output_tokens"] == 8
    assert wait_until(answers, timeout=60 - (time.monotonic() - killed), interval=0.5)
    recovered = time.monotonic() - killed
    assert health_status(kill_url) == 200
    (new,) = replica_processes("rrr-kill", "RRRModel:fake-kill")
    assert new.pid != replica.pid
    print(f"terminal line {ended - killed:.2f} s after the kill; answering again after {recovered:.1f} s")


@pytest.mark.parametrize("model", ["fake", "rrr-tiny-base"])
def test_client_disconnects_under_load_free_every_engine_slot(serve_url, model):
    """16 streams at once, each read for three lines and dropped: the engine's running count
    returns to zero."""
    body = {"prompt": PROMPT, "model": model, "stream": True, "ignore_eos": True, "max_new_tokens": 900}

    def leave_early(_: int) -> int:
        with httpx.stream("POST", f"{serve_url}/generate", json=body, timeout=120) as r:
            lines = r.iter_lines()
            for _ in range(3):
                next(lines)
            return r.status_code

    assert unfinished(serve_url, model) == 0
    with concurrent.futures.ThreadPoolExecutor(16) as pool:
        assert list(pool.map(leave_early, range(16))) == [200] * 16
    assert wait_until(lambda: unfinished(serve_url, model) == 0, timeout=30, interval=0.2)


def test_past_the_model_queue_requests_get_503_with_retry_after(serve_url):
    """``max_ongoing_requests`` 2 and ``max_queued_requests`` 2 on the model deployment: of 8
    simultaneous streams, 4 run or wait and the others get a 503 with Retry-After at once."""
    model = dict(FAKE_MODEL, name="fake-full", engine_kwargs={"token_interval_s": 0.05},
                 deployment={"num_cpus": 0.02, "num_replicas": 1, "max_ongoing_requests": 2,
                             "max_queued_requests": 2})
    with extra_app(serve_url, "rrr-full", "/full", graph_args(model)) as url:
        def one(_: int) -> tuple[int, str, float, dict]:
            start = time.monotonic()
            body = {"prompt": "hi", "max_new_tokens": 200, "heal": False}
            r = httpx.post(f"{url}/generate", json=body, timeout=60)
            return r.status_code, r.headers.get("retry-after", ""), time.monotonic() - start, r.json()

        with concurrent.futures.ThreadPoolExecutor(8) as pool:
            results = list(pool.map(one, range(8)))
        ok = [r for r in results if r[0] == 200]
        refused = [r for r in results if r[0] == 503]
        assert len(ok) + len(refused) == 8, results
        assert len(ok) >= 4 and refused, [r[:3] for r in results]
        assert all(r[3]["validation"]["valid"] for r in ok)
        for status, retry_after, seconds, body in refused:
            assert retry_after == "5" and "at capacity" in body["error"] and seconds < 5, (status, body)
        assert health_status(url) == 200


def _name_or_none(process: psutil.Process) -> str | None:
    """The process's name, or None when it has already exited (Ray starts short-lived helpers)."""
    try:
        return process.name()
    except psutil.NoSuchProcess:
        return None


def _ours() -> list[psutil.Process]:
    """This test process and everything it started: the local Ray cluster, Serve, HAProxy, engines."""
    me = psutil.Process()
    return [me, *me.children(recursive=True)]


def _non_loopback_listeners() -> list[tuple[psutil.Process, str, int]]:
    pids = {p.pid: p for p in _ours()}
    out = []
    for conn in psutil.net_connections(kind="tcp"):
        if conn.status != psutil.CONN_LISTEN or conn.pid not in pids:
            continue
        address = ipaddress.ip_address(conn.laddr.ip.removeprefix("::ffff:"))
        if not address.is_loopback:
            out.append((pids[conn.pid], conn.laddr.ip, conn.laddr.port))
    return out


def _is_ray(process: psutil.Process) -> bool:
    cmdline = " ".join(process.cmdline())
    return (process.name() in ("gcs_server", "raylet") or cmdline.startswith("ray::")
            or "site-packages/ray/" in cmdline or process.pid == os.getpid())


def test_beyond_loopback_only_rays_own_servers_listen_and_they_want_the_token(serve_url):
    """rrr-ray's HTTP port, the ingress replica's server, HAProxy's stats and metrics frontends and
    the vLLM engines listen on loopback only. What Ray 2.60 binds beyond it whatever the node IP
    (its gRPC servers, agents and metrics exporters) refuses a client without Ray's token: the GCS
    (what a driver or `ray job submit` connects to) and the dashboard agent's job API."""
    outside = _non_loopback_listeners()
    assert all(_is_ray(p) for p, _, _ in outside), [(p.name(), " ".join(p.cmdline())[:100], port)
                                                    for p, _, port in outside if not _is_ray(p)]
    haproxy = [p for p in _ours() if _name_or_none(p) == "haproxy"]
    assert haproxy, "HAProxy is not running (RAY_SERVE_ENABLE_HA_PROXY)"
    listening = {c.laddr.port: c.laddr.ip for c in psutil.net_connections(kind="tcp")
                 if c.status == psutil.CONN_LISTEN and c.pid in {p.pid for p in haproxy}}
    assert len(listening) >= 3 and set(listening.values()) == {"127.0.0.1"}, listening  # HTTP, stats, metrics

    import ray

    gcs_port = int(ray.get_runtime_context().gcs_address.rsplit(":", 1)[1])
    (gcs,) = {ip for p, ip, port in outside if port == gcs_port} or {"127.0.0.1"}
    host = "127.0.0.1" if ipaddress.ip_address(gcs.removeprefix("::ffff:")).is_unspecified else gcs
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_AUTH")} | {"RAY_AUTH_MODE": "disabled"}
    probe = ("import ray\ntry:\n    ray.init(address=%r, log_to_driver=False)\n    print('CONNECTED')\n"
             "except Exception as exc:\n    print('REFUSED', type(exc).__name__)\n") % f"{host}:{gcs_port}"
    proc = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, text=True, timeout=120)
    assert "REFUSED" in proc.stdout and "InvalidAuthToken" in proc.stderr, proc.stdout + proc.stderr[-2000:]

    for p, ip, port in outside:  # HTTP beyond loopback: a read-only metrics exporter, or an API behind the token
        url = f"http://{'127.0.0.1' if ipaddress.ip_address(ip.removeprefix('::ffff:')).is_unspecified else ip}:{port}"
        try:
            r = httpx.post(f"{url}/api/job_agent/jobs/", json={"entrypoint": "echo pwned"}, timeout=10)
            metrics = httpx.get(url, timeout=10).text.startswith("# HELP")
        except httpx.HTTPError:
            continue  # not HTTP/1: a gRPC server (Ray's token interceptor, as the GCS above)
        assert r.status_code in (401, 403) or (metrics and r.status_code == 405), (p.name(), url, r.status_code)


def _fake_serve_config(tmp_path, port: int) -> "os.PathLike":
    """serve_config.yaml's shape (three deployments) on the fake engine, on ``port``."""
    import yaml

    from tests.helpers import REPO

    config = yaml.safe_load((REPO / "serve_config.yaml").read_text())
    config["http_options"]["port"] = port
    app = config["applications"][0]
    app["args"]["models"] = [dict(FAKE_MODEL, name="fake-stop", deployment={"num_cpus": 0.02, "num_replicas": 1})]
    app["args"]["default_model"] = "fake-stop"
    path = tmp_path / "serve_config.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["ctrl-c", "sigterm"])
def test_serve_run_stopped_leaves_no_process_and_no_port_behind(tmp_path, sig):
    """`serve run` of the default shape (what `make serve` runs), stopped by Ctrl-C or SIGTERM: every
    process it started (Ray, Serve, HAProxy, replicas) exits and its HTTP, HAProxy stats and
    metrics ports are free again."""
    from deployments.launch import free_port
    from rrr_ray.serving.ports import port_holder
    from tests.helpers import REPO, still_running

    ports = {"http": free_port(), "stats": free_port(), "metrics": free_port()}
    env = {**os.environ, "RAY_SERVE_HAPROXY_STATS_PORT": str(ports["stats"]),
           "RAY_SERVE_HAPROXY_METRICS_PORT": str(ports["metrics"])}
    serve = psutil.Popen([os.path.join(os.path.dirname(sys.executable), "serve"), "run",
                          str(_fake_serve_config(tmp_path, ports["http"]))], cwd=REPO, env=env,
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        url = f"http://127.0.0.1:{ports['http']}"

        def answers() -> bool:
            try:
                return httpx.post(f"{url}/generate", json={"prompt": "hi", "max_new_tokens": 8},
                                  timeout=10).status_code == 200
            except httpx.HTTPError:
                return False
        assert wait_until(answers, timeout=180, interval=1), "serve run did not come up"
        started = serve.children(recursive=True)
        names = {_name_or_none(p) for p in started}
        assert {"haproxy", "gcs_server"} <= names, names
        serve.send_signal(sig)
        serve.wait(timeout=90)
    finally:
        if serve.poll() is None:
            serve.kill()
    stopped = time.monotonic()

    assert wait_until(lambda: not still_running(started), timeout=30, interval=0.5), \
        f"still running: {still_running(started)}"
    assert wait_until(lambda: not any(port_holder(p) for p in ports.values()), timeout=10, interval=0.5), \
        {name: port_holder(p) for name, p in ports.items()}
    print(f"{sig.name}: everything gone {time.monotonic() - stopped:.1f} s after serve run exited")


STOP_GRAPH_SCRIPT = """
import json, sys
import psutil
from deployments.launch import start_graph, stop_graph
from ray import serve
from deployments.app import build_app
model = json.loads(sys.argv[1])
args = {"models": [model], "ingress": {"num_cpus": 0.02}, "postprocessor": {"placement": "deployment", "num_cpus": 0.02}}
url = start_graph(args, timeout_s=180)
serve.run(build_app(dict(args, models=[dict(model, name="fake-2")])), name="second", route_prefix="/2")  # reloads HAProxy
started = [p.pid for p in psutil.Process().children(recursive=True)]
stop_graph()
print(json.dumps({"url": url, "started": started}))
"""


def test_stop_graph_leaves_no_process_and_no_port_behind():
    """``deployments.launch.stop_graph`` (the tests' and benchmarks' graphs), after a second application
    made Serve reload HAProxy: no process the graph started is left, and its HTTP port is free."""
    from rrr_ray.serving.ports import port_holder
    from tests.helpers import REPO

    model = dict(FAKE_MODEL, deployment={"num_cpus": 0.02, "num_replicas": 1})
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_SERVE_HAPROXY_")}  # the session graph's
    proc = subprocess.run([sys.executable, "-c", STOP_GRAPH_SCRIPT, json.dumps(model)], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    alive = [pid for pid in report["started"] if psutil.pid_exists(pid)
             and psutil.Process(pid).status() != psutil.STATUS_ZOMBIE]
    assert not alive, [" ".join(psutil.Process(pid).cmdline())[:120] for pid in alive]
    assert port_holder(int(report["url"].rsplit(":", 1)[1])) is None
