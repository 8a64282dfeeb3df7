"""The systems that ``loadtest.compare`` measures, each started as its own process or graph: (a) the
engine benchmark driven level by level over a pipe, (b) the rrr-ray graph, (c) the seed-style server."""

from __future__ import annotations

import contextlib
import json
import os
import queue
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, Optional

from deployments.launch import free_port
from loadtest.engine_bench import REPLY
from loadtest.metrics import RequestRecord, summarize
from rrr_ray.paths import REPO
from rrr_ray.serving.derived import engine_kwargs_from_graph, graph_args, graph_env


def engine_args_from_graph(app: dict[str, Any]) -> list[str]:
    """The graph's engine settings as ``--engine-arg`` pairs for (a), so both run the same engine."""
    return [f"{k}={json.dumps(v)}" for k, v in engine_kwargs_from_graph(app).items()]


class EngineProcess:
    """System (a): ``loadtest.engine_bench --interactive`` in a subprocess, one level per call.

    Its stdout carries the engine's logs (copied to ``log_path``) and, marked, the replies."""

    def __init__(self, cmd: list[str], env: dict[str, str], log_path: Path, timeout: float) -> None:
        self.reply_prefix = REPLY
        self.timeout = timeout
        self.log_path = log_path
        self.log = open(log_path, "w")
        self.proc = subprocess.Popen(cmd, cwd=str(REPO), env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=subprocess.STDOUT, text=True, bufsize=1)
        self.lines: queue.Queue[str | None] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()
        try:
            self.startup_s = self._reply()["startup_s"]
        except RuntimeError:
            self.close()
            raise

    @classmethod
    def start(cls, args, out: Path) -> "EngineProcess":
        cmd = [sys.executable, "-m", "loadtest.engine_bench", "--interactive", "--model", args.model,
               "--max-tokens", str(args.max_tokens), "--warmup", str(args.warmup)]
        if args.prompts:
            cmd += ["--prompts", args.prompts]
        for ea in args.engine_arg:
            cmd += ["--engine-arg", ea]
        env = dict(os.environ)
        for key, value in graph_env(args.config).items():  # the graph's engine environment (ours win)
            env.setdefault(key, value)
        print(f"[compare] (a) engine: {' '.join(cmd[2:])}", flush=True)
        return cls(cmd, env, out / "engine.log", args.timeout)

    def _read(self) -> None:
        for line in self.proc.stdout:
            self.lines.put(line)
        self.lines.put(None)

    def _reply(self) -> dict[str, Any]:
        deadline = time.monotonic() + self.timeout
        while True:
            try:
                line = self.lines.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                raise RuntimeError(f"engine benchmark silent for {self.timeout:.0f} s; see {self.log_path}") from None
            if line is None:
                raise RuntimeError(f"engine benchmark exited ({self.proc.wait()}); see {self.log_path}")
            if line.startswith(self.reply_prefix):
                return json.loads(line[len(self.reply_prefix):])
            self.log.write(line)

    def level(self, c: int, n: int, warmup: int, **options: Any) -> dict[str, Any]:
        """One level; ``options`` are the command's optional fields (``seeded``, ``temperature``)."""
        self.proc.stdin.write(json.dumps({"concurrency": c, "requests": n, "warmup": warmup, **options}) + "\n")
        self.proc.stdin.flush()
        data = self._reply()
        summary = summarize([RequestRecord.from_dict(r) for r in data["records"]], data["wall_s"])
        print(f"[compare] (engine) c={c}: {summary['completed']}/{n} ok, {summary['output_throughput']:.1f} tok/s, "
              f"TTFT p50 {summary['ttft_ms']['p50']:.1f} ms", flush=True)
        return summary

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.proc.stdin.close()
        try:
            self.proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        if self.log.closed:
            return
        with contextlib.suppress(queue.Empty):  # the engine's last log lines (the reader may still be adding)
            while (line := self.lines.get(timeout=1.0)) is not None:
                self.log.write(line)
        self.log.close()


@contextlib.contextmanager
def serve_graph(args, placement: Optional[str] = None):
    """The rrr-ray graph: ``--serve-url`` as given, else started in-process with
    ``deployments.launch.start_graph`` (the config's first model, pointed at ``--model``, in
    ``placement``)."""
    if args.serve_url:
        yield args.serve_url.rstrip("/")
        return
    from deployments.launch import start_graph, stop_graph

    app = graph_args(args.model, args.config, placement)
    for kv in args.graph_arg:
        k, _, v = kv.partition("=")
        try:
            app[k] = json.loads(v)
        except json.JSONDecodeError:
            app[k] = v
    print(f"[compare] (b) starting the graph: {json.dumps(app)}", flush=True)
    try:
        url = start_graph(app, timeout_s=args.timeout, env=graph_env(args.config))
    except Exception as exc:
        with contextlib.suppress(Exception):
            stop_graph()
        raise RuntimeError(f"the graph did not start: {type(exc).__name__}: {exc}") from exc
    try:
        yield url.rstrip("/")
    finally:
        stop_graph()


@contextlib.contextmanager
def seed_server(model: str, log_path: Path, env: dict[str, str] | None = None):
    """Run ``loadtest.seed_server`` on a free port as its own process; yields (url, process)."""
    port = free_port()
    cmd = [sys.executable, "-m", "loadtest.seed_server", "--model", model, "--port", str(port)]
    log = open(log_path, "w")
    proc = subprocess.Popen(cmd, cwd=str(REPO), env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        yield f"http://127.0.0.1:{port}", proc
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()
