"""Command-line options of the generation job, built from the fields of ``GenerationConfig``.

Each option fills the field of the same name (``--num-dialogues`` fills ``num_dialogues``); its
type, default, choices and help come from the field (``rrr_ray.config_cli``).
Used by ``python -m jobs.generate_dialogues`` and ``rrr generate``.
"""

from __future__ import annotations

import argparse
import sys

from rrr_ray.config_cli import ConfigError, add_config_options, config_values, validate_config
from rrr_ray.data.generation.config import GenerationConfig
from rrr_ray.data.generation.errors import GenerationError

# Fields set from code only (not command-line options), and options that must be given.
NOT_OPTIONS = frozenset({"few_shot_turns", "backoff_base", "backoff_max", "topics"})
REQUIRED = ("output",)
OPTIONS = tuple(name for name in GenerationConfig.model_fields if name not in NOT_OPTIONS)


def add_generation_arguments(p: argparse.ArgumentParser) -> None:
    """Add the job's options to ``p``: one per ``GenerationConfig`` field, then the runner's own."""
    add_config_options(p, GenerationConfig, OPTIONS, required=REQUIRED)
    p.add_argument("--no-ray", dest="use_ray", action="store_false",
                   help="run in this process on one event loop instead of Ray workers (debugging)")
    p.add_argument("--summary-json", action="store_true", help="print the final summary as JSON")


def config_from_args(args: argparse.Namespace) -> GenerationConfig:
    """The config of the options given; a refused value raises ``ConfigError``."""
    return validate_config(GenerationConfig, config_values(args, GenerationConfig, OPTIONS))


def run(args: argparse.Namespace) -> int:
    """Run the job for parsed arguments; print the summary (or one ``error:`` line); exit status."""
    from rrr_ray.data.generation.run import run_generation

    try:
        cfg = config_from_args(args)
        summary = run_generation(cfg, use_ray=args.use_ray)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except GenerationError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("error: interrupted; run again with --resume to continue", file=sys.stderr)
        return 130
    if args.summary_json:
        print(summary.model_dump_json(indent=2))
    else:
        print("\n".join(summary.lines()))
    return 0 if summary.total >= summary.requested else 1

