"""The serving logic without Ray: batching, post-processing, the HTTP API over a fake engine."""

from __future__ import annotations

import asyncio
import os
import json

import httpx
import pytest

from rrr_ray import validate
from rrr_ray.serving.api import create_app
from rrr_ray.serving.batching import batched
from rrr_ray.serving.config import EngineConfig, StreamingOptions
from rrr_ray.serving.fake_engine import FAKE_ENGINE, VALID_REPLY, FakeEngine
from rrr_ray.serving.messages import EngineRequest, StageHealth
from rrr_ray.serving.model_server import ModelServer
from rrr_ray.serving.postprocessing import PostProcessing
from rrr_ray.serving.protocol import SamplingOptions
from rrr_ray.serving.service import RRRService, ServedModel
from rrr_ray.serving.labeling import SectionLabeler
from rrr_ray.serving.streams import model_stream, postprocess


def make_service(interval: float = 0.0, max_model_len: int = 512) -> tuple[RRRService, FakeEngine]:
    """The ingress's in-process path without Ray: ``PostProcessing`` over a ``ModelServer``
    (as with ``placement: ingress``), on the fake engine."""
    server = ModelServer(EngineConfig(name="fake", path="-", engine_class=FAKE_ENGINE, max_model_len=max_model_len,
                                      engine_kwargs={"token_interval_s": interval}),
                         StreamingOptions(stream_interval_ms=10, max_hop_messages_per_s=0))
    postprocessing = PostProcessing({"fake": server})
    return RRRService(postprocessing.stream, postprocessing.health, [ServedModel("fake", "-")]), server.engine


def client(service: RRRService) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=create_app(service)), base_url="http://test")


def run(coro):
    return asyncio.run(coro)


# -- batching ---------------------------------------------------------------------------------

async def _ticker(n: int, interval: float):
    for i in range(n):
        await asyncio.sleep(interval)
        yield i


def test_batched_flushes_first_item_alone_and_keeps_everything_in_order():
    async def main():
        return [b async for b in batched(_ticker(40, 0.002), interval_s=0.02)]
    batches = run(main())
    assert batches[0] == [0]
    assert [i for b in batches for i in b] == list(range(40))
    assert len(batches) < 40  # later items travel together


def test_batched_flushes_the_last_items_when_the_source_ends_not_at_the_window():
    async def three():
        for i in range(3):
            await asyncio.sleep(0.01)
            yield i

    async def main():
        loop = asyncio.get_running_loop()
        start = loop.time()
        batches = [b async for b in batched(three(), interval_s=5.0)]
        return batches, loop.time() - start
    batches, elapsed = run(main())
    assert batches == [[0], [1, 2]]
    assert elapsed < 2.5  # a 5 s window, but the source ended after ~30 ms


def test_batched_passes_errors_after_the_items_before_them():
    async def failing():
        yield 1
        yield 2
        raise RuntimeError("boom")

    async def main():
        got = []
        with pytest.raises(RuntimeError, match="boom"):
            async for b in batched(failing(), interval_s=0.01):
                got.extend(b)
        return got
    assert run(main()) == [1, 2]


def test_closing_the_batcher_closes_the_source():
    closed = asyncio.Event()

    async def endless():
        try:
            while True:
                await asyncio.sleep(0.001)
                yield 1
        finally:
            closed.set()

    async def main():
        gen = batched(endless(), interval_s=0.005)
        await anext(gen)
        await gen.aclose()
        return closed.is_set()
    assert run(main())


# -- labelling ----------------------------------------------------------------------------------

def test_labeler_never_holds_a_token_back():
    labeler = SectionLabeler()
    assert labeler.push("<") == [("<", "react")]  # the first token goes out at once
    assert labeler.push("re") == [("re", "react")]
    assert labeler.push("x") == [("x", None)]  # "<rex" was text outside after all


def test_labeler_gives_tag_pieces_the_section_they_open_or_close():
    labeler = SectionLabeler()
    out = []
    for token in ["<", "react", ">", "*nods*", "</", "react>", "\n", "<respond>", "2 <", " 3", "</respond>"]:
        out += labeler.push(token)
    validation = labeler.close()
    labels = dict(out)
    assert [s for _, s in out[:3]] == ["react"] * 3
    assert labels["*nods*"] == "react" and labels["</"] == "react"
    assert labels["\n"] is None
    assert labels["2 <"] == "respond" and labels[" 3"] == "respond"
    assert not validation.valid and validation.error_codes == ["missing_tag"]


# -- the HTTP API over the fake engine ----------------------------------------------------------

def test_generate_returns_text_metadata_and_validation():
    service, _ = make_service()

    async def main():
        async with client(service) as c:
            return await c.post("/generate", json={"prompt": "I feel stuck."})
    r = run(main())
    body = r.json()
    assert r.status_code == 200, body
    assert body["generated_text"] == VALID_REPLY and body["error"] is None
    assert body["validation"]["valid"] is True
    meta = body["metadata"]
    assert meta["output_tokens"] == len(VALID_REPLY) // 4 + (len(VALID_REPLY) % 4 > 0)
    assert meta["time_to_first_token_seconds"] is not None and meta["tokens_per_second"] > 0


def test_stream_is_ndjson_with_sections_and_a_final_record():
    service, _ = make_service()

    async def main():
        async with client(service) as c:
            r = await c.post("/generate", json={"prompt": "hi [invalid]", "stream": True, "repair": True,
                                                "heal": False})
            return r.status_code, r.headers["content-type"], [json.loads(line) for line in r.text.splitlines()]
    status, ctype, lines = run(main())
    assert status == 200 and ctype.startswith("application/x-ndjson")
    assert all(line["finished"] is False for line in lines[:-1])
    assert {line["section"] for line in lines[:-1]} <= {"react", "respond", "reflect", None}
    final = lines[-1]
    assert final["finished"] is True and final["token"] == ""
    assert final["validation"]["valid"] is False
    assert [e["code"] for e in final["validation"]["errors"]] == ["missing_tag"]
    assert final["repair"]["unrepaired"][0]["code"] == "missing_tag"
    text = "".join(line["token"] for line in lines[:-1])
    assert validate(text).model_dump(mode="json") == final["validation"]


def test_engine_error_mid_stream_ends_with_an_error_line():
    service, engine = make_service()

    async def main():
        async with client(service) as c:
            r = await c.post("/generate", json={"prompt": "x [fail-after:5]", "stream": True})
            return [json.loads(line) for line in r.text.splitlines()]
    lines = run(main())
    assert lines[-1]["finished"] is True and "failed" in lines[-1]["error"]
    assert 1 <= len(lines) - 1 <= 5
    assert engine.running == 0


@pytest.mark.parametrize("body, status, fragment", [
    ({}, 422, "exactly one of 'prompt' or 'messages'"),
    ({"prompt": "a", "messages": [{"role": "user", "content": "b"}]}, 422, "exactly one"),
    ({"prompt": "a", "temperature": 5}, 422, "temperature"),
    ({"prompt": "a", "max_new_tokens": 100000}, 422, "max_new_tokens"),
    ({"prompt": 3}, 422, "prompt"),
    ({"prompt": "a", "model": "nope"}, 404, "not served"),
    ({"prompt": "a" * 4000}, 400, "context"),
    ({"prompt": "a", "colour": "red"}, 422, "colour"),
])
def test_bad_requests_get_a_clear_4xx(body, status, fragment):
    service, _ = make_service()

    async def main():
        async with client(service) as c:
            return await c.post("/generate", json=body)
    r = run(main())
    assert r.status_code == status
    assert fragment in r.json()["error"]


def test_invalid_json_is_a_400():
    service, _ = make_service()

    async def main():
        async with client(service) as c:
            return await c.post("/generate", content=b"{not json", headers={"content-type": "application/json"})
    r = run(main())
    assert r.status_code == 400 and r.json()["error"] == "the body is not valid JSON"


def test_health_turns_503_when_the_engine_dies():
    service, engine = make_service()

    async def main():
        async with client(service) as c:
            ok = await c.get("/health")
            engine.dead = True
            return ok, await c.get("/health")
    ok, dead = run(main())
    assert ok.status_code == 200 and ok.json() == {"status": "ok", "model_loaded": True, "models": {"fake": True},
                                            "unfinished_requests": {"fake": 0}}
    assert dead.status_code == 503 and dead.json()["model_loaded"] is False


def test_the_engines_prefix_cache_hits_reach_the_metadata_and_the_usage():
    """A second turn of a conversation repeats the first turn's prompt: the engine's cached prompt
    tokens travel through the post-processing to /generate's metadata and OpenAI's usage."""
    service, _ = make_service()
    first = [{"role": "user", "content": "I feel stuck at work."}]
    second = first + [{"role": "assistant", "content": VALID_REPLY}, {"role": "user", "content": "And at home."}]

    async def main():
        async with client(service) as c:
            one = (await c.post("/generate", json={"messages": first})).json()["metadata"]
            two = (await c.post("/generate", json={"messages": second})).json()["metadata"]
            usage = (await c.post("/v1/chat/completions", json={"messages": second})).json()["usage"]
            return one, two, usage
    one, two, usage = run(main())
    assert one["cached_input_tokens"] == 0
    assert 0 < two["cached_input_tokens"] < two["input_tokens"]  # the first turn's prompt, not the new message
    assert usage["prompt_tokens_details"] == {"cached_tokens": usage["prompt_tokens"]}  # the same prompt again


def test_openai_routes_stream_sse_and_list_models():
    service, _ = make_service()

    async def main():
        async with client(service) as c:
            models = (await c.get("/v1/models")).json()
            r = await c.post("/v1/chat/completions", json={
                "model": "fake", "messages": [{"role": "user", "content": "hi"}], "stream": True})
            full = (await c.post("/v1/chat/completions", json={
                "messages": [{"role": "user", "content": "hi"}]})).json()
            bad = await c.post("/v1/chat/completions", json={"messages": []})
            return models, r.text, full, bad
    models, sse, full, bad = run(main())
    assert [m["id"] for m in models["data"]] == ["fake"]
    events = [e[len("data: "):] for e in sse.strip().split("\n\n")]
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    assert "".join(c["choices"][0]["delta"].get("content", "") for c in chunks) == VALID_REPLY
    assert chunks[-1]["choices"][0]["finish_reason"] == "stop" and chunks[-1]["rrr_validation"]["valid"]
    assert full["choices"][0]["message"]["content"] == VALID_REPLY and full["usage"]["completion_tokens"] > 0
    assert bad.status_code == 400 and "messages" in bad.json()["error"]["message"]


def test_sampling_options_travel_to_the_engine():
    seen = {}
    engine = FakeEngine(EngineConfig(name="fake", path="-", engine_kwargs={"token_interval_s": 0}))

    def stream(request, with_repair):
        seen["request"] = request
        return postprocess(model_stream(engine, request, 0.0), with_repair)

    async def health():
        return {"fake": StageHealth(error=None, unfinished_requests=0)}

    service = RRRService(stream, health, [ServedModel("fake", "-")])

    async def main():
        async with client(service) as c:
            await c.post("/generate", json={"messages": [{"role": "user", "content": "hi"}], "system": "Be kind.",
                                            "temperature": 0.2, "top_k": 5, "max_new_tokens": 7, "guided": True})
    run(main())
    request: EngineRequest = seen["request"]
    assert request.messages[0] == {"role": "system", "content": "Be kind."}
    assert request.sampling == SamplingOptions(temperature=0.2, top_k=5, max_new_tokens=7)
    assert request.guided_regex is not None


def test_guided_section_limits_choose_the_bounded_or_the_unbounded_grammar_per_model():
    """A model served with ``guided_section_limits: false`` (and each LoRA adapter on it) is guided by
    the regex without length caps (far cheaper for xgrammar per token); the others keep the capped
    one. The option goes from serve_config's model entry through the graph's served-model entries."""
    from deployments.app import served_model_entries
    from rrr_ray import guided_regex
    from rrr_ray.serving.config import ModelArgs

    capped = served_model_entries(ModelArgs(name="capped", path="p"))
    free = served_model_entries(ModelArgs(name="free", path="p", guided_section_limits=False,
                                          lora_modules={"free-lora": "a"}))
    assert [c.guided_section_limits for c in capped + free] == [True, False, False]
    service = RRRService(None, None, capped + free)
    messages, sampling = [{"role": "user", "content": "hi"}], SamplingOptions()
    assert service.engine_request("capped", messages, sampling, guided=True).guided_regex == guided_regex(bounded=True)
    assert service.engine_request("free", messages, sampling, guided=True).guided_regex == guided_regex(bounded=False)
    assert service.engine_request("free-lora", messages, sampling, guided=True).guided_regex == guided_regex(bounded=False)
    assert service.engine_request("free", messages, sampling, guided=False).guided_regex is None
    assert "{" not in guided_regex(bounded=False) and "\\\n" not in guided_regex()  # no raw newline escape


def test_load_aware_window_widens_with_concurrent_streams():
    from rrr_ray.serving.batching import LoadAwareWindow

    window = LoadAwareWindow(min_s=0.02, max_messages_per_s=200)
    window.active = 1
    assert window() == 0.02
    window.active = 16
    assert window() == pytest.approx(0.08)
    assert LoadAwareWindow(0.02, 0)() == 0.02


def test_batched_reads_a_callable_window_per_batch():
    calls = []

    def window():
        calls.append(1)
        return 0.005

    async def main():
        return [b async for b in batched(_ticker(10, 0.001), interval_s=window)]
    batches = run(main())
    assert [i for b in batches for i in b] == list(range(10)) and calls


def test_closing_the_in_process_stream_aborts_the_request_in_the_engine():
    """A client that goes away closes the post-processing stream; with the model in the same
    process (``placement: ingress``) that must reach the engine without a Ray cancellation."""
    service, engine = make_service(interval=0.01)

    async def main():
        request = service.engine_request(None, [{"role": "user", "content": "hi"}],
                                         SamplingOptions(max_new_tokens=500, ignore_eos=True), guided=False)
        stream = service.stream(request, False)
        first = await stream.__anext__()
        assert first.tokens and engine.running == 1
        await stream.aclose()
        assert engine.running == 0

    run(main())


# -- a dead engine inside a shared replica --------------------------------------------------------

def fake_server(name: str, start_s: float = 0.0) -> ModelServer:
    return ModelServer(EngineConfig(name=name, path="-", engine_class=FAKE_ENGINE,
                                    engine_kwargs={"token_interval_s": 0.0, "start_s": start_s}),
                       StreamingOptions(max_hop_messages_per_s=0))


def test_a_dead_engine_is_restarted_in_place_while_the_other_models_keep_answering():
    """`placement: ingress`: two engines in one replica; one dies. Its requests get a 503 while a new
    engine starts in its place; the other model answers throughout; then both answer again."""
    async def main():
        dying, other = fake_server("dying", start_s=0.3), fake_server("other")
        postprocessing = PostProcessing({"dying": dying, "other": other})
        service = RRRService(postprocessing.stream, postprocessing.health,
                             [ServedModel("dying", "-"), ServedModel("other", "-")])
        async with client(service) as c:
            assert (await c.post("/generate", json={"prompt": "[kill-engine]", "model": "dying"})).status_code == 500
            assert (await c.get("/health")).status_code == 503
            await asyncio.gather(dying.recover(), other.recover())  # what the ingress's health check does
            assert dying.restarting is not None and other.restarting is None
            during = await c.post("/generate", json={"prompt": "hi", "model": "dying"})
            assert during.status_code == 503 and "restarting" in during.json()["error"]
            assert during.headers["retry-after"] == "5"
            health = (await c.get("/health")).json()
            assert health["models"] == {"dying": False, "other": True} and "restarting" in health["error"]
            answered = await c.post("/generate", json={"prompt": "hi", "model": "other"})
            assert answered.status_code == 200 and answered.json()["validation"]["valid"]
            await dying.restarting
            assert dying.restarting is None and (await c.get("/health")).status_code == 200
            again = await c.post("/generate", json={"prompt": "hi", "model": "dying"})
            assert again.status_code == 200 and again.json()["validation"]["valid"]
    run(main())


def test_recover_gives_up_after_the_restarts_fail_so_serve_replaces_the_replica(monkeypatch):
    from rrr_ray.serving.errors import EngineDeadError

    async def failing_start(self):
        raise RuntimeError("no memory for a new engine")

    async def main():
        server = fake_server("dying")
        server.engine.dead = True
        monkeypatch.setattr(FakeEngine, "start", failing_start)
        for attempt in range(server.max_failed_restarts):
            await server.recover()
            await server.restarting
            assert server.failed_restarts == attempt + 1
        with pytest.raises(EngineDeadError, match="3 restarts in place failed"):
            await server.recover()
    run(main())


# -- Ray hops that fail (deployments.postprocessor, over a stand-in for a handle) ----------------

class _Response:
    """A streaming handle call: yields ``items``, then raises ``error`` (if any)."""

    def __init__(self, items: list, error: Exception | None = None, hang_s: float = 0.0) -> None:
        self.items, self.error, self.hang_s, self.cancelled = items, error, hang_s, False

    def __aiter__(self):
        return self._iterate()

    async def _iterate(self):
        for item in self.items:
            yield item
        if self.error is not None:
            raise self.error

    def __await__(self):
        return asyncio.sleep(self.hang_s).__await__()

    def cancel(self) -> None:
        self.cancelled = True


class _Handle:
    """A ``DeploymentHandle`` stand-in whose calls return the given ``_Response``."""

    deployment_name = "RRRModel:fake"

    def __init__(self, response: _Response) -> None:
        self.response = response
        self.stream = self.health = self

    def options(self, **_: object) -> "_Handle":
        return self

    def remote(self, *_: object) -> _Response:
        return self.response


def _remote_service(response: _Response) -> RRRService:
    from deployments.postprocessor import RemoteModel
    from rrr_ray.serving.messages import ModelChunk

    response.items = [ModelChunk(text=[t], num_tokens=1) for t in response.items]
    postprocessing = PostProcessing({"fake": RemoteModel(_Handle(response))})
    return RRRService(postprocessing.stream, postprocessing.health, [ServedModel("fake", "-", heal=False)])


def test_a_full_model_deployment_is_a_503_with_retry_after():
    from ray.serve.exceptions import BackPressureError

    response = _Response([], BackPressureError(num_queued_requests=4, max_queued_requests=4))

    async def main():
        async with client(_remote_service(response)) as c:
            return await c.post("/generate", json={"prompt": "hi", "stream": True})
    r = run(main())
    assert r.status_code == 503 and r.headers["retry-after"] == "5"
    assert "RRRModel:fake is at capacity" in r.json()["error"]
    assert response.cancelled


def test_a_model_replica_that_dies_mid_stream_ends_the_stream_with_an_error_line():
    from ray.exceptions import ActorDiedError

    response = _Response(["<react>*nods*", "</react>"], ActorDiedError())

    async def main():
        async with client(_remote_service(response)) as c:
            r = await c.post("/generate", json={"prompt": "hi", "stream": True})
            return r.status_code, [json.loads(line) for line in r.text.splitlines()]
    status, lines = run(main())
    assert status == 200
    assert "".join(line.get("token", "") for line in lines[:-1]) == "<react>*nods*</react>"
    assert lines[-1]["finished"] is True and "RRRModel:fake failed (ActorDiedError" in lines[-1]["error"]


def test_a_hop_is_cancelled_only_when_closed_before_its_finished_chunk():
    from deployments.postprocessor import _model_failure, cancelling
    from rrr_ray.serving.messages import ModelChunk

    async def read(response: _Response, n: int) -> int:
        stream = cancelling(response, "RRRModel:fake", _model_failure)
        got = [await anext(stream) for _ in range(n)]
        await stream.aclose()  # as the post-processing does once it has the finished chunk
        return len(got)

    whole = _Response([ModelChunk(text=["a"]), ModelChunk(text=["b"], finished=True)])
    assert run(read(whole, 2)) == 2 and not whole.cancelled  # it ends by itself
    left = _Response([ModelChunk(text=["a"]), ModelChunk(text=["b"], finished=True)])
    assert run(read(left, 1)) == 1 and left.cancelled  # the client left mid-reply


def test_health_names_a_model_deployment_that_does_not_answer(monkeypatch):
    import deployments.postprocessor as pp

    monkeypatch.setattr(pp, "MODEL_HEALTH_TIMEOUT_S", 0.05)
    response = _Response([], hang_s=5)

    async def main():
        async with client(_remote_service(response)) as c:
            return await c.get("/health")
    r = run(main())
    assert r.status_code == 503 and r.json()["models"] == {"fake": False}
    assert "RRRModel:fake did not answer within" in r.json()["error"] and response.cancelled


def test_a_taken_port_is_named_with_its_process_in_one_line(tmp_path):
    import socket
    import subprocess
    import sys

    from rrr_ray.serving.ports import port_holder

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        holder = port_holder(port)
        assert holder is not None and holder.pid == os.getpid()
        config = tmp_path / "serve_config.yaml"
        config.write_text(f"http_options:\n  host: 127.0.0.1\n  port: {port}\n")
        proc = subprocess.run([sys.executable, "-m", "rrr_ray.serving.ports", str(config)], capture_output=True,
                              text=True, env={**os.environ, "RAY_SERVE_ENABLE_HA_PROXY": "0"})
    assert proc.returncode == 1 and proc.stderr.count("\n") == 1, proc.stderr
    assert f"error: port {port} (serve_config.yaml http_options.port) is taken by pid {os.getpid()}" in proc.stderr
    assert port_holder(port) is None


def test_the_serving_modules_import_one_way():
    """No module of ``rrr_ray.serving`` imports, directly or through others, one that imports it
    back (module-level and function-level imports alike), and none imports ``deployments``."""
    import ast
    from pathlib import Path

    import rrr_ray.serving

    root = Path(rrr_ray.serving.__file__).parent
    modules = {".".join(("rrr_ray", "serving", *p.relative_to(root).with_suffix("").parts)).removesuffix(".__init__"): p
               for p in root.rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        imported = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module:
                imported |= {node.module, *(f"{node.module}.{a.name}" for a in node.names)}
            elif isinstance(node, ast.Import):
                imported |= {a.name for a in node.names}
        assert not any(m.split(".")[0] == "deployments" for m in imported), name
        graph[name] = {m for m in imported if m in modules and m != name}

    def reaches(start: str, target: str, seen: set[str]) -> bool:
        return any(m == target or (m not in seen and not seen.add(m) and reaches(m, target, seen))
                   for m in graph[start])

    assert [name for name in graph if reaches(name, name, set())] == []
