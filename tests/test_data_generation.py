"""Generation job: deterministic plan, example rotation, resume, retries and clear errors.

Runs against a fake OpenAI-compatible server on loopback, with the in-process executor (the Ray
fan-out itself is covered by tests/test_data_e2e.py)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from rrr_ray.data.generation import (
    ExampleRotation, GenerationConfig, GenerationError, check_endpoint, conversation_id, load_examples,
    plan_dialogue, read_output_state, run_generation,
)
from rrr_ray.data.records import read_dialogues
from tests._fake_openai import FakeOpenAI, closed_port
from tests.helpers import REPO, SEED_DIR

EXAMPLES = SEED_DIR / "curated_seed_dialogues"


def cfg(base_url: str, out, **kw) -> GenerationConfig:
    base = dict(base_url=base_url, api_key="k", num_dialogues=6, concurrency=3, output=out, progress=False,
                backoff_base=0.01, backoff_max=0.05, shard_size=2, min_turns=1, max_turns=2)
    return GenerationConfig(**{**base, **kw})


def test_ids_and_plans_are_deterministic():
    assert conversation_id(3, 7) == conversation_id(3, 7) != conversation_id(4, 7)
    rot = ExampleRotation(load_examples(EXAMPLES), seed=1)
    c = GenerationConfig(seed=1, base_url="http://x/v1")
    assert plan_dialogue(c, 5, rot) == plan_dialogue(c, 5, ExampleRotation(load_examples(EXAMPLES), seed=1))
    plans = [plan_dialogue(c, i, rot) for i in range(60)]
    assert {p.topic for p in plans} == set(c.topics)
    assert all(c.temperature - c.temperature_jitter <= p.temperature <= c.temperature + c.temperature_jitter for p in plans)
    assert len({p.temperature for p in plans}) > 10  # jittered


def test_example_rotation_uses_every_example_before_reusing():
    examples = load_examples(EXAMPLES)
    n = len(examples)
    rot = ExampleRotation(examples, seed=0)
    for cycle in range(3):
        picked = [rot.index_for(i) for i in range(cycle * n, (cycle + 1) * n)]
        assert sorted(picked) == list(range(n))
    assert [rot.index_for(i) for i in range(n)] != [rot.index_for(i) for i in range(n, 2 * n)]


def test_generates_validated_shards_and_resumes_without_duplicates(tmp_path):
    out = tmp_path / "gen"
    with FakeOpenAI() as api:
        s1 = run_generation(cfg(api.base_url, out, num_dialogues=5), use_ray=False)
        assert s1.generated == s1.total == 5 and s1.rejected == 0
        first = {r.conversation_id for r in read_dialogues(out)}
        assert first == {conversation_id(0, i) for i in range(5)}
        # rerunning without --resume is refused; with it, only the missing ones are made
        with pytest.raises(GenerationError, match="--resume"):
            run_generation(cfg(api.base_url, out, num_dialogues=9), use_ray=False)
        s2 = run_generation(cfg(api.base_url, out, num_dialogues=9, resume=True), use_ray=False)
        assert (s2.resumed_with, s2.generated, s2.total) == (5, 4, 9)
        with pytest.raises(GenerationError, match="seed"):
            run_generation(cfg(api.base_url, out, num_dialogues=9, resume=True, seed=1), use_ray=False)
    records = read_dialogues(out)  # the output folder is readable as a dataset folder
    ids = [r.conversation_id for r in records]
    assert len(ids) == len(set(ids)) == 9 and first <= set(ids)
    assert all(r.num_turns >= 1 and r.messages[0].role == "user" for r in records)
    state = read_output_state(out)
    assert not state.duplicates and len(state.accepted) == 9
    summary = json.loads((out / "_state" / "summary.json").read_text())
    assert summary["total"] == 9 and summary["dialogues_per_minute"] > 0


def test_resume_after_partial_write_keeps_everything(tmp_path):
    """A crash leaves complete shards (and maybe a temp file): resume keeps them and adds the rest."""
    out = tmp_path / "gen"
    with FakeOpenAI() as api:
        run_generation(cfg(api.base_url, out, num_dialogues=4), use_ray=False)
        kept = {r.conversation_id for r in read_dialogues(out)}
        (out / ".shard-00099.jsonl.abc.tmp").write_text('{"half": ')
        run_generation(cfg(api.base_url, out, num_dialogues=8, resume=True), use_ray=False)
    ids = [r.conversation_id for r in read_dialogues(out)]
    assert len(ids) == len(set(ids)) == 8 and kept <= set(ids)
    assert not list(out.glob("*.tmp"))


def test_invalid_replies_are_rejected_with_the_validators_codes(tmp_path):
    with FakeOpenAI(reply="<react>*waves*</react> hello there") as api:
        s = run_generation(cfg(api.base_url, tmp_path / "gen", num_dialogues=2, max_attempts=3, format_retries=1),
                           use_ray=False)
    assert s.total == 0 and s.rejected == 3
    assert set(s.rejected_reasons) >= {"missing_tag"}
    assert s.format_retries == 3
    rejected = [r for f in (tmp_path / "gen" / "_state").glob("rejected-*.json") for r in json.loads(f.read_text())]
    assert {r["conversation_id"] for r in rejected} == {conversation_id(0, i) for i in range(3)}


def test_repairable_replies_are_repaired(tmp_path):
    with FakeOpenAI(reply="<REACT>nods</REACT>\n<respond>Go on.</respond>\n<reflect>Listening.</reflect>") as api:
        s = run_generation(cfg(api.base_url, tmp_path / "gen", num_dialogues=2), use_ray=False)
    assert s.total == 2 and s.repaired >= 2
    for r in read_dialogues(tmp_path / "gen"):
        assert all(reply.startswith("<react>*nods*</react>") for reply in r.assistant_replies())


def test_server_errors_are_retried_with_backoff(tmp_path):
    with FakeOpenAI(fail_with=[503], fail_chat_with=[500, 429, 502]) as api:
        s = run_generation(cfg(api.base_url, tmp_path / "gen", num_dialogues=2, concurrency=1, max_turns=1),
                           use_ray=False)
        assert s.total == 2
        # the first failure hit the endpoint check (retried), the rest hit chat calls
        assert s.retries == 3 and api.chat_calls() == 2 + 3


def test_persistent_server_errors_reject_after_bounded_retries(tmp_path):
    with FakeOpenAI(fail_with=[500] * 100) as api:
        with pytest.raises(GenerationError, match="HTTP 500.*after 3 attempts"):
            check_endpoint(cfg(api.base_url, tmp_path / "gen", max_retries=2))
        assert len(api.requests) == 3


def test_bad_key_is_a_clear_error(tmp_path):
    with FakeOpenAI(require_key="right") as api:
        c = cfg(api.base_url, tmp_path / "gen", api_key="wrong")
        with pytest.raises(GenerationError, match="authentication failed .*401.*OPENAI_API_KEY"):
            run_generation(c, use_ray=False)
        assert len(api.requests) == 1  # not retried


def test_unknown_model_is_a_clear_error(tmp_path):
    with FakeOpenAI() as api:
        with pytest.raises(GenerationError, match="'nope' is not served.*rrr-smollm2"):
            check_endpoint(cfg(api.base_url, tmp_path / "gen", model="nope"))


def test_unreachable_endpoint_is_a_clear_error_from_the_cli(tmp_path):
    url = f"http://127.0.0.1:{closed_port()}/v1"
    proc = subprocess.run(
        [sys.executable, "-m", "jobs.generate_dialogues", "--base-url", url, "--num-dialogues", "1",
         "--output", str(tmp_path / "gen"), "--max-retries", "1"],
        cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1
    assert "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines()[-1].startswith(f"error: cannot reach {url}")


def test_openai_defaults():
    c = GenerationConfig(base_url="https://api.openai.com/v1")
    assert (c.resolved_model(), c.resolved_mode()) == ("gpt-4o-mini", "whole")
    c = GenerationConfig(base_url="http://127.0.0.1:8000/v1")
    assert (c.resolved_model(), c.resolved_mode()) == ("rrr-smollm2", "turns")  # what `make serve` serves


def test_env_variables_are_honoured(monkeypatch):
    monkeypatch.setenv("OPENAI_BASE_URL", "http://127.0.0.1:1/v1")
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
    c = GenerationConfig()
    assert c.base_url == "http://127.0.0.1:1/v1" and c.api_key == "sk-test"
    assert "sk-test" not in repr(c)


def test_whole_dialogue_mode_parses_turn_text(tmp_path):
    from rrr_ray.data.records import format_turns

    example = read_dialogues(EXAMPLES / "dialog_001.txt")[0]
    with FakeOpenAI(reply=format_turns(example.messages[:4])) as api:
        s = run_generation(cfg(api.base_url, tmp_path / "gen", num_dialogues=2, mode="whole"), use_ray=False)
    assert s.total == 2 and s.mode == "whole"
    assert all(r.num_turns == 2 for r in read_dialogues(tmp_path / "gen"))


def test_whole_dialogue_mode_rejects_unparseable_text(tmp_path):
    with FakeOpenAI(reply="Sure! Here is a dialogue about stress.") as api:
        s = run_generation(cfg(api.base_url, tmp_path / "gen", num_dialogues=1, mode="whole", max_attempts=1,
                               format_retries=0), use_ray=False)
    assert s.total == 0 and s.rejected_reasons == {"parse_error": 1}


def test_requests_carry_deterministic_sampling_seeds_and_settings(tmp_path):
    """Every request has a seed fixed by (seed, dialogue, turn, attempt): two runs, at different
    concurrency, ask for the same samples; top_p and top_k are sent (top_k not to OpenAI)."""
    runs = []
    for i, concurrency in enumerate((1, 3)):
        with FakeOpenAI() as api:
            run_generation(cfg(api.base_url, tmp_path / f"r{i}", num_dialogues=4, concurrency=concurrency),
                           use_ray=False)
            runs.append(api.bodies)
    seeds = [sorted(b["seed"] for b in bodies) for bodies in runs]
    assert seeds[0] == seeds[1] and len(set(seeds[0])) == len(seeds[0])
    assert all(b["top_p"] == 1.0 and b["top_k"] == 40 for b in runs[0])
    c = GenerationConfig(base_url="https://api.openai.com/v1", api_key="k")
    from rrr_ray.data.generation import DialogueGenerator

    assert "top_k" not in DialogueGenerator(c)._sampling


@pytest.mark.parametrize("make, cls, code, retryable, fatal", [
    ("AuthenticationError:401", "AuthError", "http_401", False, True),
    ("PermissionDeniedError:403", "AuthError", "http_403", False, True),
    ("NotFoundError:404", "ModelNotFound", "http_404", False, True),
    ("RateLimitError:429", "RateLimited", "http_429", True, False),
    ("InternalServerError:500", "ServerError", "http_500", True, False),
    ("APIStatusError:503", "ServerError", "http_503", True, False),
    ("APIStatusError:408", "TransientStatus", "http_408", True, False),
    ("BadRequestError:400", "RequestRejected", "http_400", False, False),
    ("UnprocessableEntityError:422", "RequestRejected", "http_422", False, False),
    ("APIConnectionError", "EndpointUnreachable", "unreachable", True, True),
    ("APITimeoutError", "EndpointUnreachable", "unreachable", True, True),
    ("ValueError", "BadReply", "bad_reply", False, True),
])
def test_client_errors_are_classified_by_type(make, cls, code, retryable, fatal):
    import httpx
    import openai

    from rrr_ray.data import generation

    request = httpx.Request("POST", "http://h/v1/chat/completions")
    name, _, status = make.partition(":")
    if status:
        exc = getattr(openai, name)("boom", response=httpx.Response(int(status), request=request), body=None)
    elif name == "ValueError":
        exc = ValueError("boom")
    elif name == "APITimeoutError":
        exc = openai.APITimeoutError(request=request)
    else:
        exc = openai.APIConnectionError(request=request)
    err = generation.endpoint_error(exc, "http://h/v1", "m")
    assert type(err) is getattr(generation, cls) and isinstance(err, generation.EndpointError)
    assert (err.code, err.retryable, err.fatal) == (code, retryable, fatal)
    assert err.status == (int(status) if status else None)


def test_error_messages_do_not_decide_the_reason_code():
    from rrr_ray.data.generation import EndpointUnreachable, ServerError

    err = ServerError("cannot reach anything from here", 502)
    assert (err.code, err.fatal) == ("http_502", False)
    err = EndpointUnreachable("HTTP 500 from somewhere")
    err.attempts = 3
    assert err.code == "unreachable" and err.fatal and err.describe() == "HTTP 500 from somewhere (after 3 attempts)"


def test_client_error_statuses_reject_the_dialogue_without_retries(tmp_path):
    with FakeOpenAI(fail_chat_with=[400]) as api:
        s = run_generation(cfg(api.base_url, tmp_path / "gen", num_dialogues=1, concurrency=1, max_turns=1,
                               max_attempts=1), use_ray=False)
        assert api.chat_calls() == 1
    assert s.total == 0 and s.retries == 0 and s.rejected_reasons == {"http_400": 1}


def test_persistent_chat_server_errors_reject_the_dialogue_after_bounded_retries(tmp_path):
    with FakeOpenAI(fail_chat_with=[503] * 3) as api:
        s = run_generation(cfg(api.base_url, tmp_path / "gen", num_dialogues=1, concurrency=1, max_turns=1,
                               max_attempts=1, max_retries=2), use_ray=False)
        assert api.chat_calls() == 3
    assert s.total == 0 and s.retries == 2 and s.rejected_reasons == {"http_503": 1}


def test_unexpected_status_from_the_endpoint_check_is_a_clear_error(tmp_path):
    with FakeOpenAI(fail_with=[400]) as api:
        with pytest.raises(GenerationError, match=r"^unexpected HTTP 400 from http://127\.0\.0\.1:\d+/v1/models$"):
            check_endpoint(cfg(api.base_url, tmp_path / "gen"))
        assert len(api.requests) == 1


def test_cli_options_come_from_the_config_fields():
    import argparse

    from rrr_ray.data.generation.cli import NOT_OPTIONS, add_generation_arguments, config_from_args

    p = argparse.ArgumentParser()
    add_generation_arguments(p)
    options = {a.dest: a for a in p._actions if a.dest in GenerationConfig.model_fields}
    assert set(options) == set(GenerationConfig.model_fields) - NOT_OPTIONS
    for name, action in options.items():
        assert GenerationConfig.model_fields[name].description.rstrip(".")[1:] in action.help, name
    args = p.parse_args(["--output", "o", "--no-repair", "--mode", "whole", "--num-dialogues", "3"])
    c = config_from_args(args)
    assert (c.repair, c.mode, c.num_dialogues, c.concurrency, c.progress) == (False, "whole", 3, 4, True)
