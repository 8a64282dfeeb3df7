"""Which processes use the machine's CPU over a window: where a graph's time goes under load.

    python -m loadtest.investigations.cpu_share --seconds 30 --output out/cpu_share.json

Reads every process's user + system time from ``/proc`` at the start and the end of the window and
reports each process that used at least ``--min-percent`` of one core, named by its command line
(Ray's workers by their process title, e.g. ``ray::ServeReplica:rrr:RRRModel:rrr-tiny``), with its
niceness and the CPU it is allowed on. Run it beside a load (``loadtest.compare`` at one level, or
Locust against ``make serve``).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Optional

TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> Optional[float]:
    """A process's user + system CPU time in seconds, or None once it is gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / TICKS  # utime, stime (fields 14 and 15 of stat)


def describe(pid: int) -> dict:
    try:
        cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
        nice = int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[16])
        cpus = sorted(os.sched_getaffinity(pid))
    except OSError:
        return {"pid": pid, "command": "?", "nice": None, "cpus": []}
    return {"pid": pid, "command": cmd[:160], "nice": nice, "cpus": cpus}


def snapshot() -> dict[int, float]:
    out = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            seconds = cpu_seconds(int(entry))
            if seconds is not None:
                out[int(entry)] = seconds
    return out


def cpu_share(seconds: float, min_percent: float = 1.0) -> dict:
    """Per-process CPU over ``seconds``, as percent of one core, highest first."""
    before, start = snapshot(), time.monotonic()
    time.sleep(seconds)
    after, wall = snapshot(), time.monotonic() - start
    rows = []
    for pid, end in after.items():
        percent = 100.0 * (end - before.get(pid, 0.0)) / wall
        if percent >= min_percent:
            rows.append({**describe(pid), "percent_of_one_core": round(percent, 1)})
    rows.sort(key=lambda r: -r["percent_of_one_core"])
    total = sum(r["percent_of_one_core"] for r in rows)
    return {"created": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "window_s": round(wall, 2),
            "cores": os.cpu_count(), "total_percent_of_one_core": round(total, 1), "processes": rows}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m loadtest.investigations.cpu_share", description=__doc__.split("\n\n")[0])
    ap.add_argument("--seconds", type=float, default=30.0)
    ap.add_argument("--min-percent", type=float, default=1.0)
    ap.add_argument("--output", type=Path, default=None, help="write the report as JSON here too")
    args = ap.parse_args(argv)
    if args.seconds <= 0:
        ap.error("--seconds must be positive")
    report = cpu_share(args.seconds, args.min_percent)
    for r in report["processes"]:
        print(f"{r['percent_of_one_core']:>6.1f}%  nice {r['nice']!s:>3}  cpus {','.join(map(str, r['cpus'])):<5} {r['command'][:90]}")
    print(f"total {report['total_percent_of_one_core']:.1f}% of one core over {report['window_s']} s "
          f"({report['cores']} cores)")
    if args.output:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
