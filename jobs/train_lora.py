"""Fine-tune a causal LM on RRR dialogues with Ray Train (TorchTrainer + TRL SFTTrainer), LoRA
through peft or Unsloth, or a full fine-tune; pick the checkpoint by measured format compliance;
report adapter-vs-base compliance on held-out prompts as JSON.

    python -m jobs.train_lora --base-model models/rrr-tiny-base --dataset data/seed/seed_dialogues.json \\
        --output-dir out/lora --num-workers 2
    ray job submit --address http://127.0.0.1:<dashboard-port> --working-dir . -- \\
        python -m jobs.train_lora --base-model models/rrr-tiny-base --dataset out/hf_dataset ...

Output layout (either backend): OUTPUT_DIR/adapter/ (LoRA) or OUTPUT_DIR/model/ (full),
OUTPUT_DIR/train_result.json, OUTPUT_DIR/compliance.json.

--publish-to FOLDER copies the adapter to FOLDER/NAME (NAME: --adapter-name, default the output
folder's name), atomically: with FOLDER among a served model's adapters.folders, the running graph
serves it as <model>:NAME on the next request (docs/adapters.md).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

from jobs._common import die, env_defaults, print_summary
from rrr_ray.config_cli import ConfigError, add_config_options, config_values, validate_config
from rrr_ray.training.sft import SFTJobConfig

FIELDS_BEFORE_NUM_CPUS = (
    "base_model", "dataset", "output_dir", "method", "backend", "num_workers", "use_gpu", "threads_per_worker",
    "lora.r", "lora.alpha", "lora.dropout", "lora.target_modules", "lora.modules_to_save",
    "epochs", "max_steps", "learning_rate", "batch_size", "grad_accum", "max_length", "val_fraction",
    "prefix_turns", "single_turns", "system_prompt", "group_by_length", "save_steps", "stop_at_compliance",
    "select_by", "min_val_compliance", "val_prompts", "val_samples", "eval_prompts", "eval_samples", "storage_path",
)
FIELDS_AFTER_NUM_CPUS = ("seed",)
"""The config fields with an option, in the order of ``--help``; the others keep their defaults."""
FLAGS = {"lora.r": "--lora-r", "lora.alpha": "--lora-alpha", "lora.dropout": "--lora-dropout",
         "learning_rate": "--lr"}
"""Options whose flag is not the field's name."""


def parse_args(argv=None) -> argparse.Namespace:
    """Options of the :class:`SFTJobConfig` fields (defaults and help from the config), plus ``--num-cpus``."""
    p = argparse.ArgumentParser(prog="python -m jobs.train_lora", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    add_config_options(p, SFTJobConfig, FIELDS_BEFORE_NUM_CPUS, FLAGS)
    p.add_argument("--num-cpus", type=int, default=None, help="CPUs of the local Ray cluster started "
                   "when RAY_ADDRESS is unset (default: num_workers)")
    add_config_options(p, SFTJobConfig, FIELDS_AFTER_NUM_CPUS, FLAGS)
    p.add_argument("--publish-to", default=None, help="a served adapter folder: the adapter is copied to "
                   "PUBLISH_TO/ADAPTER_NAME when training ends (LoRA only)")
    p.add_argument("--adapter-name", default=None, help="its name there (default: the output folder's name)")
    return p.parse_args(argv)


def _abs(p: str) -> str:
    """Workers may run elsewhere than the driver's working directory: pass local paths absolute."""
    return str(Path(p).resolve()) if Path(p).exists() else p


def config_from_args(args: argparse.Namespace) -> SFTJobConfig:
    values = config_values(args, SFTJobConfig, FIELDS_BEFORE_NUM_CPUS + FIELDS_AFTER_NUM_CPUS)
    values |= {"base_model": _abs(values["base_model"]), "dataset": [_abs(d) for d in values["dataset"]],
               "output_dir": str(Path(values["output_dir"]).resolve())}
    return validate_config(SFTJobConfig, values, FLAGS)


def validate_inputs(cfg: SFTJobConfig) -> None:
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


def main(argv=None) -> int:
    env_defaults()
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        cfg = config_from_args(args)
    except ConfigError as exc:
        die(str(exc))
    validate_inputs(cfg)
    if args.publish_to and cfg.method != "lora":
        die("--publish-to publishes a LoRA adapter (--method lora)")
    adapter_name = args.adapter_name or Path(cfg.output_dir).name
    from rrr_ray.training.publish import NAME, publish_adapter

    if args.publish_to and not NAME.match(adapter_name):
        die(f"--adapter-name {adapter_name!r}: letters, digits, '.', '_' and '-' only, no ':' or '/'")
    from rrr_ray.training.finetune import fine_tune

    try:
        summary = fine_tune(cfg, args.num_cpus)
    except (FileNotFoundError, ValueError) as exc:
        die(str(exc))
    summary.pop("checkpoints", None)
    if args.publish_to:
        summary["published"] = str(publish_adapter(Path(cfg.output_dir) / "adapter", args.publish_to, adapter_name))
    print_summary(f"{cfg.method} fine-tune done", summary)
    return 0


if __name__ == "__main__":
    sys.exit(main())
