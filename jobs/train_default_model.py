"""Train the served default from scratch (``make model``): the RRR LoRA adapter on
SmolLM2-135M-Instruct, through the project's fine-tune (Ray Train TorchTrainer + TRL SFTTrainer +
peft, checkpoint chosen by measured compliance), copied to ``models/rrr-smollm2-lora``; then merge
it (``jobs.prepare_models``) and measure it (``jobs.report_default_model``).

    python -m jobs.train_default_model [--epochs 2 --learning-rate 1e-3 ...]
"""

from __future__ import annotations

import argparse
import logging
import sys

from jobs._common import die, env_defaults, print_summary
from rrr_ray.config_cli import ConfigError, add_config_options, config_values, validate_config
from rrr_ray.training.default_model import DefaultModelRecipe

FIELDS = tuple(DefaultModelRecipe.model_fields)


def main(argv=None) -> int:
    env_defaults()
    p = argparse.ArgumentParser(prog="python -m jobs.train_default_model", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    add_config_options(p, DefaultModelRecipe, FIELDS)
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        recipe = validate_config(DefaultModelRecipe, config_values(args, DefaultModelRecipe, FIELDS))
    except ConfigError as exc:
        die(str(exc))
    from rrr_ray.training.default_model import train_default_model
    from rrr_ray.training.pretrained import BaseModelError

    try:
        summary = train_default_model(recipe)
    except (BaseModelError, FileNotFoundError, ValueError) as exc:
        die(str(exc))
    summary.pop("checkpoints", None)
    print_summary("default model trained", summary)
    return 0


if __name__ == "__main__":
    sys.exit(main())
