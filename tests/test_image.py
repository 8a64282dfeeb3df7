"""The image, built and run for real: podman builds the committed Dockerfile (scripts/build-image,
the registry base or its Debian stand-in), runs it with the port published on 127.0.0.1 and an API
key set, and the test talks to it over HTTP: /health, a streamed /generate reply that validates,
/v1/chat/completions through the openai client, the API key enforced, the image's HEALTHCHECK,
then a stop as an orchestrator does it (SIGTERM, grace period): /health stops answering 200 while
the server drains, the container exits before the grace period ends, and the port is free. The
compose file's CPU service is brought up and down with podman-compose.

    make test-image        # RRR_TEST_IMAGE=1 pytest tests/test_image.py (CI runs it after make test)
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, Optional

import httpx
import pytest

from rrr_ray import validate
from deployments.launch import free_port
from tests.helpers import REPO, port_is_free

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.slow,
    pytest.mark.skipif(os.environ.get("RRR_TEST_IMAGE") != "1",
                       reason="the image test runs with `make test-image` (RRR_TEST_IMAGE=1)"),
    pytest.mark.timeout(3600),
]

PODMAN = ["podman", "--runtime", "runc"]
RUN_OPTIONS = ["--ulimit", "nofile=20000:20000", "--ulimit", "nproc=4096:4096", "--shm-size", "1g"]
IMAGE = os.environ.get("RRR_TEST_IMAGE_TAG", "rrr-ray:cpu")
API_KEY = "image-test-key"
HEALTHY_WITHIN_S = 600
# podman 4 schedules HEALTHCHECKs with systemd timers and refuses to start a container where
# systemd is not running (a sandbox): there the checks run on demand (`podman healthcheck run`).
ENV = {**os.environ, **({} if Path("/run/systemd/system").exists() else {"DISABLE_HC_SYSTEMD": "true"})}
STOP_GRACE_S = 60


def podman(*args: str, timeout: float = 120, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run([*PODMAN, *args], capture_output=True, text=True, timeout=timeout, check=check, env=ENV)


def health_status(url: str) -> Optional[int]:
    """The status of GET /health, or None when nothing answers."""
    try:
        return httpx.get(f"{url}/health", timeout=5).status_code
    except httpx.HTTPError:
        return None


def wait_healthy(url: str, name: str, timeout_s: float) -> float:
    start = time.monotonic()
    while time.monotonic() - start < timeout_s:
        if health_status(url) == 200:
            return time.monotonic() - start
        state = podman("inspect", "--format", "{{.State.Status}}", name, check=False).stdout.strip()
        if state not in ("running", "created", "configured"):
            logs = podman("logs", "--tail", "60", name, check=False)
            pytest.fail(f"container {name} is {state!r} before /health answered:\n{logs.stdout}{logs.stderr}")
        time.sleep(2)
    logs = podman("logs", "--tail", "60", name, check=False)
    pytest.fail(f"/health not 200 within {timeout_s} s:\n{logs.stdout}{logs.stderr}")


@pytest.fixture(scope="module")
def image() -> str:
    if shutil.which("podman") is None:
        pytest.fail("podman is not installed (requirements/debian.txt; `make install` as root installs it)")
    start = time.monotonic()
    build = subprocess.run(["bash", "scripts/build-image", "cpu"], cwd=REPO, capture_output=True, text=True,
                           timeout=3000, env={**os.environ, "IMAGE": IMAGE})
    assert build.returncode == 0, f"the image did not build:\n{build.stdout[-4000:]}\n{build.stderr[-4000:]}"
    print(f"\n[image] {IMAGE} built in {time.monotonic() - start:.0f} s: {build.stdout.strip().splitlines()[-1]}")
    return IMAGE


@contextmanager
def running(image: str, env: dict[str, str]) -> Iterator[tuple[str, str, int]]:
    """A container of ``image`` with its port on 127.0.0.1: (name, base URL, host port). Removed at the end."""
    name, port = f"rrr-image-test-{uuid.uuid4().hex[:8]}", free_port()
    env_args = [a for key, value in env.items() for a in ("--env", f"{key}={value}")]
    podman("run", "--detach", "--name", name, *RUN_OPTIONS, "--publish", f"127.0.0.1:{port}:8000",
           *env_args, image)
    try:
        yield name, f"http://127.0.0.1:{port}", port
    finally:
        podman("rm", "--force", "--time", "0", name, check=False, timeout=120)


@pytest.fixture(scope="module")
def container(image):
    with running(image, {"RRR_API_KEY": API_KEY}) as (name, url, port):
        took = wait_healthy(url, name, HEALTHY_WITHIN_S)
        print(f"\n[image] run to a healthy /health: {took:.0f} s")
        yield name, url, port


def test_health_answers_without_a_key(container):
    _, url, _ = container
    r = httpx.get(f"{url}/health", timeout=10)
    assert r.status_code == 200 and r.json()["status"] == "ok", r.text
    assert all(r.json()["models"].values())


def test_a_streamed_generate_reply_validates(container):
    _, url, _ = container
    body = {"prompt": "I feel stuck at work.", "stream": True, "guided": True, "max_new_tokens": 256, "seed": 7}
    items = []
    with httpx.stream("POST", f"{url}/generate", json=body, timeout=300,
                      headers={"Authorization": f"Bearer {API_KEY}"}) as r:
        assert r.status_code == 200, r.read()
        assert r.headers["content-type"].startswith("application/x-ndjson")
        items = [json.loads(line) for line in r.iter_lines() if line]
    tokens, final = [i for i in items if not i["finished"]], items[-1]
    assert final["finished"] and not final.get("error"), final
    text = "".join(i["token"] for i in tokens)
    assert len(tokens) > 1 and validate(text).valid, text
    assert final["validation"]["valid"] is True
    assert {i.get("section") for i in tokens} >= {"react", "respond", "reflect"}


def test_openai_chat_completions_through_the_openai_client(container):
    from openai import OpenAI

    _, url, _ = container
    client = OpenAI(base_url=f"{url}/v1", api_key=API_KEY, timeout=300, max_retries=0)
    reply = client.chat.completions.create(model="rrr-smollm2", max_tokens=256, seed=7,
                                           messages=[{"role": "user", "content": "My friend stopped calling me."}],
                                           extra_body={"guided": True})
    text = reply.choices[0].message.content
    assert reply.model == "rrr-smollm2" and validate(text).valid, text


def test_the_api_key_is_enforced(container):
    from openai import AuthenticationError, OpenAI

    _, url, _ = container
    assert httpx.post(f"{url}/generate", json={"prompt": "hi"}, timeout=30).status_code == 401
    wrong = httpx.post(f"{url}/generate", json={"prompt": "hi"}, timeout=30, headers={"Authorization": "Bearer nope"})
    assert wrong.status_code == 401
    with pytest.raises(AuthenticationError):
        OpenAI(base_url=f"{url}/v1", api_key="nope", max_retries=0).models.list()


def test_the_image_healthcheck_reports_healthy(container):
    name, _, _ = container
    image = json.loads(podman("image", "inspect", IMAGE).stdout)[0]
    config = image["Config"]
    healthcheck = image.get("Healthcheck") or config.get("Healthcheck") or {}  # podman: at the top; docker: in Config
    assert "/health" in " ".join(healthcheck.get("Test", [])), image
    assert config.get("User") == "rrr" and "8000/tcp" in config["ExposedPorts"]
    check = podman("healthcheck", "run", name, check=False)
    assert check.returncode == 0, f"HEALTHCHECK: {check.stdout}{check.stderr}"
    state = json.loads(podman("inspect", name).stdout)[0]["State"]
    assert (state.get("Health") or state.get("Healthcheck") or {}).get("Status") == "healthy", state


def test_login_shells_get_the_venv_and_the_node_environment(container):
    """KubeRay starts Ray with `bash -l`: the image's login shell sets what rrr_ray/env.py sets."""
    name, _, _ = container
    out = podman("exec", name, "bash", "-lc", "command -v ray; echo $RAY_AUTH_MODE $VLLM_CPU_KVCACHE_SPACE").stdout
    assert out.split() == ["/app/.venv/bin/ray", "token", "1"], out


def test_sigterm_drains_then_stops_cleanly_and_frees_the_port(container):
    """Last of the container's tests: `podman stop` (SIGTERM, then SIGKILL after the grace period)."""
    name, url, port = container
    stop = subprocess.Popen([*PODMAN, "stop", "--time", str(STOP_GRACE_S), name],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=ENV)
    start, statuses = time.monotonic(), []
    while stop.poll() is None and time.monotonic() - start < STOP_GRACE_S + 30:
        statuses.append(health_status(url))
        time.sleep(0.2)
    output = stop.communicate(timeout=STOP_GRACE_S + 60)[0]
    took = time.monotonic() - start
    state = json.loads(podman("inspect", name).stdout)[0]["State"]
    print(f"\n[image] stopped in {took:.1f} s, exit code {state['ExitCode']}; /health while stopping: "
          f"{_runs(statuses)}")
    assert stop.returncode == 0, output
    assert state["Status"] == "exited" and state["ExitCode"] != 137, "SIGKILLed after the grace period"
    assert took < STOP_GRACE_S
    first_not_200 = next((i for i, s in enumerate(statuses) if s != 200), len(statuses))
    assert 200 not in statuses[first_not_200:], f"/health answered 200 again while stopping: {_runs(statuses)}"
    assert port_is_free(port)
    assert podman("ps", "--quiet", "--filter", f"name={name}").stdout.strip() == ""


def _runs(statuses: list) -> str:
    """[200, 200, 503, None] -> '200 x2, 503 x1, None x1'."""
    out: list[list] = []
    for s in statuses:
        if out and out[-1][0] == s:
            out[-1][1] += 1
        else:
            out.append([s, 1])
    return ", ".join(f"{s} x{n}" for s, n in out)


def test_compose_serves_the_cpu_service_on_loopback(image):
    if shutil.which("podman-compose") is None:
        pytest.fail("podman-compose is not installed (requirements/debian.txt)")
    port, project = free_port(), f"rrrtest{uuid.uuid4().hex[:6]}"
    env = {**ENV, "RRR_PORT": str(port), "RRR_API_KEY": API_KEY}
    compose = ["podman-compose", "--podman-path", "podman", "-p", project, "-f", str(REPO / "compose.yaml")]
    (REPO / "out").mkdir(exist_ok=True)
    try:
        up = subprocess.run([*compose, "up", "--detach", "rrr"], cwd=REPO, env=env, capture_output=True,
                            text=True, timeout=600)
        assert up.returncode == 0, up.stdout[-3000:] + up.stderr[-3000:]
        name = f"{project}_rrr_1"
        url = f"http://127.0.0.1:{port}"
        took = wait_healthy(url, name, HEALTHY_WITHIN_S)
        print(f"\n[image] compose up to a healthy /health: {took:.0f} s")
        listening = podman("port", name).stdout
        assert f"127.0.0.1:{port}" in listening, listening
        assert httpx.post(f"{url}/generate", json={"prompt": "hi"}, timeout=30).status_code == 401
        r = httpx.post(f"{url}/generate", json={"prompt": "I lost my keys.", "guided": True, "max_new_tokens": 200},
                       headers={"Authorization": f"Bearer {API_KEY}"}, timeout=300)
        assert r.status_code == 200 and r.json()["validation"]["valid"], r.text
    finally:
        down = subprocess.run([*compose, "down", "-t", str(STOP_GRACE_S)], cwd=REPO, env=env,
                              capture_output=True, text=True, timeout=600)
    assert down.returncode == 0, down.stdout[-3000:] + down.stderr[-3000:]
    assert port_is_free(port)
