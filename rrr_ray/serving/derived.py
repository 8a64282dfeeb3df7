"""What a serve config implies beyond its own file: the graph's args for one model and shape, the
environment of its replicas, and the vLLM engine settings its model deployment runs with.

Benchmarks and offline jobs start their own engines from these, so that what they measure is the
engine the graph serves with (``loadtest.compare``, ``jobs.report_default_model``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

from rrr_ray.paths import REPO

SERVE_CONFIG = REPO / "serve_config.yaml"
"""What ``make serve`` runs: the default model (SmolLM2-135M-Instruct + RRR LoRA) and its base."""
TINY_CONFIG = REPO / "serve_config.tiny.yaml"
"""The same graph on the 4.7M test model: end-to-end tests and serving-overhead benchmarks."""
PLACEMENTS = ("deployment", "ingress")
"""The graph's shapes: every stage in a deployment of its own (ingress -> post-processor -> model,
two Ray hops), or every stage inside the ingress replica (no Ray hop)."""


def graph_args(model: str, config: Optional[str | Path] = None, placement: Optional[str] = None) -> dict[str, Any]:
    """The application args of ``config`` (default serve_config.tiny.yaml), serving only its first model,
    from ``model``; ``placement`` (one of ``PLACEMENTS``) gives the post-processor and the model
    that placement instead of the config's."""
    from rrr_ray.serving.config import load_app_args

    app = load_app_args(Path(config or TINY_CONFIG))
    first = dict(app["models"][0])
    first["path"] = model
    if placement is not None:
        first["placement"] = placement
        app["postprocessor"] = {**app.get("postprocessor", {}), "placement": placement}
    app["models"] = [first]
    app["default_model"] = first["name"]
    return app


def graph_env(config: Optional[str | Path] = None) -> dict[str, str]:
    """The config's ``runtime_env.env_vars`` (default serve_config.tiny.yaml), with which the graph's
    replicas run their engines; empty when the config cannot be read."""
    from rrr_ray.serving.config import load_app_env

    try:
        return load_app_env(Path(config or TINY_CONFIG))
    except (OSError, ValueError):
        return {}


def engine_kwargs_from_graph(app: dict[str, Any]) -> dict[str, Any]:
    """The vLLM ``AsyncEngineArgs`` of the graph's first model (``EngineConfig.vllm_engine_args``,
    which the graph's engine uses), less the model's path and name."""
    from rrr_ray.serving.config import EngineConfig

    fields = {k: v for k, v in app["models"][0].items() if k in EngineConfig.model_fields}
    kwargs = EngineConfig(**fields).vllm_engine_args()
    for own in ("model", "served_model_name"):
        kwargs.pop(own)
    return kwargs


def served_engine_args(model: str, config: Optional[str | Path] = SERVE_CONFIG,
                       lora: Optional[str] = None) -> dict[str, Any]:
    """The engine arguments ``config``'s first model is served with (executor, bound CPUs and all),
    pointed at ``model``; ``lora`` (``NAME=PATH``) served by name on it."""
    app = graph_args(model, config)
    if lora:
        name, _, path = lora.partition("=")
        app["models"][0]["lora_modules"] = {name: path}
    return engine_kwargs_from_graph(app)
