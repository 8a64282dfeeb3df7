"""Distributed fine-tuning with Ray Train: ``TorchTrainer`` workers each run TRL's ``SFTTrainer``
on ChatML conversations with loss on assistant tokens only, LoRA through peft (or Unsloth's
``FastLanguageModel`` on CUDA), or a full fine-tune. Checkpoints go through
``RayTrainReportCallback``; each carries the format compliance measured on held-out validation
prompts and the content measures of :mod:`rrr_ray.training.selection` (validation loss, METEOR,
BERTScore F1); the checkpoint exported is the best by ``select_by`` among those that reach
``min_val_compliance``."""

from __future__ import annotations

import importlib.util
import logging
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any, Literal, Optional

from pydantic import BaseModel, Field

from rrr_ray.data.convert import DEFAULT_SEED_PATHS
from rrr_ray.data.prompts import DEFAULT_EVAL_PROMPTS
from rrr_ray.training.selection import SelectBy

log = logging.getLogger(__name__)

SEVEN_PROJECTIONS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


class LoraSettings(BaseModel):
    """peft ``LoraConfig`` fields (defaults: the seed's Mistral-7B setting)."""

    r: int = Field(16, ge=1, description="LoRA rank.")
    alpha: int = Field(16, ge=1, description="LoRA alpha (scaling = alpha / r).")
    dropout: float = Field(0.05, ge=0, lt=1, description="Dropout on the LoRA input.")
    target_modules: list[str] = Field(default_factory=lambda: list(SEVEN_PROJECTIONS),
                                      description="Modules that get LoRA matrices.")
    modules_to_save: list[str] = Field(default_factory=list, description=(
        "Modules trained in full and saved with the adapter (e.g. embed_tokens, lm_head: needed when "
        "the base never saw the tag tokens; vLLM cannot serve such an adapter unmerged)."))


class SFTJobConfig(BaseModel):
    """Everything ``jobs.train_lora`` does."""

    base_model: str = Field(description="Local model folder (or hub name where a hub is reachable).")
    dataset: list[str] = Field(default_factory=lambda: list(DEFAULT_SEED_PATHS),
                               description="Saved HF dataset folders, JSONL shards or seed files.")
    output_dir: str = Field(description="Where adapter/ (or model/), results and compliance JSON go.")
    method: Literal["lora", "full"] = Field("lora", description="LoRA adapter or full fine-tune.")
    backend: Literal["auto", "peft", "unsloth"] = Field(
        "auto", description="auto: unsloth when CUDA and unsloth are present, else peft.")
    lora: LoraSettings = Field(default_factory=LoraSettings)
    num_workers: int = Field(2, ge=1, description="Ray Train workers (data parallel).")
    use_gpu: Optional[bool] = Field(
        None, description="Train on GPUs; None (auto on the command line): when CUDA is available.")
    threads_per_worker: int = Field(1, ge=1, description="torch threads per CPU worker.")
    epochs: float = Field(3.0, gt=0, description="Training epochs.")
    max_steps: int = Field(-1, ge=-1, description="Stop after this many optimiser steps (-1: by epochs).")
    learning_rate: float = Field(2e-4, gt=0, description="Peak learning rate.")
    batch_size: int = Field(4, ge=1, description="Per-worker batch size.")
    grad_accum: int = Field(1, ge=1, description="Gradient accumulation steps.")
    warmup_ratio: float = Field(0.05, ge=0, lt=1, description="Warm-up share of the steps.")
    max_length: int = Field(1024, ge=16, description="Longest sequence, in tokens.")
    val_fraction: float = Field(0.1, ge=0, lt=1, description="Share of conversations held out for validation.")
    prefix_turns: int = Field(1, ge=0, description="Extra examples per conversation ending after turn 1..k.")
    single_turns: bool = Field(True, description="Also train on every later exchange as a one-turn conversation.")
    system_prompt: Optional[str] = Field("auto", description=(
        "System message of the training conversations that have none. auto: the one the base's chat "
        "template adds (what the model is served with); empty: none."))
    group_by_length: bool = Field(False, description=(
        "Batch sequences of similar length together (less padding: faster on CPUs)."))
    save_steps: int = Field(50, ge=1, description="Checkpoint (and measure compliance) every this many steps.")
    logging_steps: int = Field(10, ge=1, description="Log loss every this many steps.")
    val_prompts: int = Field(24, ge=0, description="Validation prompts used for checkpoint compliance (0: off).")
    val_samples: int = Field(2, ge=1, description="Samples per validation prompt.")
    stop_at_compliance: Optional[float] = Field(None, gt=0, le=1, description=(
        "Stop training at the first checkpoint whose validation compliance reaches this (None: train "
        "all the steps). No later checkpoint could be chosen: ties go to the earliest."))
    select_by: SelectBy = Field("compliance", description=(
        "What picks the exported checkpoint: compliance (highest), eval_loss (lowest validation loss on "
        "assistant tokens), val_meteor or val_bertscore_f1 (highest), among the checkpoints whose "
        "validation compliance reaches min_val_compliance."))
    min_val_compliance: float = Field(0.98, ge=0, le=1, description=(
        "Strict validation compliance a checkpoint needs to be chosen by a content measure."))
    max_new_tokens: int = Field(200, ge=1, description="Generation length for compliance measurement.")
    temperature: float = Field(0.7, ge=0, description="Sampling temperature for compliance measurement.")
    eval_prompts: Optional[str] = Field(DEFAULT_EVAL_PROMPTS, description=(
        "Held-out prompts for the final adapter-vs-base report (None or empty: no report)."))
    eval_samples: int = Field(3, ge=1, description="Samples per held-out prompt in the final report.")
    storage_path: Optional[str] = Field(None, description="Ray Train storage (default: output_dir/ray).")
    seed: int = Field(0, description="Seed of the validation split, initialisation and sampling.")


def resolve_backend(backend: str) -> str:
    """The backend to use: unsloth needs CUDA and the unsloth package."""
    import torch

    has_unsloth = importlib.util.find_spec("unsloth") is not None
    if backend == "auto":
        return "unsloth" if torch.cuda.is_available() and has_unsloth else "peft"
    if backend == "unsloth" and not (torch.cuda.is_available() and has_unsloth):
        raise RuntimeError("the unsloth backend needs CUDA and the unsloth package "
                           f"(cuda={torch.cuda.is_available()}, unsloth installed={has_unsloth})")
    return backend


# -- inside a Ray Train worker -------------------------------------------------------------------

def _load_model(cfg: SFTJobConfig, backend: str):
    import torch
    from transformers import AutoModelForCausalLM

    from rrr_ray.training.tokenizer import load_tokenizer

    if backend == "unsloth":  # pragma: no cover - needs CUDA
        from unsloth import FastLanguageModel

        model, tokenizer = FastLanguageModel.from_pretrained(cfg.base_model, max_seq_length=cfg.max_length,
                                                             load_in_4bit=True)
        if cfg.method == "lora":
            model = FastLanguageModel.get_peft_model(
                model, r=cfg.lora.r, lora_alpha=cfg.lora.alpha, lora_dropout=cfg.lora.dropout,
                target_modules=cfg.lora.target_modules, modules_to_save=cfg.lora.modules_to_save or None,
                use_gradient_checkpointing="unsloth", random_state=cfg.seed)
        return model, tokenizer
    tokenizer = load_tokenizer(cfg.base_model)
    model = AutoModelForCausalLM.from_pretrained(cfg.base_model, dtype=torch.float32)
    if cfg.method == "lora":
        from peft import LoraConfig, get_peft_model

        model = get_peft_model(model, LoraConfig(
            r=cfg.lora.r, lora_alpha=cfg.lora.alpha, lora_dropout=cfg.lora.dropout,
            target_modules=cfg.lora.target_modules, modules_to_save=cfg.lora.modules_to_save or None,
            task_type="CAUSAL_LM"))
    return model, tokenizer


def _datasets(cfg: SFTJobConfig, tokenizer):
    import datasets

    from rrr_ray.data.convert import load_records
    from rrr_ray.training.data import (first_user_prompts, split_records, tagged_records, template_system_prompt,
                                       tokenized_dataset)

    records, _ = tagged_records(load_records(cfg.dataset))
    train, val = split_records(records, cfg.val_fraction, cfg.seed)
    system = template_system_prompt(tokenizer) if cfg.system_prompt == "auto" else (cfg.system_prompt or None)
    tr = datasets.Dataset.from_list(tokenized_dataset(train, tokenizer, cfg.max_length, cfg.prefix_turns,
                                                      cfg.single_turns, system))
    va = (datasets.Dataset.from_list(tokenized_dataset(val, tokenizer, cfg.max_length, 0, system=system))
          if val else None)
    return tr, va, first_user_prompts(val or train, all_turns=True)[: cfg.val_prompts]


def _compliance_callback(cfg: SFTJobConfig, tokenizer, prompts):
    from transformers import TrainerCallback

    from rrr_ray.evaluation.compliance import hf_generate_fn
    from rrr_ray.training.selection import measure_checkpoint

    class ComplianceCallback(TrainerCallback):
        """On each save, measure format compliance and the content scores on validation prompts
        (rank 0) and add them to the log history, which ``RayTrainReportCallback`` reports with the
        checkpoint."""

        def on_save(self, args, state, control, model=None, **kwargs):
            if not prompts:
                return
            compliance = 0.0
            if state.is_world_process_zero:
                fn = hf_generate_fn(model, tokenizer, cfg.max_new_tokens, cfg.temperature, seed=cfg.seed)
                scores = measure_checkpoint(fn, prompts, cfg.val_samples)
                compliance = scores["val_compliance"]
                state.log_history.append(scores | {"step": state.global_step})
                log.info("step %d: validation %s", state.global_step, scores)
            if cfg.stop_at_compliance is not None and _from_rank_zero(compliance) >= cfg.stop_at_compliance:
                log.info("step %d: validation compliance reached %.3f; stopping", state.global_step,
                         cfg.stop_at_compliance)
                control.should_training_stop = True

    return ComplianceCallback()


def _from_rank_zero(value: float) -> float:
    """``value`` as rank 0 has it (every rank must take the same decision to stop)."""
    import torch
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        return value
    t = torch.tensor([value], dtype=torch.float64)
    dist.broadcast(t, src=0)
    return float(t.item())


def train_loop_per_worker(config: dict[str, Any]) -> None:
    """The body each Ray Train worker runs."""
    import torch
    from ray.train.huggingface.transformers import RayTrainReportCallback, prepare_trainer
    from trl import SFTConfig, SFTTrainer

    cfg = SFTJobConfig.model_validate(config)
    torch.set_num_threads(cfg.threads_per_worker)
    backend = resolve_backend(cfg.backend)
    model, tokenizer = _load_model(cfg, backend)
    train_ds, val_ds, val_prompts = _datasets(cfg, tokenizer)
    cuda = torch.cuda.is_available() and cfg.use_gpu is not False
    args = SFTConfig(
        output_dir=tempfile.mkdtemp(prefix="rrr-sft-"),
        num_train_epochs=cfg.epochs, max_steps=cfg.max_steps,
        per_device_train_batch_size=cfg.batch_size, per_device_eval_batch_size=cfg.batch_size,
        gradient_accumulation_steps=cfg.grad_accum, learning_rate=cfg.learning_rate,
        lr_scheduler_type="cosine", warmup_steps=cfg.warmup_ratio, weight_decay=0.0,
        logging_steps=cfg.logging_steps, save_strategy="steps", save_steps=cfg.save_steps,
        eval_strategy="steps" if val_ds is not None else "no", eval_steps=cfg.save_steps,
        save_only_model=True, report_to="none", max_length=cfg.max_length,
        use_cpu=not cuda, bf16=cuda, seed=cfg.seed, dataloader_num_workers=0,
        train_sampling_strategy="group_by_length" if cfg.group_by_length else "random",
        ddp_find_unused_parameters=False, remove_unused_columns=True,
        gradient_checkpointing=False, disable_tqdm=False,
    )
    trainer = SFTTrainer(model=model, args=args, train_dataset=train_ds, eval_dataset=val_ds,
                         processing_class=tokenizer,
                         callbacks=[_compliance_callback(cfg, tokenizer, val_prompts), RayTrainReportCallback()])
    trainer = prepare_trainer(trainer)
    trainer.train()


# -- the driver ----------------------------------------------------------------------------------

def run_training(cfg: SFTJobConfig):
    """Run the ``TorchTrainer``; returns the Ray Train ``Result``."""
    import torch
    from ray.train import CheckpointConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    use_gpu = torch.cuda.is_available() if cfg.use_gpu is None else cfg.use_gpu
    storage = Path(cfg.storage_path or Path(cfg.output_dir) / "ray").resolve()
    trainer = TorchTrainer(
        train_loop_per_worker,
        train_loop_config=cfg.model_dump(),
        scaling_config=ScalingConfig(num_workers=cfg.num_workers, use_gpu=use_gpu,
                                     resources_per_worker=None if use_gpu else {"CPU": 1}),
        run_config=RunConfig(name=f"rrr-sft-{int(time.time())}", storage_path=str(storage),
                             checkpoint_config=CheckpointConfig(num_to_keep=None)),
    )
    return trainer.fit()


def best_checkpoint(result, select_by: SelectBy = "compliance",
                    min_compliance: float = 0.98) -> tuple[Any, dict[str, Any]]:
    """The checkpoint :func:`rrr_ray.training.selection.choose_checkpoint` picks (the last one
    when none was measured)."""
    from rrr_ray.training.selection import choose_checkpoint

    cands = sorted(result.best_checkpoints or [], key=lambda c: c[1].get("step") or 0)
    if not cands:
        if result.checkpoint is None:
            raise RuntimeError("the training run produced no checkpoint")
        return result.checkpoint, dict(result.metrics or {})
    best = choose_checkpoint([m for _, m in cands], select_by, min_compliance)
    return cands[best][0], dict(cands[best][1])


def export_checkpoint(checkpoint, cfg: SFTJobConfig) -> Path:
    """Copy the chosen checkpoint to ``output_dir/adapter`` (LoRA) or ``output_dir/model`` (full),
    with the tokenizer; the same layout for either backend."""
    from rrr_ray.training.tokenizer import load_tokenizer

    dest = Path(cfg.output_dir) / ("adapter" if cfg.method == "lora" else "model")
    if dest.exists():
        shutil.rmtree(dest)
    dest.mkdir(parents=True)
    with checkpoint.as_directory() as d:
        src = Path(d) / "checkpoint"
        src = src if src.exists() else Path(d)
        keep = ("adapter_config.json", "adapter_model.safetensors", "config.json", "generation_config.json",
                "model.safetensors")
        for f in src.iterdir():
            if f.name in keep:
                shutil.copy2(f, dest / f.name)
    load_tokenizer(cfg.base_model).save_pretrained(dest)
    return dest
