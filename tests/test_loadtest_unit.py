"""Load-test tooling: metric math, summary schema, stream parsing, the runner's edges, the seed server.

The seed-server and Locust-runner tests start a model server (``e2e``); the rest take milliseconds.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from loadtest import metrics as M
from loadtest.compare.report import check_targets, median_round, ratios, table
from loadtest.compare.systems import seed_server
from loadtest.run import check_host, locust_counts, parse_duration
from tests.helpers import REPO, seed_replies



def rec(ttft=0.1, e2el=1.1, n=11, start=0.0, ok=True, itl=None, endpoint="/generate") -> M.RequestRecord:
    return M.RequestRecord(endpoint=endpoint, success=ok, start=start, e2el=e2el, ttft=ttft,
                           itl=itl if itl is not None else [0.1] * (n - 1), output_tokens=n, input_tokens=5,
                           error="" if ok else "boom")


# --- metric math -------------------------------------------------------------------------------

def test_percentile_matches_numpy_linear():
    np = pytest.importorskip("numpy")
    rng = random.Random(0)
    for n in (1, 2, 3, 10, 101):
        xs = [rng.random() * 100 for _ in range(n)]
        for q in (0, 1, 50, 90, 99, 100):
            assert M.percentile(xs, q) == pytest.approx(float(np.percentile(xs, q)))
    assert M.percentile([], 50) == 0.0


def test_stats_ms_units_and_empty():
    s = M.stats_ms([0.010, 0.020, 0.030])
    assert s["mean"] == pytest.approx(20.0) and s["median"] == pytest.approx(20.0)
    assert s["p99"] == pytest.approx(29.8) and s["min"] == pytest.approx(10.0) and s["count"] == 3
    assert s["std"] == pytest.approx((200 / 3) ** 0.5)
    empty = M.stats_ms([])
    assert all(empty[k] == 0.0 for k in M.STAT_KEYS)


def test_ttft_itl_tpot_from_timestamps():
    ttft, itl = M.ttft_and_itl(10.0, [10.5, 10.6, 10.8])
    assert ttft == pytest.approx(0.5) and itl == pytest.approx([0.1, 0.2])
    assert M.ttft_and_itl(10.0, []) == (None, [])
    # vLLM's TPOT: (e2el - ttft) / (tokens - 1), whatever the chunking
    assert M.tpot(1.5, 0.5, 11) == pytest.approx(0.1)
    assert M.tpot(1.5, 0.5, 1) is None and M.tpot(1.5, None, 5) is None


def test_stream_tracker_counts_chunks_and_prefers_reported_tokens():
    tr = M.StreamTracker("/generate")
    t0 = tr.t0
    for dt in (0.2, 0.25, 0.4):
        tr.chunk(now=t0 + dt)
    r = tr.finish(output_tokens=6, input_tokens=3)  # 6 tokens in 3 chunks (batched hops)
    assert r.success and r.chunks == 3 and r.output_tokens == 6 and r.input_tokens == 3
    assert r.ttft == pytest.approx(0.2) and r.itl == pytest.approx([0.05, 0.15])
    assert r.e2el >= 0 and r.tpot == pytest.approx((r.e2el - 0.2) / 5)
    assert M.StreamTracker("/x").finish().success is False  # nothing streamed
    tr2 = M.StreamTracker("/x")
    tr2.chunk()
    assert tr2.finish().output_tokens == 1  # fallback: text-carrying chunks
    f = tr2.fail("HTTP 500: nope")
    assert not f.success and f.error == "HTTP 500: nope"


def test_summarize_matches_hand_computation():
    recs = [rec(ttft=0.1, e2el=1.1, n=11, start=0.0), rec(ttft=0.3, e2el=2.3, n=21, start=1.0),
            rec(ok=False, start=0.5)]
    s = M.summarize(recs)
    assert s["completed"] == 2 and s["failed"] == 1 and s["errors"] == {"boom": 1}
    assert s["duration_s"] == pytest.approx(3.3)  # first start 0.0 .. last end 1.0 + 2.3
    assert s["total_output_tokens"] == 32 and s["total_input_tokens"] == 10
    assert s["output_throughput"] == pytest.approx(32 / 3.3)
    assert s["request_throughput"] == pytest.approx(2 / 3.3)
    assert s["total_token_throughput"] == pytest.approx(42 / 3.3)
    assert s["ttft_ms"]["p50"] == pytest.approx(200.0)
    assert s["tpot_ms"]["mean"] == pytest.approx(100.0)  # both requests: 0.1 s per token after the first
    assert s["itl_ms"]["count"] == 30 and s["itl_ms"]["p99"] == pytest.approx(100.0)
    assert s["e2el_ms"]["max"] == pytest.approx(2300.0)
    assert s["tokens_per_s_per_request"]["max"] == pytest.approx(10.0, rel=1e-3)
    assert M.summarize(recs, duration_s=10.0)["output_throughput"] == pytest.approx(3.2)
    assert M.check_summary(s) == []
    json.dumps(s)  # serialisable


def test_summary_schema_with_no_successes_is_well_formed():
    s = M.summarize([rec(ok=False)])
    assert s["completed"] == 0 and s["output_throughput"] == 0.0 and M.check_summary(s) == []
    assert M.check_summary({"completed": 1}) != []


def test_summarize_by_endpoint_shares_the_window():
    recs = [rec(start=0.0, e2el=1.0, endpoint="/generate"), rec(start=1.0, e2el=1.0, endpoint="/v1/chat/completions")]
    by = M.summarize_by_endpoint(recs)
    assert set(by) == {"/generate", "/v1/chat/completions"}
    assert all(v["duration_s"] == pytest.approx(2.0) for v in by.values())


def test_records_round_trip(tmp_path):
    recs = [rec(), rec(ok=False)]
    M.append_records(tmp_path / "records-1.jsonl", recs[:1])
    M.append_records(tmp_path / "records-2.jsonl", recs[1:])
    back = M.read_records(tmp_path)
    assert [r.success for r in back] == [True, False] and back[0].itl == recs[0].itl


def test_stream_line_parsers():
    assert M.parse_ndjson_line(b'{"token": "hi", "finished": false}\n') == {"token": "hi", "finished": False}
    assert M.parse_ndjson_line("  ") is None
    assert M.parse_sse_line("data: [DONE]") is M.SSE_DONE
    assert M.parse_sse_line(": keep-alive") is None and M.parse_sse_line("") is None
    chunk = M.parse_sse_line('data: {"choices": [{"delta": {"content": "x"}}]}')
    assert M.sse_delta_text(chunk) == "x"
    assert M.sse_delta_text({"choices": [], "usage": {"completion_tokens": 3}}) == ""
    assert M.sse_delta_text({"choices": [{"delta": {"role": "assistant"}}]}) == ""


# --- runner and report edges -----------------------------------------------------------------

def test_parse_duration():
    assert parse_duration("60s") == 60 and parse_duration("2m") == 120 and parse_duration("1h30m") == 5400
    assert parse_duration("45") == 45
    with pytest.raises(Exception):
        parse_duration("soon")


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_runner_exits_2_with_a_clear_message_when_the_host_is_unreachable(tmp_path):
    url = f"http://127.0.0.1:{_closed_port()}"
    assert "refused" in (check_host(url, timeout=2) or "").lower()
    proc = subprocess.run([sys.executable, "-m", "loadtest.run", "--host", url, "--users", "1", "--duration", "2s",
                           "--output", str(tmp_path)], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    assert "cannot reach" in proc.stderr and url in proc.stderr
    assert not (tmp_path / "summary.json").exists()


def test_locust_counts_reads_the_stats_csv(tmp_path):
    csv_text = ("Type,Name,Request Count,Failure Count,Median Response Time,90%,99%\n"
                "POST,/generate [stream],10,1,900,1000,1200\nTTFT,/generate,9,0,50,60,70\n,Aggregated,19,1,N/A,,\n")
    (tmp_path / "x_stats.csv").write_text(csv_text)
    rows = locust_counts(tmp_path / "x_stats.csv")
    assert rows["POST /generate [stream]"] == {"requests": 10, "failures": 1, "median": 900.0, "p90": 1000.0,
                                               "p99": 1200.0}
    assert rows["Aggregated"]["median"] is None


def test_compare_ratios_and_targets():
    def lv(tput, ttft):
        s = M.summarize([rec()])
        s["output_throughput"], s["ttft_ms"]["p50"] = tput, ttft
        return s

    systems = {"engine": {"levels": {"1": lv(80, 10.0), "16": lv(800, 30.0)}},
               "serve": {"levels": {"1": lv(75, 20.0), "16": lv(760, 40.0)}},
               "seed": {"levels": {"1": lv(30, 200.0), "16": lv(100, 900.0)}}}
    r = ratios(systems, [1, 16])
    assert r["throughput_ratio_vs_engine_c16"] == pytest.approx(0.95)
    assert r["ttft_overhead_ms_p50_c1"] == pytest.approx(10.0)
    assert r["throughput_ratio_vs_seed_c16"] == pytest.approx(7.6)
    assert r["seed_ratio_vs_engine_c16"] == pytest.approx(0.125)
    assert r["ttft_ratio_vs_engine_c16"] == pytest.approx(40.0 / 30.0)
    t = check_targets(r)
    assert t["throughput_ratio_vs_engine_c64"] == {"target": ">= 0.95", "value": None, "ok": None}  # not measured
    assert all(v["ok"] for k, v in t.items() if k != "throughput_ratio_vs_engine_c64")
    systems["serve"]["levels"]["16"]["ttft_ms"]["p50"] = 46.0  # 1.53x the engine's
    assert check_targets(ratios(systems, [1, 16]))["ttft_ratio_vs_engine_c16"]["ok"] is False
    assert ratios({"engine": systems["engine"]}, [1, 16])["throughput_ratio_vs_engine_c16"] is None
    assert "engine" in table(systems, [1, 16])


def test_compare_keeps_the_median_round_and_never_rounds_up():
    def lv(tput):
        s = M.summarize([rec()])
        s["output_throughput"] = tput
        return s

    def round_(a, b):
        return {"engine": {"levels": {"16": lv(a)}}, "serve": {"levels": {"16": lv(b)}}}

    rounds = [round_(1000, 900), round_(1000, 500), round_(1000, 700)]  # 0.9, 0.5, 0.7
    assert median_round(rounds, [16]) == 2
    assert median_round(rounds[:2], [16]) == 1  # two rounds: the lower one
    assert median_round([{"engine": {"levels": {"16": lv(1000)}}}], [16]) == 0  # no ratio at all


def test_compare_gives_the_graph_either_shape_of_the_same_config():
    from loadtest.compare.main import main
    from rrr_ray.serving.derived import graph_args
    from rrr_ray.serving.config import AppArgs

    own = graph_args("models/rrr-tiny")
    assert [m["name"] for m in own["models"]] == ["rrr-tiny"] and own["default_model"] == "rrr-tiny"
    for placement in ("deployment", "ingress"):
        app = AppArgs.model_validate(graph_args("models/rrr-tiny", None, placement))
        assert app.postprocessor.placement == placement and app.models[0].placement == placement
        assert app.models[0].max_num_seqs == own["models"][0]["max_num_seqs"]  # the rest as configured
    assert main(["--placements", "deployment,everywhere"]) == 2
    assert main(["--placements", "ingress", "--serve-url", "http://127.0.0.1:1"]) == 2


def test_multiturn_bench_serves_the_model_with_and_without_prefix_caching_and_reports_the_last_turn():
    from loadtest.investigations.bench_multiturn import graph_with_and_without_cache, report
    from rrr_ray.serving.config import AppArgs

    app, on, off = graph_with_and_without_cache("models/rrr-tiny", None)
    models = AppArgs.model_validate(app).models
    assert [m.name for m in models] == [on, off] == ["rrr-tiny", "rrr-tiny-no-prefix-cache"]
    assert models[1].engine_kwargs["enable_prefix_caching"] is False and "enable_prefix_caching" not in models[0].engine_kwargs

    def turn(ttft_ms, cached, text="x"):
        return {"text": text, "ttft_s": ttft_ms / 1000, "engine_ttft_s": ttft_ms / 2000, "input_tokens": 400,
                "cached_tokens": cached}

    results = {on: [[turn(30, 0), turn(20, 256)], [turn(32, 0), turn(24, 256)]],
               off: [[turn(30, 0), turn(60, 0)], [turn(30, 0), turn(64, 0, text="y")]]}
    r = report(results, on, off, 2)
    assert r["last_turn_ttft_ms_p50"] == {"prefix_caching": 22.0, "no_prefix_caching": 62.0}
    assert r["last_turn_ttft_ratio"] == pytest.approx(22 / 62) and r["last_turn_cached_fraction"] == 0.64
    assert r["replies_differing"] == 1 and r["per_turn"][on][1]["engine_ttft_ms_p50"] == pytest.approx(11.0)


def test_generation_bench_reports_the_median_round_of_its_speed_ups():
    from loadtest.investigations.bench_generation import median_round as gen_median, speedups

    def round_(c1, c8):
        return [{"concurrency": 1, "dialogues_per_minute": c1}, {"concurrency": 8, "dialogues_per_minute": c8}]

    assert speedups(round_(50.0, 200.0)) == {"1": 1.0, "8": 4.0}
    assert speedups(round_(0.0, 200.0))["8"] is None
    rounds = [speedups(round_(50, 250)), speedups(round_(50, 150)), speedups(round_(50, 200))]  # 5x, 3x, 4x
    assert gen_median(rounds) == 2
    assert gen_median(rounds[:2]) == 1  # two rounds: the lower one


# --- against a real model server ---------------------------------------------------------------

@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    """The embedded model when it is there, else a random one of the same shape (same tokenizer kind)."""
    embedded = REPO / "models" / "rrr-tiny"
    if (embedded / "config.json").exists():
        return embedded
    from rrr_ray.training.modeling import TinyModelConfig, build_mistral, save_model_folder
    from rrr_ray.training.tokenizer import train_tokenizer

    out = tmp_path_factory.mktemp("random-tiny")
    tok = train_tokenizer(seed_replies(), vocab_size=1024)
    cfg = TinyModelConfig(num_hidden_layers=2, hidden_size=128, intermediate_size=256)
    save_model_folder(build_mistral(cfg, tok), tok, out)
    return out


@pytest.fixture(scope="session")
def seed_url(tiny_model_dir, tmp_path_factory):
    log = tmp_path_factory.mktemp("seed") / "seed_server.log"
    with seed_server(str(tiny_model_dir), log, env=dict(os.environ)) as (url, proc):
        deadline = time.time() + 120
        while check_host(url, timeout=2) is not None:
            if proc.poll() is not None or time.time() > deadline:
                pytest.fail(f"seed server did not start (exit {proc.poll()}); log {log}")
            time.sleep(0.5)
        yield url


@pytest.mark.e2e
def test_seed_server_streams_ndjson_lines(seed_url):
    import httpx

    body = {"messages": [{"role": "user", "content": "Hi, how are you?"}], "max_new_tokens": 12,
            "temperature": 0, "stream": True, "ignore_eos": True}
    with httpx.stream("POST", f"{seed_url}/generate", json=body, timeout=60) as r:
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("application/x-ndjson")
        lines = [json.loads(ln) for ln in r.iter_lines() if ln.strip()]
    *tokens, last = lines
    assert tokens and all(t["finished"] is False and isinstance(t["token"], str) for t in tokens)
    assert last["finished"] is True and last["token"] == ""
    meta = last["metadata"]
    assert meta["output_tokens"] == 12  # ignore_eos: exactly max_new_tokens
    assert meta["input_tokens"] > 0 and meta["time_to_first_token_seconds"] > 0
    assert set(meta) >= {"input_tokens", "output_tokens", "inference_time_seconds", "tokens_per_second",
                         "time_to_first_token_seconds"}


@pytest.mark.e2e
def test_http_client_measures_the_seed_server(seed_url):
    from loadtest.client import closed_loop, generate_payload, http_client, stream_generate

    async def go():
        async with http_client(2) as c:
            return await closed_loop(lambda i: stream_generate(
                c, f"{seed_url}/generate", generate_payload("Hello!", 8, ignore_eos=True), users=2), 2, 4)

    records, wall = asyncio.run(go())
    s = M.summarize(records, wall)
    assert s["completed"] == 4 and s["failed"] == 0 and s["total_output_tokens"] == 32
    assert M.check_summary(s) == []


@pytest.mark.e2e
def test_locust_runner_against_the_seed_server(seed_url, tmp_path):
    """The whole runner (locust subprocess, custom events, records, summary) on /generate only."""
    proc = subprocess.run([sys.executable, "-m", "loadtest.run", "--host", seed_url, "--users", "2",
                           "--duration", "6s", "--mix", "generate:1", "--max-tokens", "8", "--output", str(tmp_path)],
                          cwd=REPO, env=dict(os.environ), capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    summary = json.loads((tmp_path / "summary.json").read_text())
    (level,) = summary["levels"]
    assert summary["failures_total"] == 0 and level["users"] == 2
    assert level["overall"]["completed"] > 0 and M.check_summary(level["overall"]) == []
    assert set(level["by_endpoint"]) == {"/generate"}
    for kind in ("TTFT", "TPOT", "E2EL", "TOKENS_PER_S"):
        assert level["locust_stats"][f"{kind} /generate"]["requests"] > 0
    assert (tmp_path / "u2" / "locust.html").exists() and (tmp_path / "u2" / "locust_stats.csv").exists()


def test_stream_reader_turns_ndjson_and_sse_lines_into_records():
    ndjson = M.StreamReader(M.StreamTracker("/generate", 1), "ndjson")
    lines = ['{"token": "<", "section": "react", "finished": false}', "",
             '{"token": "a", "section": "react", "finished": false}',
             '{"token": "", "finished": true, "metadata": {"output_tokens": 2, "input_tokens": 5}}']
    assert [ndjson.feed(line) for line in lines] == [False, False, False, True]
    rec = ndjson.result()
    assert rec.success and rec.output_tokens == 2 and rec.input_tokens == 5
    assert rec.server_ttft is None and M.summarize([rec]).get("ttft_breakdown_ms") is None  # none reported

    timed = M.StreamReader(M.StreamTracker("/generate", 1), "ndjson")
    timed.feed('{"token": "<", "finished": false}')
    timed.feed('{"token": "", "finished": true, "metadata": {"output_tokens": 1, "input_tokens": 5, '
               '"time_to_first_token_seconds": 0.0, "engine_time_to_first_token_seconds": 0.0}}')
    rec = timed.result()
    rec.ttft, rec.server_ttft, rec.engine_ttft = 0.030, 0.024, 0.016  # client, ingress, model stage
    split = M.summarize([rec])["ttft_breakdown_ms"]
    assert {k: round(v["p50"], 6) for k, v in split.items()} == {"http": 6.0, "graph": 8.0, "model": 16.0}

    sse = M.StreamReader(M.StreamTracker("/v1/chat/completions", 1), "sse")
    for line in ['data: {"choices": [{"delta": {"content": "x"}}]}',
                 'data: {"choices": [{"delta": {}, "finish_reason": "stop"}], "usage": {"completion_tokens": 1, "prompt_tokens": 3}}']:
        assert sse.feed(line) is False
    assert sse.feed("data: [DONE]") is True
    assert sse.result().success

    broken = M.StreamReader(M.StreamTracker("/generate", 1), "ndjson")
    assert broken.feed('{"token": "", "finished": true, "error": "engine died"}') is True
    assert not broken.result().success and "engine died" in broken.result().error
    cut = M.StreamReader(M.StreamTracker("/v1/chat/completions", 1), "sse")
    cut.feed('data: {"choices": [{"delta": {"content": "x"}}]}')
    assert "[DONE]" in cut.result().error


FAKE_ENGINE_BENCH = r"""
import json, sys
from loadtest.engine_bench import REPLY
print("engine log line", flush=True)
if sys.argv[1] == "exit":
    sys.exit(3)
print(REPLY + json.dumps({"startup_s": 1.5}), flush=True)
for line in sys.stdin:
    cmd = json.loads(line)
    if sys.argv[1] == "silent":
        continue
    records = [{"endpoint": "engine", "success": True, "start": 100.0 + i, "e2el": 0.5, "ttft": 0.01,
                "itl": [0.01] * 3, "output_tokens": 4, "users": cmd["concurrency"]} for i in range(cmd["requests"])]
    print("a log line between replies", flush=True)
    print(REPLY + json.dumps({"wall_s": 2.0, "records": records, "warmup": cmd["warmup"]}), flush=True)
"""


def _engine_process(tmp_path, mode, timeout=30.0):
    from loadtest.compare.systems import EngineProcess

    script = tmp_path / "fake_bench.py"
    script.write_text(FAKE_ENGINE_BENCH)
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return EngineProcess([sys.executable, str(script), mode], env, tmp_path / "engine.log", timeout)


def test_compare_drives_the_engine_benchmark_level_by_level(tmp_path):
    engine = _engine_process(tmp_path, "ok")
    try:
        assert engine.startup_s == 1.5
        for c, n in [(1, 3), (16, 32)]:
            s = engine.level(c, n, warmup=c)
            assert s["completed"] == n and s["total_output_tokens"] == 4 * n
            assert s["output_throughput"] == pytest.approx(4 * n / 2.0)
    finally:
        engine.close()
    log = (tmp_path / "engine.log").read_text()
    assert "engine log line" in log and log.count("a log line between replies") == 2 and "@@rrr" not in log


def test_compare_reports_an_engine_benchmark_that_dies_or_hangs(tmp_path):
    with pytest.raises(RuntimeError, match=r"exited \(3\).*engine.log"):
        _engine_process(tmp_path, "exit")
    engine = _engine_process(tmp_path, "silent", timeout=1.0)
    try:
        with pytest.raises(RuntimeError, match="silent for 1 s"):
            engine.level(1, 2, warmup=0)
    finally:
        engine.close()


def test_compare_measures_steady_state_levels_and_keeps_the_seed_server_short():
    from loadtest.compare.measure import requests_for, seed_requests_for

    assert [requests_for(c, None) for c in (1, 4, 16)] == [96, 160, 640]
    assert requests_for(16, 32) == 32
    assert [seed_requests_for(c, None) for c in (1, 16)] == [96, 96] and seed_requests_for(16, 32) == 32


def test_cpu_share_names_the_process_that_burns_cpu_and_refuses_a_bad_window(tmp_path):
    from loadtest.investigations.cpu_share import cpu_share

    busy = subprocess.Popen([sys.executable, "-c", "import time\nend = time.time() + 5\nwhile time.time() < end: pass"])
    try:
        report = cpu_share(1.0)
    finally:
        busy.kill()
        busy.wait()
    row = next(r for r in report["processes"] if r["pid"] == busy.pid)
    assert row["percent_of_one_core"] > 30 and "while time.time()" in row["command"]
    assert row["nice"] is not None and row["cpus"]
    assert report["total_percent_of_one_core"] >= row["percent_of_one_core"]
    bad = subprocess.run([sys.executable, "-m", "loadtest.investigations.cpu_share", "--seconds", "0"], cwd=REPO,
                         capture_output=True, text=True)
    assert bad.returncode == 2 and "--seconds must be positive" in bad.stderr


def test_bench_grammar_walks_a_reply_under_both_regexes_and_refuses_a_folder_without_a_tokenizer(tmp_path):
    from loadtest.investigations.bench_grammar import main

    assert main(["--model", str(REPO / "models" / "rrr-tiny"), "--repeats", "1", "--output", str(tmp_path)]) == 0
    report = json.loads((tmp_path / "bench_grammar.json").read_text())
    assert set(report["results"]) == {"capped", "uncapped"} and report["reply_tokens"] > 50
    for row in report["results"].values():
        assert row["compile_ms"] > 0 and row["fill_mean_us"] > 0 and row["accept_mean_us"] > 0
    bad = subprocess.run([sys.executable, "-m", "loadtest.investigations.bench_grammar", "--model", str(tmp_path), "--output",
                          str(tmp_path)], cwd=REPO, capture_output=True, text=True)
    assert bad.returncode == 2 and "no tokenizer here" in bad.stderr


# -- graph variants and the hop benchmark -----------------------------------------------------------

def test_a_variant_is_a_name_and_a_json_object_of_args_and_env():
    from loadtest.investigations.bench_variants import merged, parse_variant

    assert parse_variant('b50={"args": {"max_hop_messages_per_s": 50}}') == \
        ("b50", {"args": {"max_hop_messages_per_s": 50}})
    assert parse_variant("base={}") == ("base", {})
    for bad in ("no-equals", "two words={}", "x={not json", 'x=[1]', 'x={"engine": {}}', 'x={"args": 3}'):
        with pytest.raises(ValueError, match="--variant"):
            parse_variant(bad)
    app = {"postprocessor": {"placement": "deployment", "num_cpus": 0.1}, "stream_interval_ms": 20}
    assert merged(app, {"postprocessor": {"access_log": False}, "stream_interval_ms": 5}) == \
        {"postprocessor": {"placement": "deployment", "num_cpus": 0.1, "access_log": False}, "stream_interval_ms": 5}
    assert app["postprocessor"] == {"placement": "deployment", "num_cpus": 0.1}  # the config's own is untouched


def test_every_variant_is_an_application_of_one_serve_config():
    from argparse import Namespace

    from loadtest.investigations.bench_variants import serve_config

    args = Namespace(model="models/rrr-tiny", config=None, placement="deployment")
    config = serve_config({"a": {}, "b": {"args": {"max_hop_messages_per_s": 50}, "env": {"X": 1}}}, args, 8123)
    a, b = config["applications"]
    assert (a["name"], a["route_prefix"], b["route_prefix"]) == ("a", "/a", "/b")
    assert config["http_options"] == {"host": "127.0.0.1", "port": 8123}
    assert a["args"]["postprocessor"]["placement"] == "deployment" == a["args"]["models"][0]["placement"]
    assert (a["args"]["max_hop_messages_per_s"], b["args"]["max_hop_messages_per_s"]) == (100, 50)
    assert b["runtime_env"]["env_vars"]["X"] == "1" and "X" not in a["runtime_env"]["env_vars"]
    assert a["runtime_env"]["env_vars"]["VLLM_CPU_KVCACHE_SPACE"]  # the config's own environment


def test_the_hop_benchmark_fits_a_cost_per_call_and_per_message():
    from loadtest.investigations.bench_hop import fit

    levels = [{"items": n, "ms": 0.9 + 0.05 * n} for n in (1, 2, 5, 20)]
    assert fit(levels, "ms") == {"ms_per_call": 0.9, "ms_per_message": 0.05}
    assert fit(levels[:1], "ms") == {"ms_per_call": 0.95, "ms_per_message": 0.0}
