"""The settings of LoRA adapters on demand (``rrr_ray.serving.adapters``): a model's ``adapters:``
and the graph's ``runtime_adapters`` switch."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field, model_validator

RuntimeLoading = Literal["on", "off", "with_api_keys"]
"""``POST /v1/load_lora_adapter`` and ``/v1/unload_lora_adapter``: always, never, or only when API
keys are on (``RRR_API_KEY``; the routes then need a key like every other)."""


class AdapterOptions(BaseModel):
    """LoRA adapters served on a model, found and loaded on demand."""

    folders: list[str] = Field(default_factory=list, description=(
        "Where adapters are found by name: <folder>/<adapter>/adapter_config.json is served as "
        "'<model>:<adapter>'. Local paths (relative to the repository) or pyarrow.fs URIs (s3://, gs://, "
        "hdfs://, file://)."))
    max_loras: int = Field(2, ge=1, description="Adapters in one engine batch (vLLM max_loras: GPU slots).")
    max_cpu_loras: int = Field(4, ge=1, description=(
        "Adapters kept loaded per replica, least recently used evicted first (vLLM max_cpu_loras; Ray "
        "Serve's max_num_models_per_replica)."))
    multiplexed: bool = Field(True, description=(
        "Route a request for an adapter to a replica that holds it (Ray Serve model multiplexing). False: "
        "Serve's default routing; every replica loads what it is sent."))
    base_aliases: list[str] = Field(default_factory=list, description=(
        "Other names of this model accepted in an adapter's base_model_name_or_path (e.g. the hub id of a "
        "local copy); the model's name and folder name are always accepted."))

    @model_validator(mode="after")
    def _slots_fit(self) -> "AdapterOptions":
        if self.max_cpu_loras < self.max_loras:
            raise ValueError(f"max_cpu_loras ({self.max_cpu_loras}) must be >= max_loras ({self.max_loras})")
        return self
