"""Command-line client for a running rrr-ray server (the seed's test_api.py and test_streaming.py).

    python -m rrr_ray.client "I feel stuck at work." [--stream] [--guided] [--url URL] [--model NAME]

Streams print tokens as they arrive, then a summary line with timings and the RRR verdict.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any, Optional

import httpx

DEFAULT_URL = "http://127.0.0.1:8000"


def build_body(args: argparse.Namespace) -> dict[str, Any]:
    body: dict[str, Any] = {"prompt": args.prompt, "max_new_tokens": args.max_new_tokens,
                            "temperature": args.temperature, "top_p": args.top_p, "top_k": args.top_k,
                            "repetition_penalty": args.repetition_penalty, "stream": args.stream,
                            "guided": args.guided, "repair": args.repair}
    for key in ("model", "system", "seed"):
        if getattr(args, key) is not None:
            body[key] = getattr(args, key)
    return body


def summary(metadata: Optional[dict], validation: Optional[dict]) -> str:
    parts = []
    if metadata:
        parts.append(f"{metadata['output_tokens']} tokens in {metadata['inference_time_seconds']:.2f} s "
                     f"({metadata['tokens_per_second']:.1f} tok/s, first token after "
                     f"{(metadata.get('time_to_first_token_seconds') or 0) * 1000:.0f} ms) from {metadata.get('model')}")
    if validation:
        if validation["valid"]:
            parts.append("RRR: valid")
        else:
            parts.append("RRR: invalid (" + ", ".join(e["code"] for e in validation["errors"]) + ")")
    return " | ".join(parts)


def auth_headers(api_key: Optional[str]) -> dict[str, str]:
    """``Authorization: Bearer`` with ``api_key``, else with the first key of ``RRR_API_KEY`` (the
    server's variable, comma-separated keys); no header without either."""
    key = api_key or next((k.strip() for k in os.environ.get("RRR_API_KEY", "").split(",") if k.strip()), "")
    return {"Authorization": f"Bearer {key}"} if key else {}


def run(args: argparse.Namespace, out=sys.stdout) -> int:
    url = args.url.rstrip("/") + "/generate"
    body = build_body(args)
    headers = auth_headers(args.api_key)
    try:
        if not args.stream:
            r = httpx.post(url, json=body, headers=headers, timeout=args.timeout)
            data = r.json()
            if r.status_code != 200 or data.get("error"):
                print(f"error ({r.status_code}): {data.get('error')}", file=sys.stderr)
                return 1
            if args.json:
                print(json.dumps(data, indent=2), file=out)
            else:
                print(data["generated_text"], file=out)
                if data.get("repaired_text") is not None:
                    print(f"\n--- repaired ---\n{data['repaired_text']}", file=out)
                print(f"\n[{summary(data['metadata'], data['validation'])}]", file=out)
            return 0
        with httpx.stream("POST", url, json=body, headers=headers, timeout=args.timeout) as r:
            if r.status_code != 200:
                r.read()
                print(f"error ({r.status_code}): {r.json().get('error')}", file=sys.stderr)
                return 1
            for line in r.iter_lines():
                if not line:
                    continue
                item = json.loads(line)
                if args.json:
                    print(line, file=out, flush=True)
                elif not item["finished"]:
                    print(item["token"], end="", file=out, flush=True)
                elif item.get("error"):
                    print(f"\nerror: {item['error']}", file=sys.stderr)
                    return 1
                else:
                    if item.get("repaired_text") is not None:
                        print(f"\n--- repaired ---\n{item['repaired_text']}", file=out)
                    print(f"\n[{summary(item.get('metadata'), item.get('validation'))}]", file=out)
        return 0
    except httpx.ConnectError:
        print(f"error: cannot connect to {args.url} (is `make serve` running?)", file=sys.stderr)
        return 2
    except httpx.TimeoutException:
        print(f"error: no answer from {args.url} within {args.timeout} s", file=sys.stderr)
        return 2


def main(argv: Optional[list[str]] = None) -> int:
    p = argparse.ArgumentParser(prog="python -m rrr_ray.client", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("prompt", help="what the user says")
    p.add_argument("--url", default=DEFAULT_URL, help=f"server base URL (default {DEFAULT_URL})")
    p.add_argument("--stream", action="store_true", help="print tokens as they arrive (NDJSON)")
    p.add_argument("--guided", action="store_true", help="constrain decoding to valid RRR")
    p.add_argument("--repair", action="store_true", help="also print the repaired reply")
    p.add_argument("--model", help="served model or LoRA adapter (see /v1/models)")
    p.add_argument("--system", help="system message")
    p.add_argument("--max-new-tokens", type=int, default=256)
    p.add_argument("--temperature", type=float, default=0.7)
    p.add_argument("--top-p", type=float, default=0.9)
    p.add_argument("--top-k", type=int, default=40)
    p.add_argument("--repetition-penalty", type=float, default=1.1)
    p.add_argument("--seed", type=int)
    p.add_argument("--timeout", type=float, default=300.0, help="seconds to wait for the server")
    p.add_argument("--api-key", help="the server's API key (default: the first key of $RRR_API_KEY)")
    p.add_argument("--json", action="store_true", help="print raw JSON / NDJSON")
    return run(p.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
