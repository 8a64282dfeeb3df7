"""Which process holds a port: ``make serve`` checks the ports of its config before it starts.

``python -m rrr_ray.serving.ports serve_config.yaml`` exits 0 when the config's HTTP port and
HAProxy's stats and metrics ports are free, and otherwise prints one line per taken port naming
the process that listens on it (exit 1).
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import psutil
import yaml

HAPROXY_STATS_PORT = 8404  # Ray Serve's defaults (RAY_SERVE_HAPROXY_STATS_PORT, ..._METRICS_PORT)
HAPROXY_METRICS_PORT = 9101


@dataclass(frozen=True)
class PortHolder:
    port: int
    pid: Optional[int]
    command: str  # empty when the process cannot be read

    def describe(self, what: str) -> str:
        who = f"pid {self.pid} ({self.command})" if self.pid else "another user's process"
        stop = f"; stop it (kill {self.pid}) or change the port" if self.pid else "; change the port"
        return f"error: port {self.port} ({what}) is taken by {who}{stop}"


def port_holder(port: int) -> Optional[PortHolder]:
    """The process listening on TCP ``port`` (any address), or None when nothing listens there."""
    for conn in psutil.net_connections(kind="tcp"):
        if conn.status == psutil.CONN_LISTEN and conn.laddr and conn.laddr.port == port:
            command = ""
            if conn.pid:
                try:
                    command = " ".join(psutil.Process(conn.pid).cmdline())[:160]
                except psutil.Error:
                    pass
            return PortHolder(port, conn.pid, command)
    return None


def serve_ports(config: Path) -> dict[int, str]:
    """The ports ``serve run config`` listens on: port -> what it is for."""
    options = (yaml.safe_load(config.read_text()) or {}).get("http_options") or {}
    ports = {int(options.get("port", 8000)): f"{config.name} http_options.port"}
    if os.environ.get("RAY_SERVE_ENABLE_HA_PROXY") == "1":
        ports[int(os.environ.get("RAY_SERVE_HAPROXY_STATS_PORT", HAPROXY_STATS_PORT))] = "HAProxy stats"
        ports[int(os.environ.get("RAY_SERVE_HAPROXY_METRICS_PORT", HAPROXY_METRICS_PORT))] = "HAProxy metrics"
    return ports


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print("usage: python -m rrr_ray.serving.ports SERVE_CONFIG.yaml", file=sys.stderr)
        return 2
    config = Path(argv[0])
    try:
        ports = serve_ports(config)
    except (OSError, yaml.YAMLError, ValueError, AttributeError) as exc:
        print(f"error: cannot read the ports of {config}: {exc}", file=sys.stderr)
        return 2
    taken = [(holder, what) for port, what in ports.items() if (holder := port_holder(port))]
    for holder, what in taken:
        print(holder.describe(what), file=sys.stderr)
    return 1 if taken else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
