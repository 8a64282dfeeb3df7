"""Fine-tune a causal LM on RRR dialogues with Ray Train (TorchTrainer + TRL SFTTrainer), LoRA
through peft or Unsloth, or a full fine-tune; pick the checkpoint by measured format compliance;
report adapter-vs-base compliance on held-out prompts as JSON.

    python -m jobs.train_lora --base-model models/rrr-tiny-base --dataset data/seed/seed_dialogues.json \\
        --output-dir out/lora --num-workers 2
    ray job submit --address http://127.0.0.1:<dashboard-port> --working-dir . -- \\
        python -m jobs.train_lora --base-model models/rrr-tiny-base --dataset out/hf_dataset ...

Output layout (either backend): OUTPUT_DIR/adapter/ (LoRA) or OUTPUT_DIR/model/ (full),
OUTPUT_DIR/train_result.json, OUTPUT_DIR/compliance.json.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from pathlib import Path

from jobs._common import die, env_defaults, print_summary

SEED_DEFAULT = ["data/seed/seed_dialogues.json", "data/seed/curated_seed_dialogues"]


def parse_args(argv=None):
    p = argparse.ArgumentParser(prog="python -m jobs.train_lora", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--base-model", required=True, help="base model folder (or hub name where reachable)")
    p.add_argument("--dataset", nargs="+", default=SEED_DEFAULT,
                   help="saved HF dataset folder(s) ({conversation_id, messages, num_turns}), JSONL or seed files")
    p.add_argument("--output-dir", required=True, help="where adapter/ or model/ and the JSON reports go")
    p.add_argument("--method", choices=["lora", "full"], default="lora", help="LoRA adapter or full fine-tune")
    p.add_argument("--backend", choices=["auto", "peft", "unsloth"], default="auto",
                   help="auto: unsloth when CUDA and unsloth are present, else peft")
    p.add_argument("--num-workers", type=int, default=2, help="Ray Train workers")
    p.add_argument("--use-gpu", choices=["auto", "yes", "no"], default="auto")
    p.add_argument("--threads-per-worker", type=int, default=1)
    p.add_argument("--lora-r", type=int, default=16)
    p.add_argument("--lora-alpha", type=int, default=16)
    p.add_argument("--lora-dropout", type=float, default=0.05)
    p.add_argument("--target-modules", nargs="+", default=None, help="default: all seven projections")
    p.add_argument("--modules-to-save", nargs="*", default=[], help="e.g. embed_tokens lm_head")
    p.add_argument("--epochs", type=float, default=3.0)
    p.add_argument("--max-steps", type=int, default=-1)
    p.add_argument("--lr", type=float, default=2e-4)
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--grad-accum", type=int, default=1)
    p.add_argument("--max-length", type=int, default=1024)
    p.add_argument("--val-fraction", type=float, default=0.1)
    p.add_argument("--prefix-turns", type=int, default=1, help="extra examples ending after turns 1..k")
    p.add_argument("--no-single-turns", action="store_true", help="do not add one-turn slices of later exchanges")
    p.add_argument("--save-steps", type=int, default=50)
    p.add_argument("--val-prompts", type=int, default=24)
    p.add_argument("--eval-prompts", default="data/eval_prompts.jsonl", help="held-out prompts ('' to skip)")
    p.add_argument("--eval-samples", type=int, default=3)
    p.add_argument("--storage-path", default=None, help="Ray Train storage (default OUTPUT_DIR/ray)")
    p.add_argument("--num-cpus", type=int, default=None, help="CPUs of the local Ray cluster started "
                   "when RAY_ADDRESS is unset (default: num_workers)")
    p.add_argument("--seed", type=int, default=0)
    return p.parse_args(argv)


def _abs(p: str) -> str:
    """Workers may run elsewhere than the driver's working directory: pass local paths absolute."""
    return str(Path(p).resolve()) if Path(p).exists() else p


def config_from_args(args):
    from rrr_ray.training.sft import SFTJobConfig, LoraSettings, SEVEN_PROJECTIONS

    return SFTJobConfig(
        base_model=_abs(args.base_model), dataset=[_abs(d) for d in args.dataset], output_dir=str(Path(args.output_dir).resolve()),
        method=args.method, backend=args.backend,
        lora=LoraSettings(r=args.lora_r, alpha=args.lora_alpha, dropout=args.lora_dropout,
                          target_modules=args.target_modules or list(SEVEN_PROJECTIONS),
                          modules_to_save=args.modules_to_save),
        num_workers=args.num_workers, use_gpu={"auto": None, "yes": True, "no": False}[args.use_gpu],
        threads_per_worker=args.threads_per_worker, epochs=args.epochs, max_steps=args.max_steps,
        learning_rate=args.lr, batch_size=args.batch_size, grad_accum=args.grad_accum,
        max_length=args.max_length, val_fraction=args.val_fraction, prefix_turns=args.prefix_turns, single_turns=not args.no_single_turns,
        save_steps=args.save_steps, val_prompts=args.val_prompts,
        eval_prompts=args.eval_prompts or None, eval_samples=args.eval_samples,
        storage_path=args.storage_path, seed=args.seed)


def validate_inputs(cfg) -> None:
    base = Path(cfg.base_model)
    if base.exists() and not (base / "config.json").exists():
        die(f"--base-model {base}: not a model folder (no config.json)")
    if not base.exists() and (cfg.base_model.startswith((".", "/")) or os.environ.get("HF_HUB_OFFLINE") == "1"):
        die(f"--base-model {base}: no such folder (and the hub is offline)")
    for d in cfg.dataset:
        if not Path(d).exists() and ("/" not in d or os.environ.get("HF_HUB_OFFLINE") == "1"):
            die(f"--dataset {d}: no such file or folder")
    if cfg.eval_prompts and not Path(cfg.eval_prompts).exists():
        die(f"--eval-prompts {cfg.eval_prompts}: no such file")


def run(cfg, num_cpus=None) -> dict:
    """Train, export the best checkpoint, evaluate; returns the summary (also written as JSON)."""
    import ray

    from rrr_ray.training.compliance import load_prompts
    from rrr_ray.training.merge import evaluate_folder
    from rrr_ray.training.sft import best_checkpoint, export_checkpoint, resolve_backend, run_training

    out = Path(cfg.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    started_ray = False
    if not ray.is_initialized():
        if os.environ.get("RAY_ADDRESS"):
            ray.init()
        else:
            ray.init(num_cpus=num_cpus or max(cfg.num_workers, 1), include_dashboard=False,
                     runtime_env={"env_vars": {"PYTHONPATH": str(Path.cwd())}})
            started_ray = True
    t0 = time.monotonic()
    try:
        result = run_training(cfg)
    finally:
        train_minutes = round((time.monotonic() - t0) / 60, 2)
    if result.error:
        raise RuntimeError(f"training failed: {result.error}")
    ckpt, metrics = best_checkpoint(result)
    exported = export_checkpoint(ckpt, cfg)
    history = [{"step": m.get("step"), "val_compliance": m.get("val_compliance"), "loss": m.get("loss"),
                "eval_loss": m.get("eval_loss")} for _, m in (result.best_checkpoints or [])]
    summary = {
        "method": cfg.method, "backend": resolve_backend(cfg.backend), "num_workers": cfg.num_workers,
        "output": str(exported), "chosen_step": metrics.get("step"),
        "chosen_val_compliance": metrics.get("val_compliance"), "train_minutes": train_minutes,
        "checkpoints": history,
    }
    (out / "train_result.json").write_text(json.dumps(summary | {"config": cfg.model_dump()}, indent=2))
    if cfg.eval_prompts:
        prompts = load_prompts(cfg.eval_prompts)
        if cfg.method == "lora":
            tuned = evaluate_folder(cfg.base_model, prompts, adapter_dir=exported, samples_per_prompt=cfg.eval_samples)
        else:
            tuned = evaluate_folder(exported, prompts, samples_per_prompt=cfg.eval_samples)
        base = evaluate_folder(cfg.base_model, prompts, samples_per_prompt=cfg.eval_samples)
        report = {"prompts": cfg.eval_prompts, "samples_per_prompt": cfg.eval_samples,
                  "base": base, "tuned": tuned}
        (out / "compliance.json").write_text(json.dumps(report, indent=2))
        summary["compliance_base"] = base["compliance"]
        summary["compliance_tuned"] = tuned["compliance"]
    if started_ray:
        ray.shutdown()
    return summary


def main(argv=None) -> int:
    env_defaults()
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    cfg = config_from_args(args)
    validate_inputs(cfg)
    try:
        summary = run(cfg, args.num_cpus)
    except (FileNotFoundError, ValueError) as exc:
        die(str(exc))
    summary.pop("checkpoints", None)
    print_summary(f"{cfg.method} fine-tune done", summary)
    return 0


if __name__ == "__main__":
    sys.exit(main())
