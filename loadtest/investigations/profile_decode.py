"""Where one stream's decode time goes: torch's profiler over a vLLM engine run in this process
(``VLLM_ENABLE_V1_MULTIPROCESSING=0``, the served executor on one CPU), one request of
``--max-tokens`` tokens at the product's sampling, after a warm-up. The operators' own CPU time is
grouped (weights: the matmuls that read the weights; attention; sampling; norms and activations;
other operators) and the rest of the wall time, outside any torch operator, is Python: vLLM's
scheduler, input preparation, output processing. Prints the table and writes JSON.

    python -m loadtest.investigations.profile_decode --model models/rrr-smollm2 --dtype bfloat16 --out out/speed/profile.json
    RRR_VLLM_TOP_P=sort python -m loadtest.investigations.profile_decode ...   # with vLLM's sorting top-p

``py-spy record --native -p PID`` on a served engine gives the same split by Python frame.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path
from typing import Any

CATEGORIES: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("sampling", ("sort", "topk", "softmax", "cumsum", "scatter", "gather", "masked_fill", "exponential",
                  "gumbel", "argmax", "randint", "multinomial", "div", "log_softmax")),
    ("attention", ("attention", "attn", "paged", "sdpa", "kv_cache", "reshape_and_cache")),
    ("weights (matmul)", ("mm", "linear", "matmul", "gemm", "onednn", "bmm")),
    ("norms, activations", ("rms_norm", "silu", "gelu", "act_and_mul", "rotary", "layer_norm")),
)


def category(op: str) -> str:
    name = op.lower()
    for cat, keys in CATEGORIES:
        if any(k in name for k in keys):
            return cat
    return "other operators"


def profile(model: str, dtype: str, max_tokens: int, temperature: float, top_p: float) -> dict[str, Any]:
    import torch
    from vllm import LLM, SamplingParams

    from rrr_ray.serving.vllm_compat.cpu_binding import ENGINE_CPUS_KEY, PINNED_EXECUTOR
    from rrr_ray.serving.hardware import resolve_dtype

    llm = LLM(model=model, dtype=resolve_dtype(dtype), max_model_len=2048, enforce_eager=True, seed=0,
              disable_log_stats=True, distributed_executor_backend=PINNED_EXECUTOR,
              additional_config={ENGINE_CPUS_KEY: [0]})
    messages = [[{"role": "user", "content": "I feel stuck at work. What should I do?"}]]
    params = SamplingParams(max_tokens=max_tokens, temperature=temperature, top_p=top_p, ignore_eos=True, seed=0)
    llm.chat(messages, params, use_tqdm=False)  # warm-up
    t0 = time.perf_counter()
    llm.chat(messages, params, use_tqdm=False)
    plain_s = time.perf_counter() - t0
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        t0 = time.perf_counter()
        llm.chat(messages, params, use_tqdm=False)
        wall = time.perf_counter() - t0
    ops: dict[str, float] = {}
    for e in prof.key_averages():
        if e.self_cpu_time_total > 0:
            ops[e.key] = ops.get(e.key, 0.0) + e.self_cpu_time_total / 1e6
    by_cat: dict[str, float] = {}
    for op, s in ops.items():
        by_cat[category(op)] = by_cat.get(category(op), 0.0) + s
    by_cat["Python (scheduling, inputs, outputs)"] = max(0.0, wall - sum(ops.values()))
    per_token_ms = {k: round(v / max_tokens * 1000, 2) for k, v in sorted(by_cat.items(), key=lambda kv: -kv[1])}
    top = sorted(ops.items(), key=lambda kv: -kv[1])[:15]
    return {"model": model, "dtype": resolve_dtype(dtype), "max_tokens": max_tokens, "temperature": temperature,
            "top_p": top_p, "top_p_path": os.environ.get("RRR_VLLM_TOP_P") or "top_p_filter",
            "tok_s_unprofiled": round(max_tokens / plain_s, 1), "wall_s_profiled": round(wall, 3),
            "ms_per_token": per_token_ms, "top_operators_ms_per_token": {k: round(v / max_tokens * 1000, 3)
                                                                         for k, v in top}}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="models/rrr-smollm2")
    ap.add_argument("--dtype", default="auto")
    ap.add_argument("--max-tokens", type=int, default=128)
    ap.add_argument("--temperature", type=float, default=0.7)
    ap.add_argument("--top-p", type=float, default=0.9)
    ap.add_argument("--out")
    args = ap.parse_args(argv)
    os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"  # the engine in this process, under the profiler
    result = profile(args.model, args.dtype, args.max_tokens, args.temperature, args.top_p)
    print(f"[profile] {result['dtype']}, top-p path {result['top_p_path']}: {result['tok_s_unprofiled']} tok/s "
          f"unprofiled; ms per token:")
    for k, v in result["ms_per_token"].items():
        print(f"[profile]   {k:<38} {v:7.2f}")
    for k, v in result["top_operators_ms_per_token"].items():
        print(f"[profile]     {k:<60} {v:7.3f}")
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
