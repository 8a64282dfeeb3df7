"""The serving graph's configuration: the ``args:`` of the application in serve_config.yaml.

Pydantic models with every field described, validated once when the graph is built
(``deployments.app.build_app``) and bound, typed, to the deployments; the defaults of the
graph's streaming and resources live here only; and the readers of a Serve config file.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any, Literal, Optional

import yaml
from pydantic import BaseModel, Field, model_validator

from rrr_ray.serving.adapter_options import AdapterOptions, RuntimeLoading
from rrr_ray.serving.batching import LoadAwareWindow
from rrr_ray.serving.hardware import resolve_dtype
from rrr_ray.serving.limits import HttpLimits
from rrr_ray.serving.vllm_compat.cpu_binding import pinned_executor_args


class StreamingOptions(BaseModel):
    """How tokens are batched across a Ray hop (``rrr_ray.serving.batching``): the graph's defaults."""

    stream_interval_ms: float = Field(20.0, ge=0, description="Shortest batch window for tokens crossing a "
                                      "Ray hop (the first token of a reply is always sent at once).")
    max_hop_messages_per_s: float = Field(200.0, ge=0, description="Message rate a model replica aims to stay "
                                          "under across all its streams; the window widens with load (0: fixed).")

    def window(self) -> LoadAwareWindow:
        return LoadAwareWindow(self.stream_interval_ms / 1000.0, self.max_hop_messages_per_s)


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


class EngineConfig(BaseModel):
    """One served model: where its weights are and how the engine runs it."""

    name: str = Field(description="Name clients use in 'model' (listed by /v1/models).")
    path: str = Field(description="Local HF model folder (or a hub id where a hub is reachable).")
    engine_class: str = Field("rrr_ray.serving.vllm_engine:VLLMEngine", description="Import path of the engine class.")
    dtype: str = Field("auto", description="Weights dtype: float32, bfloat16, float16, or auto: on a CPU node "
                       "bfloat16 where the CPU has AVX-512 BF16 or AMX, else float32; with CUDA the model's own "
                       "(rrr_ray.serving.hardware).")
    max_model_len: int = Field(1024, ge=16, description="Context length (prompt + reply) in tokens.")
    max_num_seqs: int = Field(32, ge=1, description="Most sequences batched per engine step.")
    lora_modules: dict[str, str] = Field(default_factory=dict, description="LoRA adapter name -> path; served as models.")
    max_lora_rank: int = Field(16, ge=1, description="Highest LoRA rank served (adapters above it get a 400).")
    adapters: Optional[AdapterOptions] = Field(None, description=(
        "LoRA adapters on demand (rrr_ray.serving.adapters): found by name in folders, loaded at run time, "
        "an LRU per replica. None: only lora_modules."))
    gpu_memory_utilization: float = Field(0.9, gt=0, le=1, description="GPU only.")
    enforce_eager: bool = Field(False, description="Disable CUDA graphs / compilation.")
    engine_kwargs: dict[str, Any] = Field(default_factory=dict, description="Extra vLLM AsyncEngineArgs.")
    engine_niceness: Optional[int] = Field(
        None, ge=-20, le=19,
        description="CPU nodes: the niceness of the engine's own processes (engine core, workers), every "
                    "thread. Ray starts replicas at niceness 15; 0 lets the engine's step loop take a CPU "
                    "before the Serve replicas beside it. Below the replica's own value needs CAP_SYS_NICE "
                    "(a warning otherwise). None leaves them as started.")
    engine_cpus: Optional[list[int]] = Field(
        None, min_length=1,
        description="CPU nodes: run the model inside vLLM's engine-core process, every thread bound to "
                    "these CPUs (rrr_ray.serving.vllm_compat.pinned_executor), instead of vLLM's default of a separate "
                    "worker process that hands each step back and forth with the engine core. The other "
                    "CPUs are left to HTTP, post-processing and clients. None keeps vLLM's executor (GPU).")
    description: str = Field("", description="Shown in /v1/models.")

    def served_names(self) -> list[str]:
        return [self.name, *self.lora_modules]

    def resolved_dtype(self) -> str:
        """The dtype the weights are loaded in on this machine (``auto`` chosen by the CPU's flags)."""
        return resolve_dtype(self.dtype)

    def vllm_engine_args(self) -> dict[str, Any]:
        """The ``AsyncEngineArgs`` of this model (JSON values only), ``engine_kwargs`` last."""
        kwargs: dict[str, Any] = dict(
            model=self.path, served_model_name=self.name, dtype=self.resolved_dtype(), max_model_len=self.max_model_len,
            max_num_seqs=self.max_num_seqs, enforce_eager=self.enforce_eager, disable_log_stats=True,
            gpu_memory_utilization=self.gpu_memory_utilization,
        )
        if self.adapters is not None:  # on demand: slots and LRU from the config, lora_modules among them
            kwargs.update(enable_lora=True, max_lora_rank=self.max_lora_rank, max_loras=self.adapters.max_loras,
                          max_cpu_loras=self.adapters.max_cpu_loras)
        elif self.lora_modules:
            kwargs.update(enable_lora=True, max_lora_rank=self.max_lora_rank, max_loras=len(self.lora_modules))
        kwargs.update(pinned_executor_args(self.engine_cpus))  # vllm_compat: CPU nodes
        kwargs.update(self.engine_kwargs)
        return kwargs


class ModelArgs(EngineConfig):
    """A served model: engine settings plus how its deployment is placed and scaled."""

    placement: Literal["deployment", "ingress"] = Field(
        "deployment", description="'deployment': replicas of its own (RRRModel:<name>), scaled apart; 'ingress': "
        "the engine runs inside each ingress replica, no Ray hop per request (needs the post-processor in the "
        "ingress; of `deployment`, only num_cpus and num_gpus are used, added to the ingress's).")
    deployment: DeploymentOptions = Field(default_factory=lambda: DeploymentOptions(num_cpus=0.4))
    heal: bool = Field(True, description="The default of the request option 'heal' for this model: a reply that "
                       "breaks the RRR format goes on from its valid part, guided (self-healing). False for a base "
                       "served to show its raw format compliance; its LoRA adapters (RRR fine-tunes) are healed.")
    guided_section_limits: bool = Field(True, description="Guided decoding ('guided': true) caps each section's "
                                        "length (SectionSpec.max_guided_chars), so a guided reply closes within a "
                                        "bounded number of characters. False: sections of any length, closed when the "
                                        "model closes them; the grammar then costs far less per token "
                                        "(docs/serving.md#guided-decoding).")


class AppArgs(StreamingOptions):
    """The ``args:`` of the application in serve_config.yaml."""

    models: list[ModelArgs] = Field(min_length=1, description="Served models; the first is the default.")
    default_model: Optional[str] = Field(None, description="Answers requests that name no model.")
    ingress: DeploymentOptions = Field(default_factory=DeploymentOptions)
    postprocessor: PostProcessorOptions = Field(default_factory=PostProcessorOptions)
    limits: HttpLimits = Field(default_factory=HttpLimits, description="What one HTTP request may ask: body and "
                               "header size, new tokens, messages, prompt length, stop strings.")
    runtime_adapters: RuntimeLoading = Field("with_api_keys", description=(
        "POST /v1/load_lora_adapter and /v1/unload_lora_adapter (models with 'adapters:'): 'on' (a server "
        "listening on loopback only), 'off', or 'with_api_keys': only while API keys are on (RRR_API_KEY)."))

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

    def streaming(self) -> StreamingOptions:
        return StreamingOptions(**self.model_dump(include=set(StreamingOptions.model_fields)))


def _load_app(config_path: Path, app_name: str) -> dict[str, Any]:
    """One application's entry in a Serve config file."""
    config = yaml.safe_load(Path(config_path).read_text())
    for app in config.get("applications", []):
        if app.get("name") == app_name:
            return app
    raise ValueError(f"{config_path}: no application named {app_name!r}")


def load_app_args(config_path: Path, app_name: str = "rrr") -> dict[str, Any]:
    """The ``args`` of one application in a Serve config file."""
    return copy.deepcopy(_load_app(config_path, app_name).get("args", {}))


def load_app_env(config_path: Path, app_name: str = "rrr") -> dict[str, str]:
    """The ``runtime_env.env_vars`` of one application in a Serve config file."""
    env_vars = (_load_app(config_path, app_name).get("runtime_env") or {}).get("env_vars") or {}
    return {k: str(v) for k, v in env_vars.items()}
