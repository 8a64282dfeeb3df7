"""What guided decoding's grammar costs per token, with and without the sections' length caps.

    python -m loadtest.investigations.bench_grammar --model models/rrr-smollm2 --output out/bench_grammar

Compiles ``guided_regex(bounded=True)`` and ``guided_regex(bounded=False)`` with xgrammar (the
backend vLLM uses), then walks a valid reply token by token as the engine does: fill the next
token's mask, accept the token. Prints compile time and the mean and median microseconds of each
step, and writes ``bench_grammar.json``. No engine, no Ray: the grammar alone, on one core.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Any

from rrr_ray.format import guided_regex

REPLY = ("<react>*leans forward, eyes soft and attentive, nodding slowly*</react>\n<respond>That sounds really "
         "hard. It makes sense that you feel stuck when the days all blur together and nothing seems to "
         "change.</respond>\n<reflect>They seem worn down more than sad; naming the sameness might help them "
         "feel seen.</reflect>")
"""A valid reply in the canonical layout (every token of it is admitted by both regexes)."""


def measure(compiler: Any, token_ids: list[int], regex: str, vocab_size: int, repeats: int) -> dict[str, float]:
    """Compile ``regex``, then ``repeats`` walks of ``token_ids``: times in milliseconds and microseconds."""
    import xgrammar as xgr

    start = time.perf_counter()
    compiled = compiler.compile_regex(regex)
    compile_ms = (time.perf_counter() - start) * 1e3
    bitmask = xgr.allocate_token_bitmask(1, vocab_size)
    fills: list[float] = []
    accepts: list[float] = []
    for _ in range(repeats):
        matcher = xgr.GrammarMatcher(compiled)
        for token in token_ids:
            t0 = time.perf_counter()
            matcher.fill_next_token_bitmask(bitmask)
            t1 = time.perf_counter()
            if not matcher.accept_token(token):
                raise ValueError(f"the grammar refuses token {token} of the reference reply")
            fills.append(t1 - t0)
            accepts.append(time.perf_counter() - t1)
    us = 1e6
    return {"compile_ms": round(compile_ms, 1),
            "fill_mean_us": round(statistics.mean(fills) * us, 1), "fill_p50_us": round(statistics.median(fills) * us, 1),
            "accept_mean_us": round(statistics.mean(accepts) * us, 1),
            "accept_p50_us": round(statistics.median(accepts) * us, 1)}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", type=Path, default=Path("models/rrr-smollm2"), help="folder with the tokenizer")
    p.add_argument("--repeats", type=int, default=5, help="walks of the reply per regex")
    p.add_argument("--output", type=Path, required=True, help="folder for bench_grammar.json")
    args = p.parse_args(argv)
    if args.repeats < 1:
        p.error("--repeats must be at least 1")
    if not (args.model / "tokenizer_config.json").is_file():
        p.error(f"{args.model}: no tokenizer here (tokenizer_config.json); run `make install` for the models")

    import xgrammar as xgr
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(args.model))
    info = xgr.TokenizerInfo.from_huggingface(tokenizer, vocab_size=len(tokenizer))
    compiler = xgr.GrammarCompiler(info, cache_enabled=False)
    token_ids = tokenizer.encode(REPLY, add_special_tokens=False)
    results = {name: measure(compiler, token_ids, guided_regex(bounded=bounded), info.vocab_size, args.repeats)
               for name, bounded in (("capped", True), ("uncapped", False))}
    for name, r in results.items():
        print(f"{name:>8}: compile {r['compile_ms']} ms; fill mask {r['fill_mean_us']} us mean "
              f"({r['fill_p50_us']} p50); accept token {r['accept_mean_us']} us mean ({r['accept_p50_us']} p50)")
    report = {"created": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "command": " ".join(sys.argv),
              "model": str(args.model), "vocab_size": info.vocab_size, "reply_tokens": len(token_ids),
              "repeats": args.repeats, "python": platform.python_version(), "results": results}
    args.output.mkdir(parents=True, exist_ok=True)
    (args.output / "bench_grammar.json").write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.output / 'bench_grammar.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
