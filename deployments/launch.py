"""Start the serving graph from Python (tests, benchmarks): the same ``build_app`` as ``serve run``."""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import time
from typing import Any, Optional

import httpx

from rrr_ray.env import apply_cpu_node_env
from rrr_ray.paths import REPO

logger = logging.getLogger(__name__)

DEFAULT_CONFIG = REPO / "serve_config.yaml"
"""What ``make serve`` runs: the default model (SmolLM2-135M-Instruct + RRR LoRA) and its base."""
TINY_CONFIG = REPO / "serve_config.tiny.yaml"
"""The same graph on the 4.7M test model: end-to-end tests and serving-overhead benchmarks."""


_before_graph: set[int] = set()  # this process's children before start_graph: not the graph's


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_graph(args: dict[str, Any], port: Optional[int] = None, num_cpus: int = 2,
                timeout_s: float = 300, env: Optional[dict[str, str]] = None) -> str:
    """Start a local Ray (if none is connected) and Serve, deploy the graph, wait until healthy.

    ``env``: environment for the replicas (a config's ``runtime_env.env_vars``, see
    ``load_app_env``); values already in this process's environment win. Returns the base URL.
    Stop with ``stop_graph()``.
    """
    apply_cpu_node_env(env)
    # HAProxy's stats and metrics ports are machine-wide: pick free ones, so that this graph
    # can run beside `make serve`.
    os.environ.setdefault("RAY_SERVE_HAPROXY_STATS_PORT", str(free_port()))
    os.environ.setdefault("RAY_SERVE_HAPROXY_METRICS_PORT", str(free_port()))
    import psutil
    import ray
    from ray import serve

    from deployments.app import build_app

    port = port or free_port()
    _before_graph.update(p.pid for p in psutil.Process().children(recursive=True))
    if not ray.is_initialized():
        ray.init(address="local", num_cpus=num_cpus, include_dashboard=False, log_to_driver=False)
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    started = time.perf_counter()
    serve.run(build_app(args), name="rrr", route_prefix="/", blocking=False)
    url = f"http://127.0.0.1:{port}"
    deadline = started + timeout_s
    while time.perf_counter() < deadline:
        try:
            if httpx.get(f"{url}/health", timeout=5).status_code == 200:
                logger.info("graph healthy at %s after %.1f s", url, time.perf_counter() - started)
                return url
        except httpx.HTTPError:
            pass
        time.sleep(1)
    raise TimeoutError(f"the serving graph did not become healthy within {timeout_s} s")


def stop_graph(grace_s: float = 15.0) -> None:
    """Shut Serve and the local Ray down; then stop any process they started that outlives them
    (an HAProxy that Serve reloaded with ``-sf`` can keep the HTTP port), after ``grace_s``."""
    import psutil
    import ray
    from ray import serve

    started = [p for p in psutil.Process().children(recursive=True) if p.pid not in _before_graph]
    try:
        serve.shutdown()
    finally:
        ray.shutdown()
    _, alive = psutil.wait_procs(started, timeout=grace_s)
    for process in alive:
        try:
            logger.warning("stopping %s (pid %d), left running by the graph", process.name(), process.pid)
            process.terminate()
        except psutil.NoSuchProcess:
            pass
    _, alive = psutil.wait_procs(alive, timeout=5)
    for process in alive:
        with contextlib.suppress(psutil.NoSuchProcess):
            process.kill()
