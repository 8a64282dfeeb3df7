"""One sampling step's top-p on CPU, vLLM's sort against ``rrr_ray.serving.vllm_compat.cpu_top_p.top_p_filter``,
on the logits of a real decode step (SmolLM2's vocabulary, temperature applied), one torch thread,
batches of 1 and 16 rows; rounds, median with every round.

    python -m loadtest.investigations.bench_top_p --model models/rrr-smollm2 --out out/speed/top_p.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path
from typing import Any


def step_logits(model: str, temperature: float, rows: int):
    """The next-token logits of ``rows`` chat prompts under ``model`` (transformers), divided by
    ``temperature`` as vLLM's sampler does before top-p."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from loadtest.client import load_prompts

    tok = AutoTokenizer.from_pretrained(model)
    lm = AutoModelForCausalLM.from_pretrained(model, dtype=torch.float32).eval()
    prompts = load_prompts()
    out = []
    with torch.no_grad():
        for i in range(rows):
            ids = tok.apply_chat_template([{"role": "user", "content": prompts[i % len(prompts)]}],
                                          add_generation_prompt=True, return_tensors="pt", return_dict=True)
            out.append(lm(**ids).logits[0, -1] / temperature)
    return torch.stack(out)


def timed(fn, logits, p, rounds: int, reps: int) -> list[float]:
    """Milliseconds per call, the median of ``reps`` calls, per round."""
    per_round = []
    for _ in range(rounds):
        ts = []
        for _ in range(reps):
            x = logits.clone()
            t0 = time.perf_counter()
            fn(x, p)
            ts.append((time.perf_counter() - t0) * 1000)
        per_round.append(round(statistics.median(ts), 3))
    return per_round


def main(argv: list[str] | None = None) -> None:
    import torch
    from vllm.v1.sample.ops.topk_topp_sampler import apply_top_k_top_p_pytorch

    from rrr_ray.serving.vllm_compat.cpu_top_p import top_p_filter

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="models/rrr-smollm2")
    ap.add_argument("--temperature", type=float, default=0.7)
    ap.add_argument("--top-p", type=float, default=0.9)
    ap.add_argument("--batches", default="1,16")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--reps", type=int, default=20)
    ap.add_argument("--out")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    sizes = [int(b) for b in args.batches.split(",") if b]
    logits_all = step_logits(args.model, args.temperature, max(sizes))

    def sort(x, p):
        return apply_top_k_top_p_pytorch(x, None, p, allow_cpu_sync=True)

    def fast(x, p):
        return top_p_filter(x, p, lambda rows, k, pr: sort(rows, pr))

    result: dict[str, Any] = {"date": time.strftime("%Y-%m-%d"), "model": args.model, "temperature": args.temperature,
                              "top_p": args.top_p, "vocab": logits_all.shape[1], "batches": {}}
    for b in sizes:
        logits, p = logits_all[:b].contiguous(), torch.full((b,), args.top_p)
        nucleus = int((~torch.isinf(sort(logits.clone(), p))).sum(dim=1).max())
        r = {"sort_ms": timed(sort, logits, p, args.rounds, args.reps),
             "top_p_filter_ms": timed(fast, logits, p, args.rounds, args.reps), "largest_nucleus": nucleus}
        r["ratio"] = round(statistics.median(r["sort_ms"]) / statistics.median(r["top_p_filter_ms"]), 1)
        result["batches"][str(b)] = r
        print(f"[top-p] batch {b}: sort {statistics.median(r['sort_ms']):.3f} ms (rounds {r['sort_ms']}), "
              f"top_p_filter {statistics.median(r['top_p_filter_ms']):.3f} ms (rounds {r['top_p_filter_ms']}), "
              f"{r['ratio']}x; largest nucleus {nucleus} tokens")
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
