"""How `serve run` stops on SIGTERM: how long /health still answers 200 and what is left.

    python -m rrr_ray.env python deploy/measure_stop.py serve_config.tiny.yaml serve            # SIGTERM to serve run
    python -m rrr_ray.env python deploy/measure_stop.py serve_config.tiny.yaml group            # to its process group
    LAUNCH="python -m rrr_ray.graceful serve" python -m rrr_ray.env python deploy/measure_stop.py ...

Starts `serve run CONFIG` (or $LAUNCH run CONFIG) in a session of its own, waits for /health 200,
sends SIGTERM, polls /health every 0.1 s, then prints the transitions, the exit status and the
processes of this checkout that are left (one line each; figures in docs/deploy.md).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import psutil
import yaml

REPO = Path(__file__).resolve().parents[1]


def status(url: str):
    try:
        return httpx.get(f"{url}/health", timeout=2).status_code
    except httpx.HTTPError as exc:
        return type(exc).__name__


def main(config: str, target: str) -> int:
    port = (yaml.safe_load(Path(config).read_text()).get("http_options") or {}).get("port", 8000)
    url = f"http://127.0.0.1:{port}"
    launch = os.environ.get("LAUNCH", os.path.join(os.path.dirname(sys.executable), "serve")).split()
    log = open(os.environ.get("LOG", os.devnull), "w")
    proc = subprocess.Popen([*launch, "run", config], stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    start = time.monotonic()
    while status(url) != 200:
        if time.monotonic() - start > 600 or proc.poll() is not None:
            print("error: /health never answered 200", file=sys.stderr)
            return 1
        time.sleep(1)
    print(f"healthy after {time.monotonic() - start:.1f} s")
    time.sleep(3)
    sent = time.monotonic()
    os.killpg(proc.pid, signal.SIGTERM) if target == "group" else proc.send_signal(signal.SIGTERM)
    seen: list = []
    while time.monotonic() - sent < 60:
        s = status(url)
        if not seen or seen[-1][1] != s:
            seen.append((round(time.monotonic() - sent, 2), s))
        if proc.poll() is not None and not isinstance(s, int):
            break
        time.sleep(0.1)
    proc.wait(timeout=60)
    print(f"exit status {proc.returncode} after {time.monotonic() - sent:.1f} s; /health after SIGTERM: {seen}")
    time.sleep(3)
    left = []
    for p in psutil.process_iter():
        try:
            if str(REPO) in " ".join(p.cmdline()) and p.pid != os.getpid():
                left.append((p.pid, p.name()))
        except psutil.Error:
            continue
    print(f"left: {left}")
    return 0


if __name__ == "__main__":
    if len(sys.argv) != 3 or sys.argv[2] not in ("serve", "group"):
        sys.exit(__doc__)
    sys.exit(main(sys.argv[1], sys.argv[2]))
