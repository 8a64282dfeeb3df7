"""Headless Locust runs at several user counts, summarised with vLLM ``bench serve``'s metric set.

    python -m loadtest.run --host http://127.0.0.1:8000 --users 1,4,16 --duration 60s --output out/load

For each user count N it runs, as its own process (Locust must not be imported after
``requests``/``urllib3``)::

    locust -f loadtest/locustfile.py --headless -u N -r N -t DURATION \\
        --csv DIR/uN/locust --html DIR/uN/locust.html --host URL

then reads the per-request records the users wrote (``DIR/uN/records/*.jsonl``) and writes
``DIR/summary.json``: per level, all endpoints together and per endpoint, request and token
throughput and mean/median/std/p50/p90/p99 of TTFT, TPOT, ITL and E2EL in ms (see
:mod:`loadtest.metrics`), plus Locust's own request/failure counts.

Exit status: 0 when every level ran without failures, 1 when some request failed, 2 when the host
is unreachable or Locust could not run.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import re
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from loadtest.metrics import read_records, summarize, summarize_by_endpoint

HERE = Path(__file__).resolve().parent
LOCUSTFILE = HERE / "locustfile.py"


def parse_duration(s: str) -> float:
    """``60s``, ``2m``, ``1h30m``, ``45`` -> seconds."""
    s = s.strip()
    if re.fullmatch(r"\d+(\.\d+)?", s):
        return float(s)
    parts = re.findall(r"(\d+(?:\.\d+)?)([hms])", s)
    if not parts or "".join(a + b for a, b in parts) != s:
        raise argparse.ArgumentTypeError(f"bad duration {s!r} (e.g. 60s, 2m, 1h30m)")
    return sum(float(v) * {"h": 3600, "m": 60, "s": 1}[u] for v, u in parts)


def check_host(host: str, timeout: float = 10.0) -> str | None:
    """``None`` when ``GET {host}/health`` answers, else why not."""
    try:
        with urllib.request.urlopen(f"{host.rstrip('/')}/health", timeout=timeout) as r:
            if r.status != 200:
                return f"GET /health answered {r.status}"
    except urllib.error.HTTPError as exc:
        return f"GET /health answered {exc.code}"
    except (urllib.error.URLError, OSError) as exc:
        return f"{type(exc).__name__}: {getattr(exc, 'reason', exc)}"
    return None


def locust_counts(stats_csv: Path) -> dict[str, Any]:
    """Requests and failures per row of Locust's ``*_stats.csv`` (the streamed requests and the events)."""
    rows: dict[str, Any] = {}
    if not stats_csv.exists():
        return rows
    with stats_csv.open(newline="") as f:
        for row in csv.DictReader(f):
            key = f"{row['Type']} {row['Name']}".strip()
            rows[key] = {
                "requests": int(row["Request Count"]),
                "failures": int(row["Failure Count"]),
                "median": _num(row.get("Median Response Time")),
                "p90": _num(row.get("90%")),
                "p99": _num(row.get("99%")),
            }
    return rows


def _num(x: str | None) -> float | None:
    try:
        return float(x) if x not in (None, "", "N/A") else None
    except ValueError:
        return None


def run_level(args, users: int, out: Path) -> dict[str, Any]:
    level_dir = out / f"u{users}"
    records_dir = level_dir / "records"
    records_dir.mkdir(parents=True, exist_ok=True)
    for old in records_dir.glob("*.jsonl"):
        old.unlink()
    env = {
        **os.environ,
        "RRR_LT_MAX_TOKENS": str(args.max_tokens),
        "RRR_LT_MIX": args.mix,
        "RRR_LT_TEMPERATURE": str(args.temperature),
        "RRR_LT_IGNORE_EOS": "1" if args.ignore_eos else "0",
        "RRR_LT_RECORDS_DIR": str(records_dir),
    }
    if args.model:
        env["RRR_LT_MODEL"] = args.model
    if args.prompts:
        env["RRR_LT_PROMPTS"] = str(Path(args.prompts).resolve())
    cmd = [
        sys.executable, "-m", "locust", "-f", str(LOCUSTFILE), "--headless",
        "-u", str(users), "-r", str(users), "-t", args.duration,
        "--csv", str(level_dir / "locust"), "--html", str(level_dir / "locust.html"),
        "--host", args.host, "--only-summary", "--loglevel", "WARNING",
        "--stop-timeout", str(int(args.stop_timeout)),
    ]
    print(f"[loadtest] users={users}: {' '.join(cmd[2:])}", flush=True)
    t0 = time.time()
    proc = subprocess.run(cmd, env=env, cwd=str(HERE.parent), capture_output=True, text=True)
    wall = time.time() - t0
    (level_dir / "locust.log").write_text(proc.stdout + proc.stderr)
    counts = locust_counts(level_dir / "locust_stats.csv")
    if not counts:
        raise RuntimeError(f"locust produced no statistics (exit {proc.returncode}):\n{proc.stderr[-3000:]}")
    records = read_records(records_dir) if any(records_dir.glob("*.jsonl")) else []
    streamed = {k: v for k, v in counts.items() if k.startswith("POST ") and "[stream]" in k}
    level = {
        "users": users,
        "wall_s": wall,
        "locust_exit_code": proc.returncode,
        "locust_requests": sum(v["requests"] for v in streamed.values()),
        "locust_failures": sum(v["failures"] for k, v in counts.items() if k != "Aggregated"),
        "overall": summarize(records),
        "by_endpoint": summarize_by_endpoint(records),
        "locust_stats": counts,
        "files": {"csv_prefix": str(level_dir / "locust"), "html": str(level_dir / "locust.html"),
                  "records": str(records_dir)},
    }
    o = level["overall"]
    print(f"[loadtest] users={users}: {o['completed']} ok, {level['locust_failures']} failed; "
          f"{o['output_throughput']:.1f} tok/s, {o['request_throughput']:.2f} req/s; TTFT p50 "
          f"{o['ttft_ms']['p50']:.1f} ms, TPOT p50 {o['tpot_ms']['p50']:.2f} ms, ITL p50 {o['itl_ms']['p50']:.2f} ms, "
          f"E2EL p50 {o['e2el_ms']['p50']:.0f} ms", flush=True)
    return level


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--host", default=os.environ.get("RRR_LT_HOST", "http://127.0.0.1:8000"))
    ap.add_argument("--users", default="1,4,16", help="comma-separated user counts")
    ap.add_argument("--duration", default="60s", help="per level, Locust syntax (60s, 2m)")
    ap.add_argument("--output", default="out/loadtest")
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--mix", default="generate:1,chat:1", help="endpoint weights, e.g. generate:1,chat:1")
    ap.add_argument("--model", default=None, help="model name to send (default: first of GET /v1/models)")
    ap.add_argument("--prompts", default=None, help="prompts file (default loadtest/prompts.txt)")
    ap.add_argument("--temperature", type=float, default=0.7)
    ap.add_argument("--ignore-eos", action="store_true", help="send ignore_eos: true (fixed-length outputs)")
    ap.add_argument("--stop-timeout", type=float, default=30, help="seconds in-flight requests get at the end")
    args = ap.parse_args(argv)
    args.host = args.host.rstrip("/")
    parse_duration(args.duration)
    users = [int(u) for u in args.users.split(",") if u.strip()]

    why = check_host(args.host)
    if why:
        print(f"error: cannot reach the rrr-ray graph at {args.host} ({why}). Start it first "
              f"(`make serve`) or pass --host URL.", file=sys.stderr)
        return 2

    out = Path(args.output)
    out.mkdir(parents=True, exist_ok=True)
    levels = []
    try:
        for n in users:
            levels.append(run_level(args, n, out))
    except RuntimeError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    summary = {
        "host": args.host,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "duration_per_level": args.duration,
        "max_tokens": args.max_tokens,
        "mix": args.mix,
        "temperature": args.temperature,
        "ignore_eos": args.ignore_eos,
        "percentiles": [50, 90, 99],
        "units": {"*_ms": "milliseconds", "*_throughput": "per second",
                  "tokens_per_s_per_request": "tokens/s"},
        "failures_total": sum(lv["locust_failures"] for lv in levels),
        "levels": levels,
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    print(f"[loadtest] wrote {out / 'summary.json'}", flush=True)
    return 1 if summary["failures_total"] else 0


if __name__ == "__main__":
    sys.exit(main())
