"""Rebuild the rrr-tiny models under models/ from scratch (the 4.7M test model, not the served
default): base model -> fine-tunes (full and LoRA, checkpoints picked by measured format
compliance) -> merge -> measure on the held-out prompts -> model cards and models/compliance.json.

    python -m jobs.build_tiny_model            # (make model-tiny)

Variants: a full fine-tune, a LoRA with embed_tokens/lm_head in modules_to_save, and a
projections-only LoRA (shipped unmerged as models/rrr-tiny-lora, servable by vLLM's LoRA support).
The default served model (models/rrr-tiny) is the variant with the highest held-out compliance
among the full fine-tune and the merged LoRA adapters.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from jobs._common import die, env_defaults, print_summary
from rrr_ray.config_cli import ConfigError, add_config_options, config_values, validate_config
from rrr_ray.training.tiny_model import TinyBuildConfig

FIELDS = tuple(TinyBuildConfig.model_fields)


def parse_args(argv=None) -> argparse.Namespace:
    """One option per :class:`TinyBuildConfig` field (defaults and help from the config)."""
    p = argparse.ArgumentParser(prog="python -m jobs.build_tiny_model", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    add_config_options(p, TinyBuildConfig, FIELDS)
    return p.parse_args(argv)


def main(argv=None) -> int:
    env_defaults()
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        cfg = validate_config(TinyBuildConfig, config_values(args, TinyBuildConfig, FIELDS))
    except ConfigError as exc:
        die(str(exc))
    for d in cfg.data:
        if not Path(d).exists():
            die(f"--data {d}: no such file or folder")
    if not Path(cfg.eval_prompts).exists():
        die(f"--eval-prompts {cfg.eval_prompts}: no such file")
    from rrr_ray.training.tiny_model import build_tiny_models
    from rrr_ray.training.modeling import folder_size

    command = "python -m jobs.build_tiny_model " + " ".join(argv if argv is not None else sys.argv[1:])
    summary = build_tiny_models(cfg, command)
    print_summary("rrr-tiny models rebuilt", summary)
    total_mb = folder_size(cfg.models_dir) / 1e6
    if total_mb > cfg.max_mb:
        die(f"models/ is {total_mb:.1f} MB, over the {cfg.max_mb} MB limit", code=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
