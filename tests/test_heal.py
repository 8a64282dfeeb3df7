"""Self-healing: the valid-prefix analysis and the remainder regex (property-tested over the seed
replies and broken texts), and the heal loop of the post-processing on the fake engine."""

from __future__ import annotations

import asyncio
import json
import re

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from rrr_ray import StreamValidator, remainder_regex, repair, valid_prefix_length, validate
from rrr_ray.format import prefix_state
from rrr_ray.format.spec import SECTIONS
from rrr_ray.serving.api import create_app
from rrr_ray.serving.config import EngineConfig, StreamingOptions
from rrr_ray.serving.fake_engine import BROKEN_REPLY, FAKE_ENGINE, INVALID_REPLY, continuation
from rrr_ray.serving.healing import Healing
from rrr_ray.serving.messages import EngineRequest, ModelChunk
from rrr_ray.serving.model_server import ModelServer
from rrr_ray.serving.postprocessing import PostProcessing
from rrr_ray.serving.protocol import SamplingOptions
from rrr_ray.serving.service import RRRService, ServedModel
from rrr_ray.serving.streams import postprocess
from tests.helpers import seed_replies, tracked_stream

GOOD = "<react>*leans in*</react>\n<respond>Tell me more.</respond>\n<reflect>They need space.</reflect>"


def _valid_seed_replies() -> list[str]:
    """The seed replies that are valid as written, and every seed reply after repair (canonical)."""
    replies = seed_replies()
    as_written = [r for r in replies if validate(r).valid]
    repaired = [fixed for fixed, report in map(repair, replies) if report.valid_after]
    return sorted(set(as_written) | set(repaired))


VALID_REPLIES = _valid_seed_replies()
_SLOW = dict(deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


# -- the valid prefix and its cut point ----------------------------------------------------------

@pytest.mark.parametrize("text, cut, reason", [
    (GOOD + "\nHope this helps!", len(GOOD) + 1, "text_outside_tags"),  # trailing text, after its whitespace
    ("Sure! " + GOOD, 0, "text_outside_tags"),
    ("<react>*a*</react>\n<rex>", len("<react>*a*</react>\n<re"), "text_outside_tags"),  # "<re" may open <respond>
    ("<react>*a*</react>\n<reflect>c</reflect>", len("<react>*a*</react>\n<re"), "text_outside_tags"),  # skip
    ("<react>*a*</react>\n<respond>b</respond><react>", len("<react>*a*</react>\n<respond>b</respond><re"),
     "text_outside_tags"),
    ("<React>*a*</react>", 1, "tag_case"),
    ("<react>*a*</react></respond>", len("<react>*a*</react><"), "unexpected_closing_tag"),
    ("<react>*a*</react><respond> </respond>", len("<react>*a*</react><respond> </respond"), "empty_section"),
    ("<react>*a <react> b*</react>", len("<react>*a <react"), "nested_tag"),
    ("<react>*a <respond>b</respond>", len("<react>*a <respond"), "unclosed_tag"),
    (GOOD + "</reflect>", len(GOOD), "text_outside_tags"),  # after the last section, "<" can only break it
])
def test_the_cut_is_the_longest_valid_prefix_however_late_the_break_is_certain(text, cut, reason):
    assert valid_prefix_length(text) == cut
    assert prefix_state(text[:cut]).valid
    assert prefix_state(text[:cut + 1]).violation.value == reason
    with pytest.raises(ValueError, match=reason):
        remainder_regex(text[:cut + 1])


def test_a_valid_reply_and_its_prefixes_are_valid_prefixes():
    assert valid_prefix_length(GOOD) == len(GOOD) and prefix_state(GOOD).complete
    assert not prefix_state(GOOD[:-1]).complete and prefix_state(GOOD[:-1]).valid
    assert prefix_state(GOOD + " \n").complete


def test_unicode_case_folding_does_not_make_a_tag():
    # "ſ" folds to "s" under Unicode rules; tags are matched in ASCII case only.
    text = "<react>*a*</react><respond>b <reſpond></respond><reflect>c</reflect>"
    assert validate(text).valid and validate(text).respond == "b <reſpond>"


@pytest.mark.parametrize("prefix, remainder", [
    ("", GOOD),
    ("<rea", GOOD[4:]),  # inside an opening tag
    ("<react>", GOOD[7:]),  # an empty body still needs content
    ("<react>   ", "*x*</react><respond>b</respond><reflect>c</reflect>"),
    ("<react>*leans in*</re", GOOD[len("<react>*leans in*</re"):]),  # inside a closing tag
    ("<react>*a <re", "d*</react><respond>b</respond><reflect>c</reflect>"),  # "<re" stays text
    ("<react>*a <", "</react><respond>b</respond><reflect>c</reflect>"),
    ("<react>*a*</react>\n\n", "<respond>b</respond><reflect>c</reflect>\n"),  # between sections
    (GOOD, "  \n"),  # after the last section: whitespace only
])
def test_remainders_in_every_state(prefix, remainder):
    assert validate(prefix + remainder).valid
    assert re.fullmatch(remainder_regex(prefix), remainder)


@pytest.mark.parametrize("prefix, remainder", [
    ("<react>", "</react><respond>b</respond><reflect>c</reflect>"),  # empty section
    ("<react>   ", "</react><respond>b</respond><reflect>c</reflect>"),
    ("<react>*a <re", "act>*</react><respond>b</respond><reflect>c</reflect>"),  # nested
    ("<react> <", "/react><respond>b</respond><reflect>c</reflect>"),  # "<react> </react>" is empty
    ("<react>*a*</react>", "<reflect>c</reflect>"),  # skips respond
    (GOOD, " ok"),
])
def test_the_remainder_regex_refuses_what_would_break_the_reply(prefix, remainder):
    assert not validate(prefix + remainder).valid
    assert not re.fullmatch(remainder_regex(prefix), remainder)


# -- properties over the seed replies ----------------------------------------------------------

@pytest.mark.parametrize("bounded", [True, False])
def test_every_prefix_of_every_seed_reply_admits_its_own_remainder(bounded):
    for reply in VALID_REPLIES:
        validator = StreamValidator()
        for i in range(len(reply) + 1):
            if i:
                validator.feed(reply[i - 1])
            state = prefix_state(validator)
            assert state.valid, (reply[:i], state)
            assert re.fullmatch(remainder_regex(state, bounded=bounded), reply[i:]), (reply[:i], reply[i:])


@settings(max_examples=100, **_SLOW)
@given(data=st.data(), reply=st.sampled_from(VALID_REPLIES), cut=st.integers(min_value=0, max_value=10_000))
def test_what_the_remainder_regex_admits_completes_the_prefix(data, reply, cut):
    prefix = reply[:cut % (len(reply) + 1)]
    rest = data.draw(st.from_regex(remainder_regex(prefix), fullmatch=True), label="rest")
    v = validate(prefix + rest)
    assert v.valid, (prefix, rest, v.summary())


_junk = st.sampled_from(["Sure! ", " ok", "<", "<re", "</", "<rex", "<React>", "</respond>", "<respond>", "<reflect>",
                         "<react>", "</react>", "\n", "*", "é 😀", "<", ">", "</re"])


@st.composite
def broken_texts(draw) -> str:
    """A seed reply with junk put in somewhere, or a string of tag pieces."""
    if draw(st.booleans()):
        reply = draw(st.sampled_from(VALID_REPLIES))
        at = draw(st.integers(min_value=0, max_value=len(reply)))
        return reply[:at] + "".join(draw(st.lists(_junk, min_size=1, max_size=3))) + reply[at:]
    return "".join(draw(st.lists(_junk, max_size=12)))


@settings(max_examples=100, **_SLOW)
@given(data=st.data(), text=broken_texts())
def test_cut_plus_remainder_heals_a_broken_text(data, text):
    cut = valid_prefix_length(text)
    prefix = text[:cut]
    assert all(prefix_state(text[:k]).valid for k in range(cut + 1))
    if cut < len(text):
        assert not prefix_state(text[:cut + 1]).valid and not validate(text).valid
    rest = data.draw(st.from_regex(remainder_regex(prefix), fullmatch=True), label="rest")
    v = validate(prefix + rest)
    assert v.valid, (prefix, rest, v.summary())


def test_the_bounded_remainder_caps_what_is_left_to_write():
    longest = {s.name: s.max_guided_chars for s in SECTIONS}
    pattern = remainder_regex("<react>*a*</react>")
    assert re.fullmatch(pattern, f"<respond>{'x' * longest['respond']}</respond><reflect>c</reflect>")
    assert not re.fullmatch(pattern, f"<respond>{'x' * (longest['respond'] + 1)}</respond><reflect>c</reflect>")
    assert re.fullmatch(remainder_regex("<react>*a*</react>", bounded=False),
                        f"<respond>{'x' * 1000}</respond><reflect>c</reflect>")


# -- serving: the heal loop in the post-processing, on the fake engine ---------------------------

BROKEN_CUT = valid_prefix_length(BROKEN_REPLY)  # where the model's own text breaks: "Sure!" outside the sections


class Recording:
    """A model stage that records every request it is asked (the continuation included)."""

    def __init__(self, server: ModelServer) -> None:
        self.server = server
        self.requests: list[EngineRequest] = []

    def stream(self, request: EngineRequest):
        self.requests.append(request)
        return self.server.stream(request)

    async def health(self):
        return await self.server.health()


class HealMetrics:
    def __init__(self) -> None:
        self.heals: list[tuple[str, str]] = []
        self.records: list[tuple] = []

    def record(self, *args) -> None:
        self.records.append(args)

    def record_heal(self, model: str, reason: str) -> None:
        self.heals.append((model, reason))

    def record_error(self, model: str) -> None:
        raise AssertionError(f"unexpected error on {model}")


def heal_service(interval: float = 0.0, heal_default: bool = True):
    server = ModelServer(EngineConfig(name="fake", path="-", engine_class=FAKE_ENGINE, max_model_len=4096,
                                      engine_kwargs={"token_interval_s": interval}),
                         StreamingOptions(stream_interval_ms=10, max_hop_messages_per_s=0))
    model = Recording(server)
    postprocessing = PostProcessing({"fake": model})
    metrics = HealMetrics()
    service = RRRService(postprocessing.stream, postprocessing.health, [ServedModel("fake", "-", heal=heal_default)],
                         metrics=metrics)
    return service, model, server.engine, metrics


def post_json(service: RRRService, path: str, body: dict) -> httpx.Response:
    async def main():
        transport = httpx.ASGITransport(app=create_app(service))
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as c:
            return await c.post(path, json=body)
    return asyncio.run(main())


def test_a_broken_reply_is_healed_and_the_client_never_sees_what_broke_it():
    service, model, engine, metrics = heal_service()
    lines = [json.loads(line) for line in
             post_json(service, "/generate", {"prompt": "hi [broken]", "stream": True, "max_new_tokens": 200}).text
             .splitlines()]
    tokens, end = lines[:-1], lines[-1]
    text = "".join(t["token"] for t in tokens)
    prefix = BROKEN_REPLY[:BROKEN_CUT]
    assert text == prefix + continuation(prefix, None) and "Sure" not in text
    assert end["validation"]["valid"] and end["validation"] == validate(text).model_dump(mode="json")
    assert end["heal"]["position"] == BROKEN_CUT and end["heal"]["reason"] == "text_outside_tags"
    starts = [sum(len(t["token"]) for t in tokens[:i]) for i in range(len(tokens))]
    continued = [t["section"] for t, at in zip(tokens, starts) if at >= BROKEN_CUT]
    assert continued[0] == "respond" and set(continued) <= {"respond", "reflect", None}

    first, cont = model.requests
    assert cont.request_id == first.request_id + "-heal" and cont.continue_final_message and not cont.heal
    assert cont.messages == [*first.messages, {"role": "assistant", "content": prefix}]
    assert cont.guided_regex == remainder_regex(prefix)
    own_tokens = -(-BROKEN_CUT // 4)  # the fake's tokens are 4 characters; the one holding the cut counts
    continued_tokens = -(-len(continuation(prefix, None)) // 4)
    assert cont.sampling.max_new_tokens == 200 - own_tokens
    assert end["metadata"]["output_tokens"] == own_tokens + continued_tokens
    assert 0 <= end["heal"]["dropped_tokens"] <= -(-len(BROKEN_REPLY) // 4) - own_tokens
    assert metrics.heals == [("fake", "text_outside_tags")] and engine.running == 0


def test_a_reply_the_model_ends_too_soon_is_continued_on_both_apis():
    service, model, _, metrics = heal_service()
    body = post_json(service, "/generate", {"prompt": "hi [invalid]"}).json()
    assert body["generated_text"].startswith(INVALID_REPLY) and body["validation"]["valid"]
    assert body["heal"] == {"position": len(INVALID_REPLY), "reason": "missing_tag", "dropped_tokens": 0}

    chat = post_json(service, "/v1/chat/completions", {"messages": [{"role": "user", "content": "[invalid]"}]}).json()
    assert chat["rrr_validation"]["valid"] and chat["rrr_heal"]["reason"] == "missing_tag"
    assert chat["choices"][0]["message"]["content"] == body["generated_text"]

    sse = post_json(service, "/v1/chat/completions", {"messages": [{"role": "user", "content": "[broken]"}],
                                                      "stream": True}).text
    chunks = [json.loads(e[len("data: "):]) for e in sse.strip().split("\n\n")[:-1]]
    streamed = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks)
    assert validate(streamed).valid and "Sure" not in streamed
    assert chunks[-1]["rrr_heal"]["position"] == BROKEN_CUT and chunks[-1]["rrr_validation"]["valid"]
    assert [r for _, r in metrics.heals] == ["missing_tag", "missing_tag", "text_outside_tags"]


def test_heal_off_leaves_the_broken_reply_as_the_model_wrote_it():
    service, model, _, metrics = heal_service()
    body = post_json(service, "/generate", {"prompt": "[broken]", "heal": False}).json()
    assert body["generated_text"] == BROKEN_REPLY and "heal" not in body
    assert body["validation"]["errors"][0]["code"] == "text_outside_tags"
    assert len(model.requests) == 1 and not metrics.heals

    off_by_default, model, _, _ = heal_service(heal_default=False)
    assert post_json(off_by_default, "/generate", {"prompt": "[invalid]"}).json()["generated_text"] == INVALID_REPLY
    assert post_json(off_by_default, "/generate", {"prompt": "[invalid]", "heal": True}).json()["validation"]["valid"]


def test_guided_wins_over_heal_and_ignore_eos_turns_the_default_off():
    service, model, _, metrics = heal_service()
    body = post_json(service, "/generate", {"prompt": "[broken]", "guided": True, "heal": True}).json()
    (request,) = model.requests
    assert request.guided_regex is not None and not request.heal and "heal" not in body and not metrics.heals
    messages = [{"role": "user", "content": "hi"}]
    assert not service.engine_request(None, messages, SamplingOptions(ignore_eos=True), guided=False).heal
    assert service.engine_request(None, messages, SamplingOptions(ignore_eos=True), guided=False, heal=True).heal
    assert service.engine_request(None, messages, SamplingOptions(), guided=False).heal


def test_cancelling_during_the_continuation_closes_the_engine_stream():
    service, model, engine, _ = heal_service(interval=0.01)

    async def main():
        request = service.engine_request(None, [{"role": "user", "content": "[broken]"}],
                                         SamplingOptions(max_new_tokens=500), guided=False)
        stream = service.stream(request, False)
        text = ""
        while "<respond>" not in text:  # the continuation's tokens
            text += "".join(t for t, _ in (await anext(stream)).tokens)
        assert len(model.requests) == 2 and engine.running == 1  # the model's own stream is closed already
        await stream.aclose()
        return text
    text = asyncio.run(main())
    assert text.startswith(BROKEN_REPLY[:BROKEN_CUT]) and engine.running == 0


def test_a_failing_continuation_ends_the_reply_with_an_error():
    service, model, engine, _ = heal_service()
    service.metrics = None
    r = post_json(service, "/generate", {"prompt": "[broken] [fail-after:12]", "stream": True})
    end = json.loads(r.text.splitlines()[-1])
    assert "failed" in end["error"] and len(model.requests) == 2 and engine.running == 0


# -- the post-processing alone, over scripted model chunks ----------------------------------------

def chunk(texts: list[str], **kw) -> ModelChunk:
    return ModelChunk(text=texts, num_tokens=len(texts), tokens_per_text=[1] * len(texts), input_tokens=5, **kw)


def run_postprocess(first: list[ModelChunk], max_new_tokens: int = 100, refused: bool = False):
    """The output chunks, the continuation requests, and whether every model stream was closed
    (``refused``: the model stage refuses the continuation, as an engine with no room left does)."""
    request = EngineRequest(request_id="r", model="m", messages=[{"role": "user", "content": "hi"}],
                            sampling=SamplingOptions(max_new_tokens=max_new_tokens), heal=True)
    asked: list[EngineRequest] = []
    closed: list[bool] = []

    def scripted(chunks: list[ModelChunk]):
        return tracked_stream(chunks, closed)

    def stream(req: EngineRequest):
        asked.append(req)
        if refused:
            return scripted([ModelChunk(finished=True, error="the prompt is 99 tokens; the context is 64", status=400)])
        rest = continuation(req.messages[-1]["content"], req.guided_regex)
        return scripted([chunk([rest[:10]], engine_ttft_s=0.2),
                         chunk([rest[10:]], finished=True, finish_reason="stop", engine_time_s=0.4)])

    async def main():
        return [c async for c in postprocess(scripted(first), healing=Healing(request, stream))]
    return asyncio.run(main()), asked, closed


def test_the_cut_falls_inside_a_token_and_only_its_valid_part_is_sent():
    own = "<react>*a*</react>\n<rex"  # "<re" may still open <respond>: it is sent, "x" is not
    outputs, asked, closed = run_postprocess([chunk(["<react>*a*", "</react>\n<re", "x", "oops"], engine_ttft_s=0.1)])
    final = outputs[-1].final
    sent = "".join(t for c in outputs for t, _ in c.tokens)
    assert sent == final.text and final.text.startswith(own[:-1]) and final.validation.valid
    assert asked[0].messages[-1]["content"] == own[:-1] and closed == [True, True]
    assert (final.heal.position, final.heal.reason.value, final.heal.dropped_tokens) == (len(own) - 1,
                                                                                         "text_outside_tags", 2)
    assert final.output_tokens == 2 + 2 and final.input_tokens == 5 and final.engine_ttft_s == 0.1


def test_a_reply_broken_before_its_first_token_takes_its_first_token_from_the_continuation():
    outputs, asked, _ = run_postprocess([chunk(["Sure! ", "<react>"], engine_ttft_s=0.1)])
    final = outputs[-1].final
    assert asked[0].messages[-1]["content"] == "" and final.heal.position == 0 and final.validation.valid
    assert final.output_tokens == 2 and final.heal.dropped_tokens == 2
    assert final.engine_ttft_s >= 0.2 and final.engine_time_s >= 0.4  # the dropped part's engine time counts in


def test_a_short_reply_is_continued_with_engine_times_over_both_parts():
    outputs, asked, closed = run_postprocess([
        chunk(["<react>*a*</react>"], engine_ttft_s=0.1),
        chunk(["<respond>b</respond>"], finished=True, finish_reason="stop", engine_time_s=0.3)])
    final = outputs[-1].final
    assert final.heal.reason.value == "missing_tag" and final.validation.valid and closed == [True, True]
    assert (final.engine_ttft_s, final.engine_time_s) == (0.1, pytest.approx(0.7)) and final.output_tokens == 4


def test_text_after_a_whole_reply_is_cut_without_a_continuation():
    outputs, asked, closed = run_postprocess([chunk([GOOD, " Hope", " this helps"], engine_ttft_s=0.1)])
    final = outputs[-1].final
    assert final.text == GOOD + " " and final.validation.valid and not asked and closed == [True]
    assert (final.heal.position, final.heal.reason.value, final.finish_reason) == (len(GOOD) + 1,
                                                                                   "text_outside_tags", "stop")


def test_a_refused_continuation_ends_the_reply_as_sent():
    outputs, asked, closed = run_postprocess([chunk(["<react>*a*</react>", "Sure"], engine_ttft_s=0.1)], refused=True)
    final = outputs[-1].final
    assert outputs[-1].error is None and len(asked) == 1 and closed == [True, True]
    assert final.text == "<react>*a*</react>" and final.finish_reason == "length" and not final.validation.valid
    assert final.heal.position == len(final.text)


def test_a_reply_that_breaks_with_no_tokens_left_is_not_healed():
    outputs, asked, _ = run_postprocess([chunk(["<react>*a*", "</react>", "Sure"], finished=True,
                                               finish_reason="length")], max_new_tokens=2)
    final = outputs[-1].final
    assert not asked and final.heal is None and final.text == "<react>*a*</react>Sure"
    assert not final.validation.valid


@pytest.mark.slow  # transformers' import, when no test before it imported it
def test_the_vllm_engine_renders_a_continued_reply_without_its_end_of_turn():
    """What vLLM's chat endpoint does with ``continue_final_message``, on the tiny model's template."""
    from transformers import AutoTokenizer

    from rrr_ray.serving.vllm_engine import VLLMEngine
    from tests.helpers import REPO

    engine = VLLMEngine(EngineConfig(name="rrr-tiny", path=str(REPO / "models" / "rrr-tiny")))
    engine._tokenizer = AutoTokenizer.from_pretrained(engine.config.path)  # what start() takes from vLLM
    decode = engine._tokenizer.decode
    messages = [{"role": "user", "content": "hi"}]
    new_turn = engine._prompt_ids(messages)
    prefix = "<react>*nods*</react>\n<resp"
    continued = engine._prompt_ids([*messages, {"role": "assistant", "content": prefix}], continue_final_message=True)
    assert decode(continued) == decode(new_turn) + prefix
    assert engine._prompt_ids([*messages, {"role": "assistant", "content": ""}], continue_final_message=True) == new_turn
