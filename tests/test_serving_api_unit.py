"""The HTTP layer without Ray or an engine: the one reply consumer, its JSON, NDJSON and SSE
formatters, the typed response models and the OpenAPI schema."""

from __future__ import annotations

import asyncio
import json
import pickle

import httpx
import pytest

from rrr_ray import repair, validate
from rrr_ray.serving.api import create_app
from rrr_ray.serving.errors import BadRequestError
from rrr_ray.serving.messages import FinalRecord, OutputChunk, StageHealth
from rrr_ray.serving.protocol import (
    ChatCompletion, ChatCompletionChunk, ChatCompletionRequest, GenerateRequest, GenerateResponse, GenerateStreamEnd,
    GenerateStreamToken, OpenAIError, SamplingOptions)
from rrr_ray.serving.replies import Failed, Finished, Tokens
from rrr_ray.serving.service import RRRService, ServedModel
from tests.helpers import tracked_stream

TEXT = '<react>*nods*</react>\n<respond>Say "hi" \u00e9\n</respond>\n<reflect>ok</reflect>'
TOKENS = [("<react>*nods*</react>", "react"), ("\n", None), ('<respond>Say "hi" \u00e9\n</respond>', "respond"),
          ("\n<reflect>ok</reflect>", "reflect")]


def record(with_repair: bool = False) -> FinalRecord:
    final = FinalRecord(text=TEXT, validation=validate(TEXT), input_tokens=3, output_tokens=4, finish_reason="stop",
                        engine_ttft_s=0.001, engine_time_s=0.002)
    if with_repair:
        final.repaired_text, final.repair = repair(TEXT)
    return final


def finishing() -> list[OutputChunk]:
    return [OutputChunk(tokens=TOKENS[:2]), OutputChunk(tokens=TOKENS[2:], finished=True, final=record())]


def failing() -> list[OutputChunk]:
    return [OutputChunk(tokens=TOKENS[:2]), OutputChunk(finished=True, error="engine failed")]


class Metrics:
    def __init__(self) -> None:
        self.records: list[tuple] = []
        self.errors: list[str] = []

    def record(self, *args) -> None:
        self.records.append(args)

    def record_error(self, model: str) -> None:
        self.errors.append(model)


def scripted(chunks: list[OutputChunk]) -> tuple[RRRService, Metrics, list[bool]]:
    """A service whose every reply is ``chunks``; the list it returns says whether each stream was closed."""
    closed: list[bool] = []

    def stream(request, with_repair):
        return tracked_stream(chunks, closed)

    async def health():
        return {"m": StageHealth(error=None, unfinished_requests=0)}

    metrics = Metrics()
    return RRRService(stream, health, [ServedModel("m", "-")], metrics=metrics), metrics, closed


def run(coro):
    return asyncio.run(coro)


def post(service: RRRService, path: str, body: dict) -> httpx.Response:
    async def main():
        transport = httpx.ASGITransport(app=create_app(service))
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as c:
            return await c.post(path, json=body)
    return run(main())


def events_of(service: RRRService) -> list:
    async def main():
        request = service.engine_request(None, [{"role": "user", "content": "hi"}], SamplingOptions(), False)
        return [e async for e in await service.reply(request, False, 0.0)]
    return run(main())


# -- the one consumer ----------------------------------------------------------------------------

def test_consumer_yields_tokens_then_one_result_and_records_it_once():
    service, metrics, closed = scripted(finishing())
    events = events_of(service)
    assert [type(e) for e in events] == [Tokens, Finished]  # the last chunk's tokens travel with the result
    assert [t for e in events for t in e.tokens] == TOKENS
    end = events[-1]
    assert end.record == record() and end.metadata.output_tokens == 4 and end.metadata.model == "m"
    assert end.metadata.time_to_first_token_seconds is not None and end.ttft_s <= end.total_s
    assert len(metrics.records) == 1 and not metrics.errors and closed == [True]
    assert metrics.records[0] == ("m", end.ttft_s, 0.001, end.total_s, 4, True)


@pytest.mark.parametrize("chunks, message", [
    (failing(), "engine failed"),
    ([OutputChunk(tokens=TOKENS[:2])], "the stream ended without a result"),
])
def test_consumer_ends_a_failed_stream_with_one_error_and_records_it_once(chunks, message):
    service, metrics, closed = scripted(chunks)
    events = events_of(service)
    assert [type(e) for e in events] == [Tokens, Failed]
    assert events[-1] == Failed(message, "<react>*nods*</react>\n")
    assert metrics.errors == ["m"] and not metrics.records and closed == [True]


def test_consumer_raises_a_bad_request_before_the_reply_begins():
    service, metrics, closed = scripted([OutputChunk(finished=True, error="too long", status=400)])
    with pytest.raises(BadRequestError, match="too long"):
        events_of(service)
    assert closed == [True] and not metrics.records and not metrics.errors


# -- the formatters ------------------------------------------------------------------------------

def test_json_result_and_error():
    service, metrics, _ = scripted(finishing())
    r = post(service, "/generate", {"prompt": "hi"})
    body = r.json()
    assert r.status_code == 200 and list(body) == ["generated_text", "metadata", "validation", "repaired_text",
                                                   "repair", "error"]
    assert body["generated_text"] == TEXT and body["repaired_text"] is None and body["repair"] is None
    assert body["validation"] == validate(TEXT).model_dump(mode="json")
    assert GenerateResponse.model_validate(body).metadata.input_tokens == 3
    chat = post(service, "/v1/chat/completions", {"messages": [{"role": "user", "content": "hi"}]}).json()
    assert ChatCompletion.model_validate(chat).choices[0].message.content == TEXT
    assert chat["usage"] == {"prompt_tokens": 3, "completion_tokens": 4, "total_tokens": 7, "prompt_tokens_details": None}
    assert len(metrics.records) == 2

    service, metrics, _ = scripted(failing())
    r = post(service, "/generate", {"prompt": "hi"})
    assert r.status_code == 500 and r.json() == {"generated_text": "<react>*nods*</react>\n", "metadata": None,
                                                 "validation": None, "error": "engine failed"}
    r = post(service, "/v1/chat/completions", {"messages": [{"role": "user", "content": "hi"}]})
    assert r.status_code == 500 and r.json() == {"error": {"message": "engine failed", "type": "engine_error",
                                                           "param": None, "code": None}}
    assert metrics.errors == ["m", "m"]


def test_ndjson_result_with_repair_and_error():
    chunks = finishing()
    chunks[-1].final = record(with_repair=True)
    service, metrics, _ = scripted(chunks)
    lines = post(service, "/generate", {"prompt": "hi", "stream": True, "repair": True}).text.splitlines()
    tokens = [json.loads(line) for line in lines[:-1]]
    assert lines[:-1] == [json.dumps({"token": t, "section": s, "finished": False}) for t, s in TOKENS]
    assert [GenerateStreamToken.model_validate(t).token for t in tokens] == [t for t, _ in TOKENS]
    end = json.loads(lines[-1])
    assert list(end) == ["token", "finished", "metadata", "validation", "repaired_text", "repair"]
    assert GenerateStreamEnd.model_validate(end).repair == record(with_repair=True).repair
    assert len(metrics.records) == 1

    service, metrics, _ = scripted(failing())
    lines = post(service, "/generate", {"prompt": "hi", "stream": True}).text.splitlines()
    assert len(lines) == 3 and json.loads(lines[-1]) == {"token": "", "finished": True, "error": "engine failed"}
    assert metrics.errors == ["m"]


def test_sse_result_and_error():
    service, metrics, _ = scripted(finishing())
    r = post(service, "/v1/chat/completions", {"messages": [{"role": "user", "content": "hi"}], "stream": True,
                                               "stream_options": {"include_usage": True}})
    events = [e[len("data: "):] for e in r.text.split("\n\n") if e]
    assert events[-1] == "[DONE]"
    usage_chunk = ChatCompletionChunk.model_validate_json(events[-2])  # include_usage: no choices, the usage
    assert usage_chunk.choices == [] and usage_chunk.usage.total_tokens == 7
    events = events[:-2] + events[-1:]
    chunks = [ChatCompletionChunk.model_validate_json(e) for e in events[:-1]]
    assert chunks[0].choices[0].delta.role == "assistant"
    assert [c.choices[0].delta.content for c in chunks[1:-1]] == [t for t, _ in TOKENS]
    first = chunks[0]
    assert events[1] == json.dumps({"id": first.id, "object": "chat.completion.chunk", "created": first.created,
                                    "model": "m", "choices": [{"index": 0, "delta": {"content": TOKENS[0][0]},
                                                               "finish_reason": None}]})
    assert chunks[-1].choices[0].finish_reason == "stop" and chunks[-1].usage is None
    assert json.loads(events[-2])["choices"][0]["delta"] == {} and chunks[-1].rrr_validation.valid
    assert len(metrics.records) == 1

    service, metrics, _ = scripted(failing())
    r = post(service, "/v1/chat/completions", {"messages": [{"role": "user", "content": "hi"}], "stream": True})
    events = [e[len("data: "):] for e in r.text.split("\n\n") if e]
    assert len(events) == 5 and events[-1] == "[DONE]"
    assert OpenAIError.model_validate_json(events[-2]).error.message == "engine failed"
    assert metrics.errors == ["m"]


# -- types ---------------------------------------------------------------------------------------

def test_the_final_record_pickles_across_a_hop():
    chunk = OutputChunk(tokens=TOKENS, finished=True, final=record(with_repair=True))
    assert pickle.loads(pickle.dumps(chunk)) == chunk


def test_both_request_models_share_the_sampling_fields():
    """The same types; OpenAI's fields may be null (the default, as in OpenAI's API)."""
    ours, openai = GenerateRequest.model_json_schema(), ChatCompletionRequest.model_json_schema()
    for name in ("temperature", "top_p", "top_k", "repetition_penalty", "presence_penalty", "frequency_penalty",
                 "min_p", "min_tokens", "seed"):
        def bounds(prop: dict) -> list[dict]:
            return [{k: v for k, v in b.items() if k not in ("description", "title", "default")}
                    for b in prop.get("anyOf", [prop])
                    if b.get("type") != "null"]
        assert bounds(ours["properties"][name]) == bounds(openai["properties"][name]), name
        assert ChatCompletionRequest.model_fields[name].default is None
    assert ChatCompletionRequest(messages=[{"role": "user", "content": "x"}]).sampling() == SamplingOptions()
    with pytest.raises(ValueError, match="Extra inputs"):
        GenerateRequest(prompt="x", colour="red")
    with pytest.raises(ValueError, match="Extra inputs"):
        ChatCompletionRequest(messages=[{"role": "user", "content": "x"}], colour="red")


def test_openapi_lists_the_response_models_and_error_bodies():
    schema = create_app().openapi()
    names = set(schema["components"]["schemas"])
    assert {"GenerateResponse", "GenerationMetadata", "GenerateFailure", "ErrorBody", "GenerateStreamToken",
            "GenerateStreamEnd", "ChatCompletion", "ChatCompletionChunk", "Usage", "ModelList", "OpenAIError",
            "HealthResponse", "Validation"} <= names
    assert "HTTPValidationError" not in names  # the 422s are ErrorBody / OpenAIError

    def ref(path: str, method: str, status: str, media: str = "application/json") -> str:
        return json.dumps(schema["paths"][path][method]["responses"][status]["content"][media]["schema"])

    assert "GenerateResponse" in ref("/generate", "post", "200")
    assert "GenerateStreamEnd" in ref("/generate", "post", "200", "application/x-ndjson")
    assert "GenerateFailure" in ref("/generate", "post", "500")
    assert "ChatCompletion\"" in ref("/v1/chat/completions", "post", "200")
    assert "ChatCompletionChunk" in ref("/v1/chat/completions", "post", "200", "text/event-stream")
    for status in ("400", "404", "422", "503"):
        assert "ErrorBody" in ref("/generate", "post", status)
        if status != "422":  # under /v1 an invalid body is a 400, as OpenAI's API answers
            assert "OpenAIError" in ref("/v1/chat/completions", "post", status)
    assert "422" not in schema["paths"]["/v1/chat/completions"]["post"]["responses"]
    assert "OpenAIError" in ref("/v1/chat/completions", "post", "500")
    assert "ModelList" in ref("/v1/models", "get", "200")
    assert "HealthResponse" in ref("/health", "get", "503")


def test_the_documented_app_survives_ray_serve_ingress():
    """``serve.ingress`` pickles the app (starting nothing); the schema must come through."""
    serve = pytest.importorskip("ray.serve")
    from ray import cloudpickle

    app = create_app()
    serve.ingress(app)(type("Ingress", (), {}))
    copy = cloudpickle.loads(cloudpickle.dumps(type(app)))
    assert copy is type(app) and "ChatCompletionChunk" in json.dumps(app.openapi()["paths"]["/v1/chat/completions"])


def test_a_streamed_reply_ends_in_one_write_with_its_last_tokens():
    """The last chunk's tokens and the final line leave together: one write, as the chunk arrived."""
    from rrr_ray.serving.replies import ndjson, sse

    async def writes(formatter, *args):
        service, _, _ = scripted(finishing())
        request = service.engine_request(None, [{"role": "user", "content": "hi"}], SamplingOptions(), False)
        return [w async for w in formatter(await service.reply(request, False, 0.0), *args)]

    lines = run(writes(ndjson))
    assert len(lines) == 2
    last = lines[-1].decode().splitlines()
    assert [json.loads(x)["token"] for x in last[:-1]] == [t for t, _ in TOKENS[2:]]
    assert json.loads(last[-1])["finished"] is True
    events = run(writes(sse, "chatcmpl-1", "m"))
    assert len(events) == 3 and events[-1].decode().endswith("data: [DONE]\n\n")  # role, first chunk, the rest
