"""Stopping as orchestrators stop a server: SIGTERM to `python -m rrr_ray.graceful serve run` (what
`make serve` and the image run, the container's main process) or to its whole process group (a process
manager, `kill -- -PGID`). /health no longer answers 200 to a poll sent a second after it
(a paused HAProxy refuses, or leaves unanswered, what it has not accepted), a reply already streaming
finishes (SIGTERM to the process), the run exits, and nothing of it is left: no Ray process, no
HAProxy, the port free. Each case runs its own `serve run` (its own local Ray) on rrr-tiny."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import psutil
import pytest
import yaml

from deployments.launch import free_port
from tests.helpers import REPO, port_is_free, still_running

pytestmark = pytest.mark.e2e


def _health(url: str):
    try:
        return httpx.get(f"{url}/health", timeout=2).status_code
    except httpx.HTTPError as exc:
        return type(exc).__name__


def _config(tmp_path: Path, port: int) -> Path:
    """serve_config.tiny.yaml on ``port`` with its first model only."""
    config = yaml.safe_load((REPO / "serve_config.tiny.yaml").read_text())
    config["http_options"]["port"] = port
    args = config["applications"][0]["args"]
    args["models"] = args["models"][:1]
    path = tmp_path / "serve.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def _exe(p: psutil.Process) -> str:
    try:
        return p.exe()
    except psutil.Error:
        return ""


@pytest.mark.parametrize("target", ["process", "group"])
def test_sigterm_refuses_at_once_drains_and_leaves_nothing(tmp_path, target):
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env.update(RAY_SERVE_HAPROXY_STATS_PORT=str(free_port()), RAY_SERVE_HAPROXY_METRICS_PORT=str(free_port()))
    log_path = tmp_path / "serve.log"
    with open(log_path, "w") as log:
        proc = subprocess.Popen([sys.executable, "-m", "rrr_ray.graceful", "serve", "run", str(_config(tmp_path, port))],
                                cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 300
        while _health(url) != 200:
            assert proc.poll() is None and time.monotonic() < deadline, log_path.read_text()[-3000:]
            time.sleep(1)
        run = psutil.Process(proc.pid).children(recursive=True)
        binary = os.path.realpath(os.environ["RRR_HAPROXY_BINARY"])
        assert any(_exe(p) == binary for p in run), "no HAProxy in the run"

        lines: list[dict] = []

        def stream() -> None:  # a reply in flight when SIGTERM comes
            with httpx.stream("POST", f"{url}/generate", timeout=60, json={
                    "prompt": "I feel stuck at work.", "stream": True, "max_new_tokens": 400}) as r:
                for line in r.iter_lines():
                    if line:
                        lines.append(json.loads(line))

        streaming = threading.Thread(target=stream)
        if target == "process":
            streaming.start()
            while not lines and streaming.is_alive():
                time.sleep(0.01)
        sent = time.monotonic()
        if target == "group":
            os.killpg(proc.pid, signal.SIGTERM)
        else:
            proc.send_signal(signal.SIGTERM)
        while True:  # when the first /health poll that gets no 200 (refused, or never answered) was sent
            polled = time.monotonic()
            if _health(url) != 200:
                break
            time.sleep(0.02)
        refused_after = polled - sent
        proc.wait(timeout=60)
        if streaming.is_alive():
            streaming.join(timeout=60)
        psutil.wait_procs(run, timeout=15)
        assert refused_after < 1.0, f"/health answered 200 to polls sent up to {refused_after:.2f} s after SIGTERM"
        if target == "process":
            assert lines and lines[-1].get("finished") and lines[-1]["validation"]["valid"], lines[-3:]
        assert not still_running(run), f"left after the run: {still_running(run)}"
        assert port_is_free(port)
    finally:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
