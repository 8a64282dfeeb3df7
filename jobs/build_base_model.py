"""Build the from-scratch base model: byte-level BPE tokenizer (ChatML) + a small Mistral pretrained
on the seed dialogues with the RRR tags stripped.

    python -m jobs.build_base_model --output-dir models/rrr-tiny-base
"""

from __future__ import annotations

import argparse
import logging
import sys

from jobs._common import die, env_defaults, print_summary
from rrr_ray.training.base import BaseModelConfig
from rrr_ray.config_cli import ConfigError, add_config_options, config_values, validate_config

FIELDS = ("data", "output_dir", "vocab_size", "loop.epochs", "loop.max_minutes", "loop.lr", "loop.threads",
          "loop.seed")


def parse_args(argv=None) -> argparse.Namespace:
    """Options of the :class:`BaseModelConfig` fields (defaults and help from the config), plus
    ``--no-progress``."""
    p = argparse.ArgumentParser(prog="python -m jobs.build_base_model", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    add_config_options(p, BaseModelConfig, FIELDS)
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    return p.parse_args(argv)


def main(argv=None) -> int:
    env_defaults()
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    from rrr_ray.training.base import build_base_model

    try:
        cfg = validate_config(BaseModelConfig, config_values(args, BaseModelConfig, FIELDS))
        summary = build_base_model(cfg, progress=not args.no_progress)
    except (ConfigError, FileNotFoundError, ValueError) as exc:
        die(str(exc))
    print_summary("base model built", summary)
    return 0


if __name__ == "__main__":
    sys.exit(main())
