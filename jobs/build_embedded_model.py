"""Rebuild everything shipped under models/ from scratch: base model -> fine-tunes (full and LoRA,
checkpoints picked by measured format compliance) -> merge -> measure on the held-out prompts ->
model cards and models/compliance.json.

    python -m jobs.build_embedded_model            # (make model)

Variants: a full fine-tune, a LoRA with embed_tokens/lm_head in modules_to_save, and a
projections-only LoRA (shipped unmerged as models/rrr-tiny-lora, servable by vLLM's LoRA support).
The default served model (models/rrr-tiny) is the variant with the highest held-out compliance
among the full fine-tune and the merged LoRA adapters.
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import sys
import time
from pathlib import Path

from jobs._common import die, env_defaults, print_summary


def parse_args(argv=None):
    p = argparse.ArgumentParser(prog="python -m jobs.build_embedded_model", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models-dir", default="models", help="where rrr-tiny*, compliance.json go")
    p.add_argument("--work-dir", default="out/embedded", help="scratch space (Ray storage, checkpoints)")
    p.add_argument("--data", nargs="+", default=["data/seed/seed_dialogues.json", "data/seed/curated_seed_dialogues"])
    p.add_argument("--eval-prompts", default="data/eval_prompts.jsonl")
    p.add_argument("--eval-samples", type=int, default=3, help="samples per held-out prompt")
    p.add_argument("--base-minutes", type=float, default=3.0, help="base pretraining budget")
    p.add_argument("--full-epochs", type=float, default=3.0, help="full fine-tune epochs")
    p.add_argument("--full-lr", type=float, default=1e-3)
    p.add_argument("--lora-epochs", type=float, default=3.0, help="epochs of the LoRA with modules_to_save")
    p.add_argument("--lora-lr", type=float, default=3e-3)
    p.add_argument("--lora-r", type=int, default=16)
    p.add_argument("--lora-plain-epochs", type=float, default=2.0,
                   help="epochs of the projections-only LoRA (the adapter shipped for vLLM LoRA; 0: skip)")
    p.add_argument("--num-workers", type=int, default=2, help="Ray Train workers")
    p.add_argument("--save-steps", type=int, default=25)
    p.add_argument("--skip-base", action="store_true", help="reuse MODELS_DIR/rrr-tiny-base")
    p.add_argument("--skip-lora", action="store_true")
    p.add_argument("--max-mb", type=float, default=25.0, help="fail when models/ grows past this")
    p.add_argument("--seed", type=int, default=0)
    return p.parse_args(argv)


def main(argv=None) -> int:
    env_defaults()
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    for d in args.data:
        if not Path(d).exists():
            die(f"--data {d}: no such file or folder")
    if not Path(args.eval_prompts).exists():
        die(f"--eval-prompts {args.eval_prompts}: no such file")
    import ray

    from jobs.train_lora import run as run_sft
    from rrr_ray.training.base import BaseModelConfig, build_base_model
    from rrr_ray.training.compliance import load_prompts
    from rrr_ray.training.loop import LoopConfig
    from rrr_ray.training.merge import cast_adapter, evaluate_folder, merge_adapter, set_adapter_base
    from rrr_ray.training.modeling import folder_size, save_model_folder
    from rrr_ray.training.cards import write_cards
    from rrr_ray.training.sft import LoraSettings, SFTJobConfig

    t_start = time.monotonic()
    models, work = Path(args.models_dir), Path(args.work_dir).resolve()
    base_dir, tiny_dir, lora_dir = models / "rrr-tiny-base", models / "rrr-tiny", models / "rrr-tiny-lora"
    work.mkdir(parents=True, exist_ok=True)
    prompts = load_prompts(args.eval_prompts)
    times: dict[str, float] = {}

    # 1. base
    if not args.skip_base:
        t = time.monotonic()
        base_summary = build_base_model(BaseModelConfig(
            data=args.data, output_dir=str(base_dir),
            loop=LoopConfig(epochs=60, max_minutes=args.base_minutes, lr=2e-3, all_tokens=True, seed=args.seed)))
        times["base_minutes"] = round((time.monotonic() - t) / 60, 2)
    else:
        base_summary = json.loads((base_dir / "training_summary.json").read_text())
    ray.init(num_cpus=max(2, args.num_workers), include_dashboard=False,
             runtime_env={"env_vars": {"PYTHONPATH": str(Path.cwd())}})
    common = dict(base_model=str(base_dir.resolve()), dataset=[str(Path(d).resolve()) for d in args.data],
                  num_workers=args.num_workers, save_steps=args.save_steps, eval_prompts=None,
                  val_prompts=24, val_samples=2, prefix_turns=1, single_turns=True, batch_size=4, seed=args.seed)
    # 2. full fine-tune
    t = time.monotonic()
    full = run_sft(SFTJobConfig(output_dir=str(work / "full"), method="full", epochs=args.full_epochs,
                                learning_rate=args.full_lr, **common))
    times["full_finetune_minutes"] = round((time.monotonic() - t) / 60, 2)
    # 3. LoRA: with the embeddings and output layer trained in full (modules_to_save; the tag
    # tokens are new to the base's chat), and projections only (servable unmerged by vLLM LoRA)
    loras: dict[str, dict] = {}
    if not args.skip_lora:
        for name, mts, epochs in (("lora_mts", ["embed_tokens", "lm_head"], args.lora_epochs),
                                  ("lora", [], args.lora_plain_epochs)):
            if epochs <= 0:
                continue
            t = time.monotonic()
            loras[name] = run_sft(SFTJobConfig(
                output_dir=str(work / name), method="lora", epochs=epochs, learning_rate=args.lora_lr,
                lora=LoraSettings(r=args.lora_r, alpha=args.lora_r, modules_to_save=mts), **common))
            times[f"{name}_minutes"] = round((time.monotonic() - t) / 60, 2)
    ray.shutdown()

    # 4. measure on the held-out prompts, pick the default, merge, ship
    t = time.monotonic()
    n = args.eval_samples
    results = {"base": evaluate_folder(base_dir, prompts, samples_per_prompt=n, seed=args.seed)}
    from rrr_ray.training.merge import load_causal_lm
    candidates = {"full": work / "full_bf16"}
    m, tok = load_causal_lm(work / "full" / "model")
    save_model_folder(m, tok, candidates["full"], "bfloat16")
    for name in loras:
        adapter = work / name / "adapter"
        cast_adapter(adapter, "bfloat16")
        candidates[f"{name}_merged"] = merge_adapter(base_dir, adapter, work / f"{name}_merged", "bfloat16")
    for name, folder in candidates.items():
        results[name] = evaluate_folder(folder, prompts, samples_per_prompt=n, seed=args.seed)
    times["evaluation_minutes"] = round((time.monotonic() - t) / 60, 2)
    best = max(candidates, key=lambda k: results[k]["compliance"])
    if tiny_dir.exists():
        shutil.rmtree(tiny_dir)
    shutil.copytree(candidates[best], tiny_dir)
    if lora_dir.exists():
        shutil.rmtree(lora_dir)
    if "lora" in loras:
        shutil.copytree(work / "lora" / "adapter", lora_dir)
        set_adapter_base(lora_dir, "models/rrr-tiny-base")
    times["total_minutes"] = round((time.monotonic() - t_start) / 60, 2)
    sizes = {p.name: folder_size(p) for p in (base_dir, tiny_dir, lora_dir) if p.exists()}
    report = {
        "eval_prompts": args.eval_prompts, "prompts": len(prompts), "samples_per_prompt": n,
        "temperature": 0.7, "rule": "strict: rrr_ray.validate(reply).valid on the raw reply, no repair",
        "default_model": "models/rrr-tiny", "default_variant": best,
        "parameters": base_summary.get("parameters"),
        "compliance": {k: v["compliance"] for k, v in results.items()},
        "repaired_compliance": {k: v["repaired_compliance"] for k, v in results.items()},
        "by_category": {k: v["by_category"] for k, v in results.items()},
        "errors": {k: v["errors"] for k, v in results.items()},
        "examples": {k: v["examples"] for k, v in results.items()},
        "training": {"base": base_summary, "full": {k: full[k] for k in full if k != "checkpoints"},
                     "full_checkpoints": full.get("checkpoints"),
                     **{name: {k: v for k, v in res.items() if k != "checkpoints"} for name, res in loras.items()},
                     **{f"{name}_checkpoints": res.get("checkpoints") for name, res in loras.items()},
                     "lora_settings": {"r": args.lora_r, "alpha": args.lora_r, "dropout": 0.05,
                                       "target_modules": "all seven projections",
                                       "modules_to_save": {"lora_mts": ["embed_tokens", "lm_head"], "lora": []}}},
        "times_minutes": times, "sizes_bytes": sizes, "total_bytes": sum(sizes.values()),
        "command": "python -m jobs.build_embedded_model " + " ".join(argv if argv is not None else sys.argv[1:]),
    }
    previous = models / "compliance.json"
    if previous.exists():  # measurements of other recipes (recorded by hand) survive a rebuild
        report["experiments"] = json.loads(previous.read_text()).get("experiments", [])
    previous.write_text(json.dumps(report, indent=2))
    write_cards(models, report)
    total_mb = folder_size(models) / 1e6
    summary = {"default": f"models/rrr-tiny ({best})", **{f"compliance_{k}": v for k, v in report["compliance"].items()},
               **times, "models_mb": round(total_mb, 2)}
    print_summary("embedded model rebuilt", summary)
    if total_mb > args.max_mb:
        die(f"models/ is {total_mb:.1f} MB, over the {args.max_mb} MB limit", code=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
