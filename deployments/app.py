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

from typing import Any

from ray.serve import Application

from deployments.ingress import RRRIngress
from deployments.model import RRRModel
from deployments.postprocessor import RRRPostProcessor
from rrr_ray.paths import REPO, resolve
from rrr_ray.serving.adapters import AdapterServing, is_uri
from rrr_ray.serving.config import AppArgs, EngineConfig, ModelArgs
from rrr_ray.serving.service import ServedModel


def engine_config(model: ModelArgs) -> EngineConfig:
    """A model's engine settings, its relative paths resolved against the repository (wherever
    the replica runs)."""
    fields = model.model_dump(include=set(EngineConfig.model_fields))
    fields.update(path=resolve(model.path), lora_modules={k: resolve(v) for k, v in model.lora_modules.items()})
    if model.adapters is not None:  # adapter folders: relative to the repository, existing or not yet
        fields["adapters"] = model.adapters.model_copy(update={
            "folders": [f if is_uri(f) else str(REPO / f) for f in model.adapters.folders]})
    return EngineConfig.model_validate(fields)


def served_model_entries(model: ModelArgs) -> list[ServedModel]:
    """The names clients may ask for of a model: the model, and each LoRA adapter on it (which
    share its guided-decoding caps and its dtype, as resolved on this machine; RRR fine-tunes, they
    are healed by default)."""
    shared = {"guided_section_limits": model.guided_section_limits, "dtype": model.resolved_dtype()}
    return [ServedModel(name=model.name, root=model.path, description=model.description, heal=model.heal, **shared),
            *(ServedModel(name=n, root=p, parent=model.name, description=f"LoRA adapter on {model.name}", **shared)
              for n, p in model.lora_modules.items())]


def build_app(args: dict[str, Any]) -> Application:
    """The graph of ``args`` (the application's ``args:`` in a Serve config), validated once here;
    each deployment gets its typed part through ``.bind()`` and its resources through ``.options()``."""
    config = AppArgs.model_validate(args)
    streaming = config.streaming()
    handles: dict[str, Any] = {}
    engines: list[EngineConfig] = []  # run inside the ingress
    served: list[ServedModel] = []
    with_adapters: list[EngineConfig] = []  # the models' configs, for the adapter catalog
    multiplexed: list[str] = []  # models whose adapters are routed by Serve model multiplexing
    ingress_options = config.ingress.serve_options("RRRIngress")
    resources = ingress_options["ray_actor_options"]
    for model in config.models:
        engine = engine_config(model)
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
        served += served_model_entries(model)
        if model.adapters is not None or model.lora_modules:
            with_adapters.append(engine)
    ingress = RRRIngress.options(**ingress_options)
    adapters = AdapterServing(models=with_adapters, runtime_loading=config.runtime_adapters, multiplexed=multiplexed)
    common = dict(served=served, default_model=config.default_model, streaming=streaming, limits=config.limits,
                  adapters=adapters)
    if config.postprocessor.placement == "ingress":
        return ingress.bind(**common, models=handles, engines=engines)
    postprocessor = RRRPostProcessor.options(**config.postprocessor.serve_options("RRRPostProcessor")).bind(
        models=handles, multiplexed=multiplexed)
    return ingress.bind(**common, postprocessor=postprocessor)
