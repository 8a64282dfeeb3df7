"""Build the serving graph from ``serve_config.yaml`` arguments.

    ingress (HTTP) -> post-processor (RRR validation) -> model(s) (vLLM)

Each stage is one class and can run in a deployment of its own or inside the ingress replica:
- the post-processor: its own deployment, or ``postprocessor.placement: ingress`` (one Ray hop less);
- each model: its own deployment (``RRRModel:<name>``, scaled apart; LoRA adapters are served by
  their base model's deployment), or ``placement: ingress`` (the engine runs in every ingress
  replica, whose resources then include the model's: no Ray hop between HTTP and the engine).
The CPU config puts both in the ingress; the GPU config gives each a deployment of its own.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal, Optional

from pydantic import BaseModel, Field, model_validator
from ray.serve import Application

from deployments.ingress import RRRIngress
from deployments.model import RRRModel
from deployments.postprocessor import RRRPostProcessor
from rrr_ray.serving.engine import EngineConfig

REPO = Path(__file__).resolve().parent.parent


class DeploymentOptions(BaseModel):
    """Ray Serve options of one deployment (see Ray Serve's deployment docs)."""

    num_cpus: float = Field(0.1, ge=0, description="CPUs reserved per replica (fractional on small machines).")
    num_gpus: float = Field(0, ge=0, description="GPUs per replica (1 for a 7B model on a GPU node).")
    num_replicas: Optional[int] = Field(None, ge=1, description="Fixed replicas; leave out to autoscale.")
    autoscaling_config: Optional[dict[str, Any]] = Field(
        None, description="min_replicas, max_replicas, target_ongoing_requests, ...")
    max_ongoing_requests: Optional[int] = Field(None, ge=1, description="Concurrent requests per replica.")
    max_queued_requests: Optional[int] = Field(None, description="Queued requests before 503s (-1: no limit).")
    access_log: bool = Field(True, description="Serve's per-request access log line in the replica's log file.")

    def serve_options(self, name: str) -> dict[str, Any]:
        opts: dict[str, Any] = {"name": name, "ray_actor_options": {"num_cpus": self.num_cpus, "num_gpus": self.num_gpus}}
        if self.autoscaling_config is not None:
            opts["autoscaling_config"] = self.autoscaling_config
        elif self.num_replicas is not None:
            opts["num_replicas"] = self.num_replicas
        if self.max_ongoing_requests is not None:
            opts["max_ongoing_requests"] = self.max_ongoing_requests
        if self.max_queued_requests is not None:
            opts["max_queued_requests"] = self.max_queued_requests
        if not self.access_log:
            opts["logging_config"] = {"enable_access_log": False}
        return opts


class PostProcessorOptions(DeploymentOptions):
    """Where the streaming RRR post-processor runs, and its deployment's options when it has one."""

    placement: Literal["deployment", "ingress"] = Field(
        "deployment", description="'deployment': replicas of its own, scaled apart from the ingress; 'ingress': "
        "inside each ingress replica, which saves one Ray hop per request (the other options are then unused).")


class ModelArgs(EngineConfig):
    """A served model: engine settings plus how its deployment is placed and scaled."""

    placement: Literal["deployment", "ingress"] = Field(
        "deployment", description="'deployment': replicas of its own (RRRModel:<name>), scaled apart; 'ingress': "
        "the engine runs inside each ingress replica, no Ray hop per request (needs the post-processor in the "
        "ingress; of `deployment`, only num_cpus and num_gpus are used, added to the ingress's).")
    deployment: DeploymentOptions = Field(default_factory=lambda: DeploymentOptions(num_cpus=0.4))


class AppArgs(BaseModel):
    """The ``args:`` of the application in serve_config.yaml."""

    models: list[ModelArgs] = Field(min_length=1, description="Served models; the first is the default.")
    default_model: Optional[str] = Field(None, description="Answers requests that name no model.")
    stream_interval_ms: float = Field(20.0, ge=0, description="Shortest batch window for tokens crossing a "
                                      "Ray hop (the first token of a reply is always sent at once).")
    max_hop_messages_per_s: float = Field(200.0, ge=0, description="Message rate a model replica aims to stay "
                                          "under across all its streams; the window widens with load (0: fixed).")
    ingress: DeploymentOptions = Field(default_factory=DeploymentOptions)
    postprocessor: PostProcessorOptions = Field(default_factory=PostProcessorOptions)

    @model_validator(mode="after")
    def _names_unique(self) -> "AppArgs":
        names = [n for m in self.models for n in m.served_names()]
        if len(names) != len(set(names)):
            raise ValueError(f"served model names must be unique: {names}")
        if self.default_model is not None and self.default_model not in names:
            raise ValueError(f"default_model {self.default_model!r} is not among {names}")
        in_ingress = [m.name for m in self.models if m.placement == "ingress"]
        if in_ingress and self.postprocessor.placement != "ingress":
            raise ValueError(f"models {in_ingress} have placement 'ingress', which needs the post-processor there "
                             "too (postprocessor.placement: ingress)")
        return self


def resolve_path(path: str) -> str:
    """Relative model paths are relative to the repository, wherever the replica runs."""
    p = Path(path)
    if p.is_absolute() or not (REPO / p).exists():
        return path  # absolute, or a hub id such as mistralai/Mistral-7B-Instruct-v0.3
    return str(REPO / p)


def build_app(args: dict[str, Any]) -> Application:
    config = AppArgs.model_validate(args)
    streaming = {"stream_interval_ms": config.stream_interval_ms,
                 "max_hop_messages_per_s": config.max_hop_messages_per_s}
    handles: dict[str, Any] = {}
    engines: list[dict[str, Any]] = []  # run inside the ingress
    cards: list[dict[str, Any]] = []
    ingress_options = config.ingress.serve_options("RRRIngress")
    resources = ingress_options["ray_actor_options"]
    for model in config.models:
        engine = model.model_dump(exclude={"deployment", "placement"})
        engine["path"] = resolve_path(model.path)
        engine["lora_modules"] = {k: resolve_path(v) for k, v in model.lora_modules.items()}
        if model.placement == "ingress":
            engines.append(engine)
            resources["num_cpus"] = round(resources["num_cpus"] + model.deployment.num_cpus, 4)
            resources["num_gpus"] = round(resources["num_gpus"] + model.deployment.num_gpus, 4)
        else:
            bound = RRRModel.options(**model.deployment.serve_options(f"RRRModel:{model.name}")).bind(
                engine=engine, **streaming)
            handles.update((name, bound) for name in model.served_names())
        cards.append({"name": model.name, "root": model.path, "description": model.description})
        cards += [{"name": n, "root": p, "parent": model.name, "description": f"LoRA adapter on {model.name}"}
                  for n, p in model.lora_modules.items()]
    ingress = RRRIngress.options(**ingress_options)
    if config.postprocessor.placement == "ingress":
        return ingress.bind(cards, config.default_model, models=handles, engines=engines, **streaming)
    postprocessor = RRRPostProcessor.options(**config.postprocessor.serve_options("RRRPostProcessor")).bind(handles)
    return ingress.bind(cards, config.default_model, postprocessor=postprocessor)
