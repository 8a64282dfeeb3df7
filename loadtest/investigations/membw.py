"""Memory read bandwidth as torch sees it: ``torch.sum`` over a 1 GiB float32 tensor (far larger than
any cache), at each thread count; rounds, median with every round. With ``--model`` it also states
the decode limit that bandwidth sets: one decode step reads every weight once, so one stream can
go no faster than ``bandwidth / bytes of weights`` tokens per second (per dtype).

    python -m loadtest.investigations.membw --threads 1,2 --rounds 7 --model models/rrr-smollm2 --out out/membw.json
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import time
from pathlib import Path
from typing import Any

GIB = 1 << 30
DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}


def read_bandwidth(threads: int, rounds: int, gib: float = 1.0) -> dict[str, Any]:
    """GB/s (1e9 bytes) of ``torch.sum`` over ``gib`` GiB on ``threads`` threads, per round."""
    import torch

    torch.set_num_threads(threads)
    x = torch.ones(int(gib * GIB) // 4, dtype=torch.float32)
    x.sum()  # pages touched, threads started
    per_round = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        x.sum()
        per_round.append(x.numel() * 4 / (time.perf_counter() - t0) / 1e9)
    return {"threads": threads, "gb_s_median": round(statistics.median(per_round), 2),
            "gb_s_rounds": [round(v, 2) for v in per_round]}


def weight_parameters(model: str) -> int:
    """Parameters in a model folder's safetensors: what one decode step reads (a tied output
    projection is the embedding, stored and read once per step; the lookup reads one row)."""
    from safetensors import safe_open

    total = 0
    for f in sorted(Path(model).glob("*.safetensors")):
        with safe_open(str(f), "pt") as st:
            for k in st.keys():
                total += math.prod(st.get_slice(k).get_shape())
    return total


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--threads", default="1,2")
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--gib", type=float, default=1.0)
    ap.add_argument("--model", help="model folder: also print the decode limit per dtype")
    ap.add_argument("--out", help="JSON file")
    args = ap.parse_args(argv)
    results: dict[str, Any] = {"date": time.strftime("%Y-%m-%d"), "gib": args.gib,
                               "levels": [read_bandwidth(int(t), args.rounds, args.gib)
                                          for t in args.threads.split(",") if t]}
    for lv in results["levels"]:
        print(f"[membw] {lv['threads']} thread(s): {lv['gb_s_median']} GB/s median, rounds {lv['gb_s_rounds']}")
    if args.model:
        params = weight_parameters(args.model)
        limits = {dt: {str(lv["threads"]): round(lv["gb_s_median"] * 1e9 / (params * b), 1) for lv in results["levels"]}
                  for dt, b in DTYPE_BYTES.items() if dt != "float16"}
        results.update(model=args.model, parameters_read_per_token=params, decode_limit_tok_s=limits)
        for dt, by_threads in limits.items():
            print(f"[membw] {args.model} {dt}: {params * DTYPE_BYTES[dt] / 1e6:.0f} MB per token, "
                  f"limit {by_threads} tok/s by threads")
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
