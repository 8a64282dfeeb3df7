"""The served default: an RRR LoRA adapter on SmolLM2-135M-Instruct, trained by the project's own
fine-tune (:func:`rrr_ray.training.finetune.fine_tune`: Ray Train + TRL + peft; the checkpoint with the
lowest validation loss on assistant tokens among those whose strict validation compliance reaches
98%) and committed as ``models/rrr-smollm2-lora`` with its training curve (``curve.md``, ``curve.png``).

``jobs.train_default_model`` (``make model``) calls :func:`train_default_model`; ``make install``
merges the committed adapter into the converted base (``jobs.prepare_models``).
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from pathlib import Path
from typing import Any

from pydantic import BaseModel, Field

from rrr_ray.data.convert import DEFAULT_SEED_PATHS, REFUSAL_DIALOGUES
from rrr_ray.model_names import ADAPTER_NAME
from rrr_ray.training.pretrained import SMOLLM2_135M
from rrr_ray.training.selection import SelectBy

log = logging.getLogger(__name__)



class DefaultModelRecipe(BaseModel):
    """How ``models/rrr-smollm2-lora`` is trained (every field is an option of the job)."""

    models_dir: str = Field("models", description="Where the base is found and the adapter goes.")
    work_dir: str = Field("out/default_model", description="Scratch space (Ray storage, checkpoints).")
    data: list[str] = Field(default_factory=lambda: [*DEFAULT_SEED_PATHS, REFUSAL_DIALOGUES],
                            description="Dialogue files/folders or saved HF datasets to train on.")
    epochs: float = Field(3.0, gt=0, description="Training epochs (long enough for the validation loss to turn).")
    learning_rate: float = Field(1e-3, gt=0, description="Peak learning rate (cosine schedule).")
    lora_r: int = Field(16, ge=1, description="LoRA rank (all seven projections, no modules_to_save).")
    lora_alpha: int = Field(32, ge=1, description="LoRA alpha.")
    batch_size: int = Field(4, ge=1, description="Per-worker batch size.")
    num_workers: int = Field(2, ge=1, description="Ray Train workers (one CPU thread each).")
    max_length: int = Field(320, ge=64, description="Longest training sequence, in tokens.")
    prefix_turns: int = Field(1, ge=0, description="Extra examples per conversation ending after turn 1..k.")
    save_steps: int = Field(20, ge=1, description="Checkpoint (and measure it) every this many steps.")
    val_prompts: int = Field(20, ge=0, description="Validation prompts (held-out turns) measured per checkpoint.")
    val_samples: int = Field(3, ge=1, description="Samples per validation prompt.")
    select_by: SelectBy = Field("eval_loss", description=(
        "The content measure that picks the checkpoint (eval_loss: validation loss on assistant tokens)."))
    min_val_compliance: float = Field(0.98, ge=0, le=1, description=(
        "Strict validation compliance a checkpoint needs to be chosen."))
    seed: int = Field(0, description="Seed of the split, initialisation and sampling.")


def train_default_model(recipe: DefaultModelRecipe) -> dict[str, Any]:
    """Train the adapter on the converted base and copy it (bfloat16 tensors) to
    ``models_dir/rrr-smollm2-lora``; returns the training summary."""
    from rrr_ray.training.finetune import fine_tune
    from rrr_ray.training.pretrained import ensure_base_model
    from rrr_ray.training.sft import LoraSettings, SFTJobConfig

    models = Path(recipe.models_dir)
    base, _ = ensure_base_model(models)
    work = Path(recipe.work_dir).resolve()
    cfg = SFTJobConfig(
        base_model=str(base.resolve()), dataset=[str(Path(d).resolve()) for d in recipe.data],
        output_dir=str(work), method="lora", backend="auto", num_workers=recipe.num_workers,
        lora=LoraSettings(r=recipe.lora_r, alpha=recipe.lora_alpha),
        epochs=recipe.epochs, learning_rate=recipe.learning_rate, batch_size=recipe.batch_size,
        max_length=recipe.max_length, prefix_turns=recipe.prefix_turns, single_turns=True,
        group_by_length=True, save_steps=recipe.save_steps, val_prompts=recipe.val_prompts,
        val_samples=recipe.val_samples, select_by=recipe.select_by, min_val_compliance=recipe.min_val_compliance,
        eval_prompts=None, seed=recipe.seed,
    )
    t0 = time.monotonic()
    summary = fine_tune(cfg, num_cpus=max(2, recipe.num_workers))
    summary["total_minutes"] = round((time.monotonic() - t0) / 60, 2)
    return ship_adapter(work / "adapter", recipe, summary)


def ship_adapter(exported: Path, recipe: DefaultModelRecipe, summary: dict[str, Any]) -> dict[str, Any]:
    """Copy an exported adapter to ``models_dir/rrr-smollm2-lora`` (bfloat16 tensors, base path
    relative to the checkout) with ``training.json`` (the summary and the recipe) and the training
    curve (``curve.md``, ``curve.png``)."""
    from rrr_ray.training.merge import cast_adapter, set_adapter_base
    from rrr_ray.training.selection import curve_table, plot_curve

    adapter = Path(recipe.models_dir) / ADAPTER_NAME
    if adapter.exists():
        shutil.rmtree(adapter)
    shutil.copytree(exported, adapter, ignore=shutil.ignore_patterns("tokenizer*", "chat_template*"))
    cast_adapter(adapter, "bfloat16")  # the base's tokenizer and chat template apply (vLLM LoRA uses the base's)
    set_adapter_base(adapter, f"{recipe.models_dir}/{SMOLLM2_135M.name}")
    summary = summary | {"adapter": str(adapter), "base": SMOLLM2_135M.name, "recipe": recipe.model_dump()}
    (adapter / "training.json").write_text(json.dumps(summary, indent=2))
    curve = summary.get("checkpoints") or []
    if curve:
        (adapter / "curve.md").write_text(curve_table(curve, summary.get("chosen_step")) + "\n")
        plot_curve(curve, summary.get("chosen_step"), adapter / "curve.png")
    return summary
