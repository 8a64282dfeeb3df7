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
