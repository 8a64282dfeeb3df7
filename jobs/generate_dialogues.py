"""Generate RRR dialogues on Ray against an OpenAI-compatible endpoint.

    python -m jobs.generate_dialogues --base-url http://127.0.0.1:8000/v1 --model rrr-tiny \
        --num-dialogues 100 --concurrency 8 --output out/generated [--resume] [--seed 0]

The same through Ray's job API (a running cluster):

    ray job submit --address http://127.0.0.1:<dashboard-port> --working-dir . -- \
        python -m jobs.generate_dialogues --num-dialogues 100 --output /abs/path/out

The logic lives in ``rrr_ray.data.generation``; this is the argument parser.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from rrr_ray.data.generation import GenerationConfig


def add_generation_arguments(p: argparse.ArgumentParser) -> None:
    f = GenerationConfig.model_fields

    def h(name: str) -> str:
        return f[name].description or ""

    p.add_argument("--base-url", default=None, help=h("base_url") + " (default: $OPENAI_BASE_URL or http://127.0.0.1:8000/v1)")
    p.add_argument("--api-key", default=None, help="API key (default: $OPENAI_API_KEY)")
    p.add_argument("--model", default=None, help=h("model"))
    p.add_argument("--num-dialogues", type=int, default=10, help=h("num_dialogues"))
    p.add_argument("--concurrency", type=int, default=4, help=h("concurrency"))
    p.add_argument("--workers", type=int, default=None, help=h("workers"))
    p.add_argument("--output", type=Path, required=True, help=h("output"))
    p.add_argument("--resume", action="store_true", help=h("resume"))
    p.add_argument("--seed", type=int, default=0, help=h("seed"))
    p.add_argument("--mode", choices=["auto", "turns", "whole"], default="auto", help=h("mode"))
    p.add_argument("--min-turns", type=int, default=2, help=h("min_turns"))
    p.add_argument("--max-turns", type=int, default=3, help=h("max_turns"))
    p.add_argument("--max-tokens", type=int, default=256, help=h("max_tokens"))
    p.add_argument("--temperature", type=float, default=0.8, help=h("temperature"))
    p.add_argument("--temperature-jitter", type=float, default=0.15, help=h("temperature_jitter"))
    p.add_argument("--top-p", type=float, default=1.0, help=h("top_p"))
    p.add_argument("--top-k", type=int, default=40, help=h("top_k"))
    p.add_argument("--max-retries", type=int, default=4, help=h("max_retries"))
    p.add_argument("--format-retries", type=int, default=2, help=h("format_retries"))
    p.add_argument("--no-repair", dest="repair", action="store_false", help="do not accept replies that repair fixes")
    p.add_argument("--guided", action="store_true", help=h("guided"))
    p.add_argument("--request-timeout", type=float, default=120.0, help=h("request_timeout"))
    p.add_argument("--shard-size", type=int, default=10, help=h("shard_size"))
    p.add_argument("--max-attempts", type=int, default=None, help=h("max_attempts"))
    p.add_argument("--examples", type=Path, default=None, help=h("examples"))
    p.add_argument("--no-progress", dest="progress", action="store_false", help="hide the progress bar")
    p.add_argument("--no-ray", dest="use_ray", action="store_false",
                   help="run in this process on one event loop instead of Ray workers (debugging)")
    p.add_argument("--summary-json", action="store_true", help="print the final summary as JSON")


def config_from_args(args: argparse.Namespace) -> GenerationConfig:
    fields = {k: v for k, v in vars(args).items() if k in GenerationConfig.model_fields and v is not None}
    return GenerationConfig(**fields)


def run(args: argparse.Namespace) -> int:
    from pydantic import ValidationError

    from rrr_ray.data.generation import GenerationError, run_generation

    try:
        cfg = config_from_args(args)
        summary = run_generation(cfg, use_ray=args.use_ray)
    except ValidationError as exc:
        err = exc.errors()[0]
        print(f"error: --{'-'.join(str(x) for x in err['loc']).replace('_', '-')}: {err['msg']}", file=sys.stderr)
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


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m jobs.generate_dialogues", description=__doc__.split("\n\n")[0])
    add_generation_arguments(p)
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    return run(args)


if __name__ == "__main__":
    sys.exit(main())
