"""Fallback ``openai_endpoint`` fixture: vLLM's OpenAI api_server on loopback serving the embedded model.

The suite's real fixture (rrr-ray's Serve stack ``/v1``) lives in ``tests/conftest.py``; a
conftest fixture of the same name wins over this plugin's. Use this one with
``pytest -p tests._vllm_api_server ...``. Environment:

- ``RRR_E2E_BASE_URL``: use an already running server (no start), e.g. http://127.0.0.1:18431/v1;
- ``RRR_E2E_MODEL``: model folder to serve (default ``models/rrr-tiny``);
- ``RRR_E2E_MODEL_NAME``: served model name (default ``rrr-tiny``).
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from rrr_ray.paths import REPO



def _free_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


@pytest.fixture(scope="session")
def openai_endpoint(tmp_path_factory):
    name = os.environ.get("RRR_E2E_MODEL_NAME", "rrr-tiny")
    if os.environ.get("RRR_E2E_BASE_URL"):
        yield os.environ["RRR_E2E_BASE_URL"].rstrip("/"), name
        return
    model = Path(os.environ.get("RRR_E2E_MODEL", REPO / "models" / "rrr-tiny"))
    if not (model / "config.json").is_file():
        pytest.skip(f"no model at {model} (set RRR_E2E_MODEL or build it with `make model-tiny`)")
    port = _free_port()
    log = tmp_path_factory.mktemp("vllm") / "api_server.log"
    env = dict(os.environ)  # with rrr_ray.env's CPU-node settings (conftest)
    with open(log, "wb") as fh:
        proc = subprocess.Popen(
            [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", str(model),
             "--served-model-name", name, "--host", "127.0.0.1", "--port", str(port),
             "--max-model-len", "1024", "--dtype", "float32"],
            stdout=fh, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    base = f"http://127.0.0.1:{port}/v1"
    try:
        deadline = time.monotonic() + 300
        while True:
            if proc.poll() is not None:
                pytest.fail(f"vLLM api_server exited with {proc.returncode}; see {log}")
            try:
                if httpx.get(f"{base}/models", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"vLLM api_server did not start in 300 s; see {log}")
            time.sleep(1)
        yield base, name
    finally:
        try:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(timeout=30)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
