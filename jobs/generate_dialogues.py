"""Generate RRR dialogues on Ray against an OpenAI-compatible endpoint.

    python -m jobs.generate_dialogues --base-url http://127.0.0.1:8000/v1 --model rrr-smollm2 \
        --num-dialogues 100 --concurrency 8 --output out/generated [--resume] [--seed 0]

The same through Ray's job API (a running cluster):

    ray job submit --address http://127.0.0.1:<dashboard-port> --working-dir . -- \
        python -m jobs.generate_dialogues --num-dialogues 100 --output /abs/path/out

The options and the job are in ``rrr_ray.data.generation``; this is the entry point.
"""

from __future__ import annotations

import argparse
import logging
import sys

from rrr_ray.data.generation.cli import add_generation_arguments, run


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m jobs.generate_dialogues", description=__doc__.split("\n\n")[0])
    add_generation_arguments(p)
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    return run(args)


if __name__ == "__main__":
    sys.exit(main())
