"""Build the from-scratch base model: byte-level BPE tokenizer (ChatML) + a small Mistral pretrained
on the seed dialogues with the RRR tags stripped.

    python -m jobs.build_base_model --output-dir models/rrr-tiny-base
"""

from __future__ import annotations

import argparse
import logging
import sys

from jobs._common import die, env_defaults, print_summary


def parse_args(argv=None):
    p = argparse.ArgumentParser(prog="python -m jobs.build_base_model", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", nargs="+", default=None, help="dialogue files/folders or saved HF datasets (default: the seed)")
    p.add_argument("--output-dir", default="models/rrr-tiny-base", help="model folder to write")
    p.add_argument("--vocab-size", type=int, default=3000, help="BPE vocabulary upper bound")
    p.add_argument("--epochs", type=float, default=60, help="passes over the data (upper bound)")
    p.add_argument("--max-minutes", type=float, default=3.0, help="training time budget")
    p.add_argument("--lr", type=float, default=2e-3, help="peak learning rate")
    p.add_argument("--threads", type=int, default=2, help="torch threads")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    return p.parse_args(argv)


def main(argv=None) -> int:
    env_defaults()
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    from rrr_ray.training.base import BaseModelConfig, build_base_model
    from rrr_ray.training.loop import LoopConfig

    cfg = BaseModelConfig(output_dir=args.output_dir, vocab_size=args.vocab_size,
                          loop=LoopConfig(epochs=args.epochs, max_minutes=args.max_minutes, lr=args.lr,
                                          all_tokens=True, threads=args.threads, seed=args.seed))
    if args.data:
        cfg.data = args.data
    try:
        summary = build_base_model(cfg, progress=not args.no_progress)
    except (FileNotFoundError, ValueError) as exc:
        die(str(exc))
    print_summary("base model built", summary)
    return 0


if __name__ == "__main__":
    sys.exit(main())
