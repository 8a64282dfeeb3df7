"""The watch page (``GET /``) in a real browser: headless Chromium over uvicorn serving the app on
the fake engine, without Ray; and once over the real stack (e2e)."""

from __future__ import annotations

import asyncio
import json
import os
from pathlib import Path
from typing import Any

import httpx
import pytest

from rrr_ray import validate
from rrr_ray.serving.api import create_app
from rrr_ray.serving.config import EngineConfig, StreamingOptions
from rrr_ray.serving.fake_engine import FAKE_ENGINE, INVALID_REPLY, VALID_REPLY
from rrr_ray.serving.messages import EngineRequest
from rrr_ray.serving.model_server import ModelServer
from rrr_ray.serving.postprocessing import PostProcessing
from rrr_ray.serving.service import RRRService, ServedModel
from tests._http_server import BackgroundServer
from tests.browser import browser_page

SCREENSHOT_ENV = "RRR_WATCH_PAGE_SCREENSHOT"
"""Where to save a PNG of the page after its two turns (the README's docs/watch-page.png); unset: none."""
TOKEN_INTERVAL_S = 0.04  # slow enough to watch the sections fill in
WAIT_MS = 15_000

SNAPSHOT = """() => {
  const last = [...document.querySelectorAll('.exchange')].pop();
  const pick = (selector) => last ? last.querySelector(selector).textContent : '';
  return {
    state: document.getElementById('app').dataset.state,
    exchanges: document.querySelectorAll('.exchange').length,
    exchange_state: last ? last.dataset.state : null,
    react: pick('[data-section="react"]'), respond: pick('[data-section="respond"]'),
    reflect: pick('[data-section="reflect"]'), outside: pick('[data-section="outside"]'),
    folded: last ? !last.querySelector('details.reflect').open : null,
    verdict: pick('.verdict'), stats: pick('.stats'), error: pick('.error'),
    models: [...document.querySelectorAll('#model option')].map((o) => o.value),
  };
}"""


def wait_for(page, condition: str, timeout_ms: int = WAIT_MS) -> dict[str, Any]:
    """The page's snapshot at the first moment ``condition`` (JS over the snapshot ``s``) holds:
    taken in the same evaluation as the check, so a mid-stream state cannot slip past."""
    probe = f"() => {{ const s = ({SNAPSHOT})(); return ({condition}) ? s : null; }}"
    return page.wait_for_function(probe, polling=10, timeout=timeout_ms).json_value()


def send(page, message: str, *, model: str, guided: bool = False, heal: str = "") -> dict[str, Any]:
    """Send a message with these settings (``heal``: "", the server's default, "true" or "false");
    returns the body of the request the page sent."""
    page.select_option("#model", model)
    page.set_checked("#guided", guided)
    page.select_option("#heal", heal)
    page.fill("#message", message)
    with page.expect_request(lambda r: r.url.endswith("/generate")) as sent:
        page.press("#message", "Enter")
    return sent.value.post_data_json


def fake_service(seen: list[EngineRequest]) -> RRRService:
    """The in-process graph (as with ``placement: ingress``) on the fake engine: a base model and a
    fine-tuned adapter on it; ``seen`` collects every request that reaches the models."""
    server = ModelServer(EngineConfig(name="fake-base", path="-", engine_class=FAKE_ENGINE,
                                      lora_modules={"fake-rrr": "-"}, max_model_len=4096,
                                      engine_kwargs={"token_interval_s": TOKEN_INTERVAL_S}),
                         StreamingOptions(max_hop_messages_per_s=0))
    postprocessing = PostProcessing({name: server for name in server.config.served_names()})

    def stream(request: EngineRequest, with_repair: bool):
        seen.append(request)
        return postprocessing.stream(request, with_repair)

    cards = [ServedModel("fake-rrr", "-", "fine-tuned for RRR", parent="fake-base"),
             ServedModel("fake-base", "-", "the base model")]
    return RRRService(stream, postprocessing.health, cards, default_model="fake-rrr")


def shown(section: str, text: str) -> str:
    """A section as the page shows it: the react as a stage direction, without its asterisks."""
    return text.strip("*").strip() if section == "react" else text


def test_the_page_is_served_and_left_out_of_the_api_schema():
    app = create_app()
    transport = httpx.ASGITransport(app=app)

    async def get():
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            return await client.get("/")

    response = asyncio.run(get())
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/html")
    assert 'id="conversation"' in response.text and '"/generate"' in response.text and '"/v1/models"' in response.text
    assert "/" not in app.openapi()["paths"]


@pytest.mark.slow
def test_the_page_streams_three_sections_over_two_turns_then_shows_a_stopped_server():
    seen: list[EngineRequest] = []
    server = BackgroundServer(create_app(fake_service(seen))).start()
    valid, invalid = validate(VALID_REPLY), validate(INVALID_REPLY)
    try:
        with browser_page() as page:
            page.goto(server.url + "/")
            assert wait_for(page, "s.models.length === 2")["models"] == ["fake-rrr", "fake-base"]

            body = send(page, "I have a big presentation tomorrow and I feel anxious.", model="fake-base")
            assert body["stream"] and body["model"] == "fake-base" and len(body["messages"]) == 1
            assert not body["guided"] and "heal" not in body
            during = wait_for(page, "s.state === 'streaming' && s.respond.length > 0")
            assert during["react"] and during["exchange_state"] == "streaming"
            assert valid.sections["respond"].startswith(during["respond"])
            inner = wait_for(page, "s.state === 'streaming' && s.reflect.length > 0")
            assert inner["folded"] and inner["respond"] == valid.sections["respond"]
            assert valid.sections["reflect"].startswith(inner["reflect"])
            first = wait_for(page, "s.exchanges === 1 && s.state !== 'streaming'")
            assert first["state"] == "done", first["error"]
            assert {s: first[s] for s in valid.sections} == {s: shown(s, t) for s, t in valid.sections.items()}
            assert first["folded"] and not first["outside"] and first["verdict"] == "valid RRR"
            assert "first token" in first["stats"] and "tok/s" in first["stats"] and "server" in first["stats"]

            page.click("summary")  # unfold the inner voice of the first reply
            body = send(page, "[invalid] And if it goes badly?", model="fake-rrr", guided=True)
            assert [m["role"] for m in body["messages"]] == ["user", "assistant", "user"] and body["guided"]
            second = wait_for(page, "s.exchanges === 2 && s.state !== 'streaming'")
            assert second["state"] == "done", second["error"]
            assert second["verdict"].startswith("invalid RRR") and second["reflect"] == ""
            assert all(e.code in second["verdict"] for e in invalid.errors)
            if os.environ.get(SCREENSHOT_ENV):
                Path(os.environ[SCREENSHOT_ENV]).parent.mkdir(parents=True, exist_ok=True)
                page.locator("main").screenshot(path=os.environ[SCREENSHOT_ENV])

            assert [(r.model, r.guided_regex is not None) for r in seen] == [("fake-base", False), ("fake-rrr", True)]
            assert [m["role"] for m in seen[1].messages] == ["user", "assistant", "user"]
            assert seen[1].messages[1]["content"] == VALID_REPLY  # the first reply, as generated

            server.stop()
            body = send(page, "Are you still there?", model="fake-rrr", heal="false")
            assert len(body["messages"]) == 5 and body["heal"] is False  # both exchanges, then the new turn
            failed = wait_for(page, "s.exchanges === 3 && s.state !== 'streaming'")
            assert failed["state"] == "error" and failed["exchange_state"] == "error"
            assert "Could not reach the server" in failed["error"]
            assert len(seen) == 2
    finally:
        if server.thread.is_alive():
            server.stop()


@pytest.mark.e2e
def test_the_page_streams_a_real_reply(serve_url):
    """Over the real stack: the page shows the reply the server streamed, section by section."""
    with browser_page() as page:
        page.goto(serve_url + "/")
        assert "rrr-tiny" in wait_for(page, "s.models.length > 0", timeout_ms=60_000)["models"]
        with page.expect_response(lambda r: r.url.endswith("/generate"), timeout=120_000) as answered:
            send(page, "I have a big presentation tomorrow and I feel anxious.", model="rrr-tiny", guided=True)
        done = wait_for(page, "s.exchanges === 1 && s.state !== 'streaming'", timeout_ms=180_000)
        assert done["state"] == "done", done["error"]
        lines = [json.loads(line) for line in answered.value.text().splitlines() if line.strip()]
        end = lines[-1]
        assert end["finished"] and len(lines) > 1
        validation = end["validation"]
        for section in ("react", "respond", "reflect"):
            if section in validation["sections"]:
                assert done[section] == shown(section, validation["sections"][section])
        assert done["verdict"].startswith("valid RRR" if validation["valid"] else "invalid RRR")
        assert "first token" in done["stats"] and "tok/s" in done["stats"]
