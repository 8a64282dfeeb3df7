"""The rrr-tiny models under ``models/`` (the 4.7M test model), rebuilt from scratch: base model,
fine-tunes (full and LoRA, checkpoints picked by measured format compliance), merge, held-out
measurement, model cards and ``models/compliance.json``. ``jobs.build_tiny_model`` calls :func:`build_tiny_models`.

Variants: a full fine-tune, a LoRA with embed_tokens/lm_head in modules_to_save, and a
projections-only LoRA (shipped unmerged as ``rrr-tiny-lora``, servable by vLLM's LoRA support).
The default served model (``rrr-tiny``) is the variant with the highest held-out compliance among
the full fine-tune and the merged LoRA adapters.
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from pathlib import Path
from typing import Any

from pydantic import BaseModel, Field

from rrr_ray.data.convert import DEFAULT_SEED_PATHS
from rrr_ray.data.prompts import DEFAULT_EVAL_PROMPTS


log = logging.getLogger(__name__)

MTS_MODULES = ["embed_tokens", "lm_head"]
"""The modules the ``lora_mts`` variant trains in full (the tag tokens are new to the base's chat)."""


class TinyBuildConfig(BaseModel):
    """What ``jobs.build_tiny_model`` builds."""

    models_dir: str = Field("models", description="Where rrr-tiny*, compliance.json go.")
    work_dir: str = Field("out/tiny_model", description="Scratch space (Ray storage, checkpoints).")
    data: list[str] = Field(default_factory=lambda: list(DEFAULT_SEED_PATHS),
                            description="Dialogue files/folders or saved HF datasets to train on.")
    eval_prompts: str = Field(DEFAULT_EVAL_PROMPTS, description="Held-out prompts the variants are measured on.")
    eval_samples: int = Field(3, ge=1, description="Samples per held-out prompt.")
    base_minutes: float = Field(3.0, gt=0, description="Base pretraining budget, in minutes.")
    full_epochs: float = Field(3.0, gt=0, description="Full fine-tune epochs.")
    full_lr: float = Field(1e-3, gt=0, description="Full fine-tune learning rate.")
    lora_epochs: float = Field(3.0, gt=0, description="Epochs of the LoRA with modules_to_save.")
    lora_lr: float = Field(3e-3, gt=0, description="LoRA learning rate.")
    lora_r: int = Field(16, ge=1, description="LoRA rank (alpha is the same).")
    lora_plain_epochs: float = Field(2.0, description=(
        "Epochs of the projections-only LoRA (the adapter shipped for vLLM LoRA; 0: skip)."))
    num_workers: int = Field(2, ge=1, description="Ray Train workers.")
    save_steps: int = Field(25, ge=1, description="Checkpoint (and measure compliance) every this many steps.")
    skip_base: bool = Field(False, description="Reuse models_dir/rrr-tiny-base.")
    skip_lora: bool = Field(False, description="Train no LoRA variant (the full fine-tune only).")
    max_mb: float = Field(25.0, gt=0, description="Fail when models_dir grows past this many MB.")
    seed: int = Field(0, description="Seed of every training and measurement.")


def _minutes_since(t: float) -> float:
    return round((time.monotonic() - t) / 60, 2)


def _base_model(cfg: TinyBuildConfig, base_dir: Path, times: dict[str, float]) -> dict[str, Any]:
    """Pretrain the base model (or, with ``skip_base``, read the summary of the existing one)."""
    from rrr_ray.training.base import BaseModelConfig, build_base_model
    from rrr_ray.training.loop import LoopConfig

    if cfg.skip_base:
        return json.loads((base_dir / "training_summary.json").read_text())
    t = time.monotonic()
    summary = build_base_model(BaseModelConfig(
        data=cfg.data, output_dir=str(base_dir),
        loop=LoopConfig(epochs=60, max_minutes=cfg.base_minutes, lr=2e-3, all_tokens=True, seed=cfg.seed)))
    times["base_minutes"] = _minutes_since(t)
    return summary


def _fine_tunes(cfg: TinyBuildConfig, base_dir: Path, work: Path,
                times: dict[str, float]) -> tuple[dict[str, Any], dict[str, dict[str, Any]]]:
    """The full fine-tune and the LoRA variants on a local Ray cluster; their summaries."""
    import ray

    from rrr_ray.training.finetune import fine_tune
    from rrr_ray.training.local_ray import init_local_ray
    from rrr_ray.training.sft import LoraSettings, SFTJobConfig

    init_local_ray(max(2, cfg.num_workers))
    common = dict(base_model=str(base_dir.resolve()), dataset=[str(Path(d).resolve()) for d in cfg.data],
                  num_workers=cfg.num_workers, save_steps=cfg.save_steps, eval_prompts=None,
                  val_prompts=24, val_samples=2, prefix_turns=1, single_turns=True, batch_size=4, seed=cfg.seed)
    t = time.monotonic()
    full = fine_tune(SFTJobConfig(output_dir=str(work / "full"), method="full", epochs=cfg.full_epochs,
                                  learning_rate=cfg.full_lr, **common))
    times["full_finetune_minutes"] = _minutes_since(t)
    # LoRA with the embeddings and output layer trained in full (modules_to_save), and on the
    # projections only (servable unmerged by vLLM LoRA)
    loras: dict[str, dict[str, Any]] = {}
    if not cfg.skip_lora:
        for name, mts, epochs in (("lora_mts", MTS_MODULES, cfg.lora_epochs), ("lora", [], cfg.lora_plain_epochs)):
            if epochs <= 0:
                continue
            t = time.monotonic()
            loras[name] = fine_tune(SFTJobConfig(
                output_dir=str(work / name), method="lora", epochs=epochs, learning_rate=cfg.lora_lr,
                lora=LoraSettings(r=cfg.lora_r, alpha=cfg.lora_r, modules_to_save=mts), **common))
            times[f"{name}_minutes"] = _minutes_since(t)
    ray.shutdown()
    return full, loras


def _candidates(base_dir: Path, work: Path, loras: dict[str, Any]) -> dict[str, Path]:
    """The servable bf16 model folder of each variant: the full fine-tune and the merged adapters."""
    from rrr_ray.training.merge import cast_adapter, load_causal_lm, merge_adapter
    from rrr_ray.training.modeling import save_model_folder

    candidates = {"full": work / "full_bf16"}
    m, tok = load_causal_lm(work / "full" / "model")
    save_model_folder(m, tok, candidates["full"], "bfloat16")
    for name in loras:
        adapter = work / name / "adapter"
        cast_adapter(adapter, "bfloat16")
        candidates[f"{name}_merged"] = merge_adapter(base_dir, adapter, work / f"{name}_merged", "bfloat16")
    return candidates


def _ship(best: Path, tiny_dir: Path, plain_adapter: Path | None, lora_dir: Path) -> None:
    """Copy the default variant to ``tiny_dir`` and the projections-only adapter to ``lora_dir``."""
    from rrr_ray.training.merge import set_adapter_base

    if tiny_dir.exists():
        shutil.rmtree(tiny_dir)
    shutil.copytree(best, tiny_dir)
    if lora_dir.exists():
        shutil.rmtree(lora_dir)
    if plain_adapter is not None:
        shutil.copytree(plain_adapter, lora_dir)
        set_adapter_base(lora_dir, "models/rrr-tiny-base")


def _without_checkpoints(summary: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in summary.items() if k != "checkpoints"}


def build_tiny_models(cfg: TinyBuildConfig, command: str) -> dict[str, Any]:
    """Rebuild every model under ``cfg.models_dir``; write ``compliance.json`` (the measured report,
    ``command`` being how it was made) and the model cards. Returns a one-screen summary."""
    from rrr_ray.training.cards import write_cards
    from rrr_ray.data.prompts import load_prompts
    from rrr_ray.training.merge import evaluate_folder
    from rrr_ray.training.modeling import folder_size
    from rrr_ray.training.sft import LoraSettings

    t_start = time.monotonic()
    models, work = Path(cfg.models_dir), Path(cfg.work_dir).resolve()
    base_dir, tiny_dir, lora_dir = models / "rrr-tiny-base", models / "rrr-tiny", models / "rrr-tiny-lora"
    work.mkdir(parents=True, exist_ok=True)
    prompts = load_prompts(cfg.eval_prompts)
    times: dict[str, float] = {}
    base_summary = _base_model(cfg, base_dir, times)
    full, loras = _fine_tunes(cfg, base_dir, work, times)

    t = time.monotonic()
    n = cfg.eval_samples
    results = {"base": evaluate_folder(base_dir, prompts, samples_per_prompt=n, seed=cfg.seed)}
    candidates = _candidates(base_dir, work, loras)
    for name, folder in candidates.items():
        results[name] = evaluate_folder(folder, prompts, samples_per_prompt=n, seed=cfg.seed)
    times["evaluation_minutes"] = _minutes_since(t)
    best = max(candidates, key=lambda k: results[k]["compliance"])
    log.info("default variant: %s (compliance %.3f)", best, results[best]["compliance"])
    _ship(candidates[best], tiny_dir, work / "lora" / "adapter" if "lora" in loras else None, lora_dir)
    times["total_minutes"] = _minutes_since(t_start)

    sizes = {p.name: folder_size(p) for p in (base_dir, tiny_dir, lora_dir) if p.exists()}
    report = {
        "eval_prompts": cfg.eval_prompts, "prompts": len(prompts), "samples_per_prompt": n,
        "temperature": 0.7, "rule": "strict: rrr_ray.validate(reply).valid on the raw reply, no repair",
        "default_model": "models/rrr-tiny", "default_variant": best,
        "parameters": base_summary.get("parameters"),
        "compliance": {k: v["compliance"] for k, v in results.items()},
        "repaired_compliance": {k: v["repaired_compliance"] for k, v in results.items()},
        "by_category": {k: v["by_category"] for k, v in results.items()},
        "errors": {k: v["errors"] for k, v in results.items()},
        "examples": {k: v["examples"] for k, v in results.items()},
        "training": {"base": base_summary, "full": _without_checkpoints(full),
                     "full_checkpoints": full.get("checkpoints"),
                     **{name: _without_checkpoints(res) for name, res in loras.items()},
                     **{f"{name}_checkpoints": res.get("checkpoints") for name, res in loras.items()},
                     "lora_settings": {"r": cfg.lora_r, "alpha": cfg.lora_r, "dropout": LoraSettings().dropout,
                                       "target_modules": "all seven projections",
                                       "modules_to_save": {"lora_mts": MTS_MODULES, "lora": []}}},
        "times_minutes": times, "sizes_bytes": sizes, "total_bytes": sum(sizes.values()),
        "command": command,
    }
    previous = models / "compliance.json"
    if previous.exists():  # measurements of other recipes (recorded by hand) survive a rebuild
        report["experiments"] = json.loads(previous.read_text()).get("experiments", [])
    previous.write_text(json.dumps(report, indent=2))
    write_cards(models, report)
    return {"default": f"models/rrr-tiny ({best})", **{f"compliance_{k}": v for k, v in report["compliance"].items()},
            **times, "models_mb": round(folder_size(models) / 1e6, 2)}
