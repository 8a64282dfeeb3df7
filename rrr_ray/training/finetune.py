"""One fine-tune from start to report: Ray Train run, best checkpoint exported, held-out compliance
of the result against its base. ``jobs.train_lora`` and ``jobs.build_tiny_model`` call it."""

from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path
from typing import Any, Optional

from rrr_ray.training.selection import CURVE_FIELDS
from rrr_ray.training.sft import SFTJobConfig

log = logging.getLogger(__name__)


def _init_ray(num_workers: int, num_cpus: Optional[int]) -> bool:
    """Connect to Ray unless connected: to ``RAY_ADDRESS`` when set, else to a new local cluster of
    ``num_cpus`` CPUs (default ``num_workers``). Returns whether a local cluster was started."""
    import ray

    if ray.is_initialized():
        return False
    if os.environ.get("RAY_ADDRESS"):
        ray.init()
        return False
    from rrr_ray.training.local_ray import init_local_ray

    init_local_ray(num_cpus or max(num_workers, 1))
    return True


def _compliance_report(cfg: SFTJobConfig, exported: Path) -> dict[str, Any]:
    """Compliance of the exported adapter (or model) and of its base on ``cfg.eval_prompts``."""
    from rrr_ray.data.prompts import load_prompts
    from rrr_ray.training.merge import evaluate_folder

    prompts = load_prompts(cfg.eval_prompts)
    if cfg.method == "lora":
        tuned = evaluate_folder(cfg.base_model, prompts, adapter_dir=exported, samples_per_prompt=cfg.eval_samples)
    else:
        tuned = evaluate_folder(exported, prompts, samples_per_prompt=cfg.eval_samples)
    base = evaluate_folder(cfg.base_model, prompts, samples_per_prompt=cfg.eval_samples)
    return {"prompts": cfg.eval_prompts, "samples_per_prompt": cfg.eval_samples, "base": base, "tuned": tuned}


def fine_tune(cfg: SFTJobConfig, num_cpus: Optional[int] = None) -> dict[str, Any]:
    """Train, export the best checkpoint and, with ``cfg.eval_prompts``, measure it against the base.

    Writes ``train_result.json`` (and ``compliance.json``) to ``cfg.output_dir`` and returns the
    summary, with the per-checkpoint history under ``"checkpoints"``. Ray is used as found, or
    started locally (``num_cpus``) and shut down at the end.
    """
    import ray

    from rrr_ray.training.sft import best_checkpoint, export_checkpoint, resolve_backend, run_training

    out = Path(cfg.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    started_ray = _init_ray(cfg.num_workers, num_cpus)
    t0 = time.monotonic()
    try:
        result = run_training(cfg)
    finally:
        train_minutes = round((time.monotonic() - t0) / 60, 2)
    if result.error:
        raise RuntimeError(f"training failed: {result.error}")
    ckpt, metrics = best_checkpoint(result, cfg.select_by, cfg.min_val_compliance)
    exported = export_checkpoint(ckpt, cfg)
    history = sorted(({k: m.get(k) for k in CURVE_FIELDS} for _, m in (result.best_checkpoints or [])),
                     key=lambda c: c["step"] or 0)
    summary: dict[str, Any] = {
        "method": cfg.method, "backend": resolve_backend(cfg.backend), "num_workers": cfg.num_workers,
        "output": str(exported), "chosen_step": metrics.get("step"), "select_by": cfg.select_by,
        "min_val_compliance": cfg.min_val_compliance,
        "chosen_val_compliance": metrics.get("val_compliance"), "train_minutes": train_minutes,
        "checkpoints": history,
    }
    (out / "train_result.json").write_text(json.dumps(summary | {"config": cfg.model_dump()}, indent=2))
    log.info("exported step %s to %s", metrics.get("step"), exported)
    if cfg.eval_prompts:
        report = _compliance_report(cfg, exported)
        (out / "compliance.json").write_text(json.dumps(report, indent=2))
        summary["compliance_base"] = report["base"]["compliance"]
        summary["compliance_tuned"] = report["tuned"]["compliance"]
    if started_ray:
        ray.shutdown()
    return summary
