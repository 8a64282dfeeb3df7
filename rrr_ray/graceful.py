"""``serve run`` that stops the way orchestrators stop it.

    python -m rrr_ray.graceful serve run serve_config.yaml    # what `make serve` and the image run

docker, podman, compose, Kubernetes and process managers stop a server with SIGTERM, then SIGKILL
after a grace period. On SIGTERM, ``serve run``'s process (Ray's handler: exit at once) leaves
the graph answering until Ray's processes are gone, ``/health`` included. Here SIGTERM first
drains: every HAProxy that this run started (Serve's proxy, ``RAY_SERVE_ENABLE_HA_PROXY``) is
paused (SIGTTOU: it releases its listening ports at once and finishes the requests it has), so
``/health`` and new requests are refused from the first milliseconds while the replies already
streaming go on, for at most ``RRR_DRAIN_TIMEOUT_S`` seconds (default 5) or until none is left;
then Ray stops as it does on its own. The arguments after ``serve`` are Ray's ``serve`` command
line, unchanged.
"""

from __future__ import annotations

import os
import signal
import sys
import time

import psutil

DRAIN_TIMEOUT_S = float(os.environ.get("RRR_DRAIN_TIMEOUT_S", "5"))


def haproxies(root: psutil.Process, binary: str) -> list[psutil.Process]:
    """The HAProxy processes among ``root``'s descendants (Ray's node processes and workers)."""
    found = []
    for proc in root.children(recursive=True):
        try:
            if proc.exe() == binary:
                found.append(proc)
        except psutil.Error:
            continue
    return found


def listening_ports(procs: list[psutil.Process]) -> set[int]:
    ports = set()
    for proc in procs:
        try:
            ports |= {c.laddr.port for c in proc.net_connections("tcp") if c.status == psutil.CONN_LISTEN}
        except psutil.Error:
            continue
    return ports


def open_requests(procs: list[psutil.Process], ports: set[int]) -> int:
    """Client connections that ``procs`` accepted on ``ports`` and still hold (replies streaming)."""
    count = 0
    for proc in procs:
        try:
            count += sum(1 for c in proc.net_connections("tcp")
                         if c.status == psutil.CONN_ESTABLISHED and c.laddr.port in ports)
        except psutil.Error:
            continue
    return count


def drain(timeout_s: float = DRAIN_TIMEOUT_S, procs: list[psutil.Process] | None = None) -> None:
    """Pause HAProxy processes (no new connections), then wait up to ``timeout_s`` for the
    connections they still serve. ``procs``: the processes to drain (default: every HAProxy among
    this process's descendants that runs ``$RRR_HAPROXY_BINARY``)."""
    if procs is None:
        binary = os.environ.get("RRR_HAPROXY_BINARY")
        if not binary:
            return
        procs = haproxies(psutil.Process(), os.path.realpath(binary))
    ports = listening_ports(procs)
    for proc in procs:
        try:
            proc.send_signal(signal.SIGTTOU)
        except psutil.Error:
            continue
    print(f"Got SIGTERM: {len(procs)} HAProxy paused, draining for at most {timeout_s:g} s...",
          file=sys.stderr, flush=True)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and open_requests(procs, ports):
        time.sleep(0.1)


def main(argv: list[str]) -> int:
    usage = "usage: python -m rrr_ray.graceful serve run CONFIG [serve run options]"
    if argv and argv[0] in ("-h", "--help"):
        print(usage + "\n\n" + (__doc__ or "").strip())
        return 0
    if not argv or argv[0] != "serve":
        print(usage, file=sys.stderr)
        return 2
    from ray.serve.scripts import cli

    try:
        cli.main(argv[1:], prog_name="serve", standalone_mode=False)
    except SystemExit as exc:  # ray.init's SIGTERM handler: sys.exit(SIGTERM)
        if exc.code == signal.SIGTERM:
            drain()
        raise
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
