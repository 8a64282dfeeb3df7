"""Build the serving graph from ``serve_config.yaml`` arguments.

    ingress (HTTP) -> post-processor (RRR validation) -> model(s) (vLLM)

Each stage is one class and can run in a deployment of its own or inside the ingress replica:
- the post-processor: its own deployment, or ``postprocessor.placement: ingress`` (one Ray hop less);
- each model: its own deployment (``RRRModel:<name>``, scaled apart; LoRA adapters are served by
  their base model's deployment), or ``placement: ingress`` (the engine runs in every ingress
  replica, whose resources then include the model's: no Ray hop between HTTP and the engine).
serve_config.yaml and the GPU config give each a deployment of its own; serve_config.single.yaml
puts both in the ingress.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ray.serve import Application

from deployments.ingress import RRRIngress
from deployments.model import RRRModel
from deployments.postprocessor import RRRPostProcessor
from rrr_ray.serving.config import AppArgs, ModelArgs
from rrr_ray.serving.engine import EngineConfig

REPO = Path(__file__).resolve().parent.parent  # the checkout these deployments run from


def resolve_path(path: str) -> str:
    """Relative model paths are relative to the repository, wherever the replica runs."""
    p = Path(path)
    if p.is_absolute() or not (REPO / p).exists():
        return path  # absolute, or a hub id such as mistralai/Mistral-7B-Instruct-v0.3
    return str(REPO / p)


def model_cards(model: ModelArgs) -> list[dict[str, Any]]:
    """The ``ServedModel`` fields of a model and of each LoRA adapter on it (which share its
    guided-decoding caps; RRR fine-tunes, they are healed by default)."""
    guided = {"guided_section_limits": model.guided_section_limits}
    return [{"name": model.name, "root": model.path, "description": model.description, "heal": model.heal, **guided},
            *({"name": n, "root": p, "parent": model.name, "description": f"LoRA adapter on {model.name}", **guided}
              for n, p in model.lora_modules.items())]


def build_app(args: dict[str, Any]) -> Application:
    config = AppArgs.model_validate(args)
    streaming = config.streaming().model_dump()
    handles: dict[str, Any] = {}
    multiplexed: list[str] = []  # models whose adapters are routed by Serve model multiplexing
    engines: list[dict[str, Any]] = []  # run inside the ingress
    cards: list[dict[str, Any]] = []
    adapter_models: list[dict[str, Any]] = []  # the models' configs, for the adapter catalog
    ingress_options = config.ingress.serve_options("RRRIngress")
    resources = ingress_options["ray_actor_options"]
    for model in config.models:
        engine = model.model_dump(include=set(EngineConfig.model_fields))
        engine["path"] = resolve_path(model.path)
        engine["lora_modules"] = {k: resolve_path(v) for k, v in model.lora_modules.items()}
        if model.adapters is not None:  # adapter folders: relative to the repository, existing or not yet
            engine["adapters"]["folders"] = [f if "://" in f else str(REPO / f) for f in model.adapters.folders]
        if model.placement == "ingress":
            engines.append(engine)
            resources["num_cpus"] = round(resources["num_cpus"] + model.deployment.num_cpus, 4)
            resources["num_gpus"] = round(resources["num_gpus"] + model.deployment.num_gpus, 4)
        else:
            bound = RRRModel.options(**model.deployment.serve_options(f"RRRModel:{model.name}")).bind(
                engine=engine, streaming=streaming)
            handles.update((name, bound) for name in model.served_names())
            if model.adapters is not None and model.adapters.multiplexed:
                multiplexed.append(model.name)
        cards += model_cards(model)
        if model.adapters is not None or model.lora_modules:
            adapter_models.append(engine)
    ingress = RRRIngress.options(**ingress_options)
    limits = config.limits.model_dump()
    adapters = {"models": adapter_models, "runtime_loading": config.runtime_adapters, "root": str(REPO),
                "multiplexed": multiplexed}
    if config.postprocessor.placement == "ingress":
        return ingress.bind(cards, config.default_model, streaming, models=handles, engines=engines, limits=limits,
                            adapters=adapters)
    postprocessor = RRRPostProcessor.options(**config.postprocessor.serve_options("RRRPostProcessor")).bind(
        handles, multiplexed)
    return ingress.bind(cards, config.default_model, streaming, postprocessor=postprocessor, limits=limits,
                        adapters=adapters)
