"""The OpenAI chat API as clients send it, over fake engines (no Ray, no model): each field is
accepted and honoured (it reaches the engine request, and vLLM's SamplingParams), ignored where
OpenAI's reply does not depend on it, or refused with a 400 that names it."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import httpx
import pytest

from rrr_ray import validate
from rrr_ray.format import guided_regex
from rrr_ray.serving.api import create_app
from rrr_ray.serving.fake_engine import VALID_REPLY
from rrr_ray.serving.healing import Healing
from rrr_ray.serving.messages import EngineRequest
from rrr_ray.serving.protocol import ChatCompletion, ChatCompletionChunk, ChatCompletionRequest
from rrr_ray.serving.sampling import SamplingOptions
from rrr_ray.serving.service import RRRService
from rrr_ray.serving.vllm_engine import vllm_sampling_params
from tests._http_server import fake_service

USER = [{"role": "user", "content": "I feel stuck at work."}]
C = "/v1/chat/completions"


def recording() -> tuple[RRRService, list[EngineRequest]]:
    """The in-process service over fake engines, and the engine requests it sends."""
    service, seen = fake_service(), []
    inner = service.stream

    def stream(request: EngineRequest, with_repair: bool):
        seen.append(request)
        return inner(request, with_repair)

    service.stream = stream
    return service, seen


def post(body: dict[str, Any], service: RRRService | None = None) -> httpx.Response:
    async def main() -> httpx.Response:
        transport = httpx.ASGITransport(app=create_app(service or fake_service()))
        async with httpx.AsyncClient(transport=transport, base_url="http://test", timeout=30) as c:
            return await c.post(C, json=body)
    return asyncio.run(main())


def chat(**fields: Any) -> dict[str, Any]:
    return {"messages": USER, **fields}


def events(r: httpx.Response) -> list[dict[str, Any]]:
    """The JSON events of an SSE body, checked to end with [DONE]."""
    data = [e[len("data: "):] for e in r.text.split("\n\n") if e]
    assert data[-1] == "[DONE]", data[-3:]
    return [json.loads(e) for e in data[:-1]]


def streamed_text(chunks: list[dict[str, Any]]) -> str:
    return "".join(c["choices"][0]["delta"].get("content", "") for c in chunks if c["choices"])


def error_of(r: httpx.Response, status: int = 400) -> str:
    assert r.status_code == status, r.text
    body = r.json()
    assert body["error"]["type"] == "invalid_request_error"
    return body["error"]["message"]


# -- content parts -------------------------------------------------------------------------------

def test_text_content_parts_are_joined_and_the_developer_role_is_the_system_role():
    service, seen = recording()
    r = post({"messages": [{"role": "developer", "content": [{"type": "text", "text": "Be kind."}]},
                           {"role": "user", "content": [{"type": "text", "text": "I feel"},
                                                        {"type": "text", "text": "stuck."}]}]}, service)
    assert r.status_code == 200, r.text
    assert ChatCompletion.model_validate(r.json()).choices[0].message.content == VALID_REPLY
    assert seen[0].messages == [{"role": "system", "content": "Be kind."},
                                {"role": "user", "content": "I feel\nstuck."}]


def test_content_parts_count_against_the_prompt_limit_as_their_joined_text():
    from rrr_ray.serving.limits import HttpLimits

    body = ChatCompletionRequest.model_validate(
        {"messages": [{"role": "user", "content": [{"type": "text", "text": "x" * 60}] * 2}]})
    errors = HttpLimits(max_prompt_chars=100).request_errors(body)
    assert [e["loc"] for e in errors] == [("body", "messages", 0, "content")] and "121 characters" in errors[0]["msg"]


@pytest.mark.parametrize("part, says", [
    ({"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}, "'image_url'"),
    ({"type": "input_audio", "input_audio": {"data": "AAAA", "format": "wav"}}, "'input_audio'"),
    ({"type": "file", "file": {"file_id": "f"}}, "'file'"),
    ({"type": "text"}, "needs 'text'"),
])
def test_other_content_parts_are_a_400_naming_their_type(part, says):
    message = error_of(post(chat(messages=[{"role": "user", "content": [{"type": "text", "text": "hi"}, part]}])))
    assert says in message and "messages.0.content" in message and "text" in message, message


def test_generate_takes_content_parts_too():
    async def main() -> httpx.Response:
        transport = httpx.ASGITransport(app=create_app(fake_service()))
        async with httpx.AsyncClient(transport=transport, base_url="http://test", timeout=30) as c:
            return await c.post("/generate", json={"messages": [{"role": "user", "content": [
                {"type": "text", "text": "hi"}]}], "frequency_penalty": 1.5, "min_p": 0.05})
    r = asyncio.run(main())
    assert r.status_code == 200 and r.json()["validation"]["valid"], r.text


# -- stream_options ------------------------------------------------------------------------------

def test_include_usage_adds_one_usage_chunk_with_no_choices_and_only_when_asked():
    asked = events(post(chat(stream=True, stream_options={"include_usage": True})))
    last = asked[-1]
    assert last["choices"] == [] and last["usage"]["completion_tokens"] > 0
    assert last["usage"]["total_tokens"] == last["usage"]["prompt_tokens"] + last["usage"]["completion_tokens"]
    assert all("usage" not in c for c in asked[:-1])
    assert asked[-2]["choices"][0]["finish_reason"] == "stop" and asked[-2]["rrr_validation"]["valid"]
    for options in (None, {"include_usage": False}, {}):
        plain = events(post(chat(stream=True, stream_options=options)))
        assert all("usage" not in c and c["choices"] for c in plain)
        assert streamed_text(plain) == VALID_REPLY
    assert "stream_options.flush" in error_of(post(chat(stream=True, stream_options={"flush": True})))


# -- max tokens, stop, seed, ignored fields --------------------------------------------------------

def test_max_completion_tokens_is_max_tokens():
    service, seen = recording()
    assert post(chat(max_completion_tokens=5), service).json()["usage"]["completion_tokens"] == 5
    assert post(chat(max_tokens=6, max_completion_tokens=6), service).status_code == 200
    assert [r.sampling.max_new_tokens for r in seen] == [5, 6]
    assert post(chat(max_tokens=5, max_completion_tokens=6), service).status_code == 200
    assert seen[-1].sampling.max_new_tokens == 6  # the newer name wins, as in vLLM


@pytest.mark.parametrize("stream", [False, True])
@pytest.mark.parametrize("stop", ["<respond>", ["nothing like it", "<respond>"]])
def test_a_stop_string_ends_the_reply_before_it_and_the_cut_reply_is_reported_not_healed(stop, stream):
    r = post(chat(stop=stop, stream=stream))
    assert r.status_code == 200, r.text
    if stream:
        chunks = events(r)
        text, final = streamed_text(chunks), chunks[-1]
        choice = final["choices"][0]
    else:
        final = r.json()
        text, choice = final["choices"][0]["message"]["content"], final["choices"][0]
    assert text == VALID_REPLY[:VALID_REPLY.index("<respond>")]
    assert choice["finish_reason"] == "stop" and choice["stop_reason"] == "<respond>"
    assert final["rrr_validation"]["valid"] is False and "rrr_heal" not in final  # heal is on by default
    assert final["rrr_validation"] == validate(text).model_dump(mode="json")


def test_seed_user_metadata_and_other_harmless_fields_are_accepted():
    service, seen = recording()
    r = post(chat(seed=7, user="u-1", metadata={"team": "a"}, store=False, service_tier="auto",
                  parallel_tool_calls=True, prompt_cache_key="k", safety_identifier="s", n=1, logprobs=False,
                  response_format={"type": "text"}, modalities=["text"], tools=[], logit_bias={}, temperature=None,
                  top_p=None, stream=False, stream_options=None), service)
    assert r.status_code == 200, r.text
    assert seen[0].sampling.seed == 7 and seen[0].sampling.temperature == SamplingOptions().temperature
    assert r.json()["choices"][0]["logprobs"] is None


# -- sampling fields -----------------------------------------------------------------------------

SAMPLING = {"presence_penalty": 0.5, "frequency_penalty": 2.0, "min_p": 0.1, "min_tokens": 3, "ignore_eos": True,
            "top_k": 5, "repetition_penalty": 1.3, "temperature": 0.2, "top_p": 0.8, "seed": 11}


def test_every_sampling_field_reaches_the_engine_request_and_vllms_sampling_params():
    service, seen = recording()
    r = post(chat(max_tokens=20, stop=["</reflect>"], **SAMPLING), service)
    assert r.status_code == 200, r.text
    sampling = seen[0].sampling
    assert {k: getattr(sampling, k) for k in SAMPLING} == SAMPLING
    params = vllm_sampling_params(seen[0], room=1000)
    assert {k: getattr(params, k) for k in SAMPLING} == SAMPLING
    assert (params.max_tokens, params.stop, params.logprobs) == (20, ["</reflect>"], None)
    assert vllm_sampling_params(seen[0], room=2).min_tokens == 2  # never more than the context has room for


def test_generate_takes_the_same_sampling_fields():
    from rrr_ray.serving.protocol import GenerateRequest

    body = GenerateRequest.model_validate({"prompt": "hi", **SAMPLING})
    assert {k: getattr(body.sampling(), k) for k in SAMPLING} == SAMPLING


@pytest.mark.parametrize("field, value, says", [
    ("frequency_penalty", 2.5, "less than or equal to 2"),
    ("presence_penalty", -3, "greater than or equal to -2"),
    ("min_p", 1.5, "less than or equal to 1"),
    ("min_tokens", -1, "greater than or equal to 0"),
    ("top_logprobs", 21, "less than or equal to 20"),
])
def test_sampling_fields_out_of_range_are_a_400(field, value, says):
    body = chat(**{field: value}, **({"logprobs": True} if field == "top_logprobs" else {}))
    message = error_of(post(body))
    assert field in message and says in message, message


def test_min_tokens_is_at_most_the_max_and_keeps_the_reply_long():
    assert post(chat(min_tokens=30, max_tokens=20)).json()["usage"]["completion_tokens"] == 20
    r = post(chat(max_tokens=5, max_completion_tokens=7)).json()  # the newer name wins, as in vLLM
    assert r["usage"]["completion_tokens"] <= 7
    r = post(chat(min_tokens=60, max_tokens=80)).json()  # the fake engine's reply is about 50 pieces
    assert r["usage"]["completion_tokens"] == 60 and "rrr_heal" not in r


# -- logprobs -------------------------------------------------------------------------------------

def test_logprobs_in_openais_shape():
    service, seen = recording()
    r = post(chat(logprobs=True, top_logprobs=3), service).json()
    assert seen[0].logprobs == 3 and vllm_sampling_params(seen[0], 100).logprobs == 3
    content = r["choices"][0]["logprobs"]["content"]
    assert "".join(e["token"] for e in content) == r["choices"][0]["message"]["content"]
    assert len(content) == r["usage"]["completion_tokens"]
    for e in content:
        assert e["logprob"] <= 0 and e["bytes"] == list(e["token"].encode())
        assert len(e["top_logprobs"]) == 3 and e["top_logprobs"][0]["token"] == e["token"]
        ranked = [t["logprob"] for t in e["top_logprobs"]]
        assert sorted(ranked, reverse=True) == ranked
    plain = post(chat(logprobs=True)).json()["choices"][0]["logprobs"]["content"]
    assert plain and all(e["top_logprobs"] == [] for e in plain)


def test_logprobs_streamed_with_each_chunk_of_tokens():
    chunks = events(post(chat(logprobs=True, top_logprobs=1, stream=True, stream_options={"include_usage": True})))
    entries = [e for c in chunks if c["choices"] and c["choices"][0].get("logprobs")
               for e in c["choices"][0]["logprobs"]["content"]]
    text = streamed_text(chunks)
    assert text == VALID_REPLY and "".join(e["token"] for e in entries) == text
    assert len(entries) == chunks[-1]["usage"]["completion_tokens"]
    for c in chunks:
        ChatCompletionChunk.model_validate(c)
        if c["choices"] and c["choices"][0]["delta"].get("content"):
            assert c["choices"][0]["logprobs"]["content"]


def test_a_healed_reply_has_the_logprobs_of_the_tokens_sent_only():
    r = post({"messages": [{"role": "user", "content": "go [broken]"}], "logprobs": True}).json()
    assert r["rrr_heal"] and r["rrr_validation"]["valid"]
    content = r["choices"][0]["logprobs"]["content"]
    own = r["choices"][0]["message"]["content"][:r["rrr_heal"]["position"]]  # the model's own part, kept
    assert "".join(e["token"] for e in content).startswith(own)
    assert len(content) == r["usage"]["completion_tokens"]


# -- what rrr-ray cannot do ---------------------------------------------------------------------

TOOL = {"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}


@pytest.mark.parametrize("fields, says", [
    ({"tools": [TOOL]}, "tools: tool calls are not supported"),
    ({"tool_choice": "auto"}, "tool_choice"),
    ({"functions": [TOOL["function"]]}, "functions"),
    ({"function_call": "auto"}, "function_call"),
    ({"response_format": {"type": "json_object"}}, "response_format of type 'json_object'"),
    ({"response_format": {"type": "json_schema", "json_schema": {"name": "x"}}}, "'json_schema'"),
    ({"n": 2}, "n = 2: rrr-ray returns one choice per request"),
    ({"logit_bias": {"50256": -100}}, "logit_bias is not supported"),
    ({"modalities": ["text", "audio"]}, "modalities"),
    ({"audio": {"voice": "alloy", "format": "wav"}}, "audio"),
    ({"reasoning_effort": "low"}, "reasoning_effort"),
    ({"top_logprobs": 2}, "top_logprobs needs logprobs: true"),
    ({"structured_outputs": {"regex": "a+"}, "guided": True}, "structured_outputs"),
    ({"structured_outputs": {"regex": guided_regex()}}, "structured_outputs"),
    ({"colour": "red"}, "colour: Extra inputs are not permitted"),
    ({"messages": [{"role": "user", "content": "hi", "name": "ann"}]}, "messages.0.name"),
    ({"messages": [{"role": "tool", "content": "42", "tool_call_id": "t"}]}, "messages.0.role"),
])
def test_what_rrr_ray_cannot_do_is_a_400_naming_it(fields, says):
    message = error_of(post(chat(**fields)))
    assert says in message, message


def test_structured_outputs_is_accepted_as_vllms_spelling_of_guided():
    service, seen = recording()
    r = post(chat(guided=True, structured_outputs={"regex": guided_regex()}), service)
    assert r.status_code == 200 and r.json()["rrr_validation"]["valid"], r.text
    assert seen[0].guided_regex is not None


# -- healing keeps the request's sampling ---------------------------------------------------------

def test_a_continuation_keeps_the_requests_sampling_settings():
    sampling = SamplingOptions(max_new_tokens=100, stop=["END"], **{k: v for k, v in SAMPLING.items()
                                                                    if k != "min_tokens"}, min_tokens=30)
    request = EngineRequest(request_id="r", model="m", messages=USER, sampling=sampling, heal=True, logprobs=2)
    follow = Healing(request, stream=None).continuation("<react>*nods*</react>", "x", tokens_left=80)
    assert follow.sampling.model_dump(exclude={"max_new_tokens", "min_tokens"}) == \
        sampling.model_dump(exclude={"max_new_tokens", "min_tokens"})
    assert (follow.sampling.max_new_tokens, follow.sampling.min_tokens) == (80, 10)  # 20 tokens were sent
    assert follow.logprobs == 2 and follow.continue_final_message and not follow.heal
    assert Healing(request, stream=None).continuation("p", "x", tokens_left=50).sampling.min_tokens == 0


# -- vLLM's benchmark client, in process ----------------------------------------------------------

class _AsgiSession:
    """The part of ``aiohttp.ClientSession`` that vLLM's benchmark request functions use, over the
    app in process (``post(url=, json=, headers=)`` as a context manager; ``status``, ``reason`` and
    ``content.iter_any()`` on the response)."""

    def __init__(self, client: httpx.AsyncClient) -> None:
        self.client = client
        self.bodies: list[dict[str, Any]] = []

    def post(self, url: str, json: dict[str, Any], headers: dict[str, str]) -> Any:
        session = self

        class _Response:
            async def __aenter__(self) -> "_Response":
                session.bodies.append(json)
                self.response = await session.client.post(url, json=json, headers=headers)
                self.status, self.reason = self.response.status_code, self.response.reason_phrase
                self.content = self
                return self

            async def __aexit__(self, *exc: Any) -> None:
                return None

            async def iter_any(self):
                yield self.response.content

        return _Response()


def test_vllms_benchmark_request_function_gets_every_reply():
    """vLLM's ``openai-chat`` benchmark request, as ``vllm bench serve`` sends it (content parts,
    max_completion_tokens, include_usage, ignore_eos and sampling extras), parsed by vLLM's own
    reader. Against the real graph: tests/test_openai_clients_e2e.py."""
    from vllm.benchmarks.lib.endpoint_request_func import RequestFuncInput, async_request_openai_chat_completions

    async def main():
        transport = httpx.ASGITransport(app=create_app(fake_service()))
        async with httpx.AsyncClient(transport=transport, base_url="http://test", timeout=30) as client:
            session = _AsgiSession(client)
            outputs = [await async_request_openai_chat_completions(RequestFuncInput(
                prompt="I feel stuck at work.", api_url=f"http://test{C}", prompt_len=5, output_len=12, model="fake",
                ignore_eos=True, extra_body={"temperature": 0.7, "top_k": 40, "frequency_penalty": 0.5}), session)
                for _ in range(3)]
        return session.bodies, outputs
    bodies, outputs = asyncio.run(main())
    assert bodies[0]["messages"][0]["content"] == [{"type": "text", "text": "I feel stuck at work."}]
    assert bodies[0]["stream_options"] == {"include_usage": True} and bodies[0]["max_completion_tokens"] == 12
    for out in outputs:
        assert out.success, out.error
        assert out.output_tokens == 12 and out.generated_text and out.ttft > 0
