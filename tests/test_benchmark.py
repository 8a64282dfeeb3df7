"""The benchmark (``jobs.benchmark``): statistics, the judge's strict format, the local metric
modules, WordNet from local files, and whole runs: against a fake OpenAI server (fast, judge
included), and against the real served embedded models (e2e)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from rrr_ray.evaluation.benchmark import OUTPUT_FILES, PLOTS
from rrr_ray.evaluation.stats import bootstrap_difference, bootstrap_mean
from tests._fake_openai import VALID_REPLY, FakeOpenAI
from tests.helpers import REPO

JUDGE_REPLY = "REASONING: 7\nRESPONSE: 6\nREFLECTION: 5"


# -- statistics ------------------------------------------------------------------------------------

def test_bootstrap_mean_interval_contains_the_mean_and_skips_unmeasured():
    groups = {f"p{i}": [float(i % 5)] for i in range(50)}
    groups["unmeasured"] = [None, None]
    est = bootstrap_mean(groups, resamples=1000, seed=1)
    assert est.mean == pytest.approx(2.0)
    assert est.low < est.mean < est.high
    assert (est.n, est.units) == (50, 50)
    assert bootstrap_mean({"a": [None]}).mean is None  # nothing measured: no figure, never 0


def test_bootstrap_constant_values_have_a_zero_width_interval():
    est = bootstrap_mean({f"p{i}": [0.5, 0.5] for i in range(10)}, resamples=200)
    assert (est.mean, est.low, est.high) == (0.5, 0.5, 0.5)


def test_paired_difference_uses_only_shared_prompts():
    a = {f"p{i}": [1.0] for i in range(20)}
    b = {f"p{i}": [0.0] for i in range(10)}
    d = bootstrap_difference(a, b, resamples=200)
    assert (d.mean, d.low, d.high, d.units) == (1.0, 1.0, 1.0, 10)
    same = bootstrap_difference(a, a, resamples=200)
    assert same.mean == 0.0 and same.low == 0.0 and same.high == 0.0


# -- judge and prompts ---------------------------------------------------------------------------

def test_judge_scores_are_parsed_from_the_strict_format_only():
    from rrr_ray.evaluation.judge import parse_scores

    assert parse_scores(" REASONING: 7\nRESPONSE: 10\n\nREFLECTION: 0 ") == {
        "reasoning": 7, "response": 10, "reflection": 0}
    for bad in ("REASONING: 7\nRESPONSE: 6", "REASONING: 7\nRESPONSE: 6\nREFLECTION: 11",
                "Sure! REASONING: 7\nRESPONSE: 6\nREFLECTION: 5", "REASONING: 7\nREASONING: 6\nREFLECTION: 5",
                "REASONING: 7/10\nRESPONSE: 6\nREFLECTION: 5", ""):
        with pytest.raises(ValueError):
            parse_scores(bad)


def test_prompts_file_errors_are_one_line(tmp_path):
    from rrr_ray.data.prompts import PromptsFileError, load_prompts

    bad = tmp_path / "p.jsonl"
    bad.write_text('{"id": "a", "prompt": "hi"}\n{"id": "a", "prompt": "again"}\n')
    with pytest.raises(PromptsFileError, match="appears more than once"):
        load_prompts(bad)
    bad.write_text('{"id": "a", "prompt": "hi"}\nnot json\n')
    with pytest.raises(PromptsFileError, match="line 2: not JSON"):
        load_prompts(bad)
    bad.write_text('{"id": "a", "prompt": "hi", "reference": "<react>*x*</react>"}\n')
    assert load_prompts(bad)[0]["reference"] == "<react>*x*</react>"


def test_eval_prompts_are_ten_per_category():
    from rrr_ray.data.prompts import CATEGORIES, load_prompts

    prompts = load_prompts(REPO / "data/eval_prompts.jsonl")
    assert len(prompts) == 50
    assert {c: sum(p["category"] == c for p in prompts) for c in CATEGORIES} == {c: 10 for c in CATEGORIES}


def test_round_robin_prompt_pick_covers_categories():
    from rrr_ray.data.prompts import load_prompts
    from rrr_ray.evaluation.benchmark import pick_prompts

    picked = pick_prompts(load_prompts(REPO / "data/eval_prompts.jsonl"), 5)
    assert len({p["category"] for p in picked}) == 5


# -- metrics, offline ----------------------------------------------------------------------------

def test_metric_modules_load_offline_and_score_each_pair(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_EVALUATE_OFFLINE", "1")
    from rrr_ray.evaluation.embeddings import BERTSCORE_LAYER, minilm_path
    from rrr_ray.evaluation.scoring import text_metrics
    from rrr_ray.evaluation.wordnet import wordnet_reader

    preds = ["That sounds hard. What happened?", "", "Completely unrelated words about trains."]
    refs = ["That must be hard. Tell me what happened.", "Hello there.", "That must be hard. Tell me what happened."]
    scores = text_metrics(preds, refs, wordnet=wordnet_reader(), bertscore_model=minilm_path(),
                          bertscore_layer=BERTSCORE_LAYER)
    for name, values in scores.items():
        assert len(values) == 3 and all(v is not None and not math.isnan(v) for v in values), name
        assert values[1] == 0.0, name  # an empty reply scores 0
        assert values[0] > values[2], name  # the close paraphrase beats the unrelated reply
    assert scores["rouge1"][0] == pytest.approx(0.615, abs=0.01)


def test_wordnet_is_read_from_debian_files():
    from rrr_ray.evaluation.wordnet import LEXNAMES, wordnet_reader

    wn = wordnet_reader()
    assert len(LEXNAMES) == 45 and wn.get_version() == "3.0"
    assert "sad" in {lemma.name() for s in wn.synsets("unhappy") for lemma in s.lemmas()} | {"sad"}
    assert wn.synsets("dog")[0].name() == "dog.n.01"


def test_missing_wordnet_is_a_clear_error(tmp_path):
    from rrr_ray.evaluation.wordnet import WordNetMissing, wordnet_reader

    with pytest.raises(WordNetMissing, match="apt-get install wordnet-base"):
        wordnet_reader.__wrapped__(tmp_path)


# -- whole runs against a fake OpenAI server --------------------------------------------------------

def _fake_reply(body: dict) -> str:
    content = body["messages"][-1]["content"]
    if content.startswith("You are grading"):
        return JUDGE_REPLY if "unparsable" not in content else "I would say seven."
    if body["model"] == "base":
        return "Sure, here is some advice: take a break and breathe."
    return VALID_REPLY


def _run(argv: list[str]) -> int:
    from jobs.benchmark import main

    return main(argv + ["--no-progress", "--resamples", "200"])


def _check_outputs(out: Path, systems: list[str]) -> dict:
    for name in OUTPUT_FILES + PLOTS:
        assert (out / name).is_file() and (out / name).stat().st_size > 0, name
    for name in PLOTS:
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    summary = json.loads((out / "summary.json").read_text())
    assert summary["systems"] == systems
    return summary


def test_fake_run_writes_every_output_resumes_and_rescores(tmp_path):
    out = tmp_path / "bench"
    with FakeOpenAI(reply=_fake_reply, models=["tuned", "base"]) as fake:
        argv = ["--endpoint", fake.base_url, "--models", "tuned,base", "--output", str(out), "--num-prompts", "5",
                "--samples", "2", "--guided", "both", "--heal", "--judge-url", fake.base_url, "--judge-model", "judge"]
        assert _run(argv) == 0
        first_calls = fake.chat_calls()
        assert first_calls == 2 * 3 * 5 * 2 + 2 * 5  # 60 replies; 10 distinct replies to judge (cached by text)
        summary = _check_outputs(out, ["tuned", "tuned+guided", "tuned+healed", "base", "base+guided", "base+healed"])
        assert _run(argv) == 0  # the rerun sends nothing: every reply and judgment is cached
        assert fake.chat_calls() == first_calls
        assert json.loads((out / "summary.json").read_text())["requests"]["sent_this_run"] == 0
        guided_bodies = [b for b in fake.bodies if b.get("guided")]
        assert len(guided_bodies) == 20 and all("regex" in b["structured_outputs"] for b in guided_bodies)
        assert sorted(b["heal"] for b in fake.bodies[:first_calls] if "heal" in b) == [False] * 20 + [True] * 20
        assert {b["seed"] for b in fake.bodies if b["model"] == "tuned"} == {0, 1}
    results = summary["results"]
    assert results["tuned"]["metrics"]["compliance"]["mean"] == 1.0
    assert results["base"]["metrics"]["compliance"]["mean"] == 0.0
    assert results["base"]["error_codes"] == {"missing_tag": 10, "text_outside_tags": 10}
    assert results["tuned"]["metrics"]["judge.reasoning"]["mean"] == 7.0
    assert results["tuned"]["judged"] == 10
    diff = next(d for d in summary["differences"] if d["a"] == "tuned" and d["b"] == "base")
    assert diff["metrics"]["compliance"]["mean"] == 1.0
    assert {d["kind"] for d in summary["differences"]} == {"model", "guided", "heal"}
    detailed = json.loads((out / "detailed_results.json").read_text())
    assert len(detailed) == 60
    item = detailed[0]
    assert item["reference"]["source"] == "nearest_user_turn" and item["reference"]["text"]
    assert set(item["metrics"]) == {"respond", "reply"}
    categories = json.loads((out / "category_metrics.json").read_text())
    assert len(categories["tuned"]) == 5
    report = (out / "report.md").read_text()
    assert "seed (published)" in report and "[" in report
    # --score-only on the cache, with the server gone: same figures, no request
    assert _run(["--models", "tuned,base", "--output", str(out), "--num-prompts", "5", "--samples", "2",
                 "--heal", "--endpoint", fake.base_url, "--score-only"]) == 0
    again = json.loads((out / "summary.json").read_text())
    assert again["results"]["base"]["metrics"]["respond.rougeL"] == results["base"]["metrics"]["respond.rougeL"]
    assert again["results"]["tuned"]["metrics"]["judge.reasoning"]["mean"] is None  # no judge: not measured


def test_failed_requests_are_recorded_not_scored_and_retried(tmp_path):
    out = tmp_path / "bench"
    with FakeOpenAI(fail_chat_with=[400, 400], models=["tuned"]) as fake:
        argv = ["--endpoint", fake.base_url, "--models", "tuned", "--output", str(out), "--num-prompts", "3",
                "--guided", "off", "--concurrency", "1", "--no-plots"]
        assert _run(argv) == 0
        summary = json.loads((out / "summary.json").read_text())
        assert summary["requests"]["failed"] == 2
        assert summary["results"]["tuned"]["scored"] == 1
        assert summary["results"]["tuned"]["metrics"]["judge.response"]["mean"] is None
        assert _run(argv) == 0  # the two failures are sent again
        summary = json.loads((out / "summary.json").read_text())
        assert summary["requests"] == {"total": 3, "sent_this_run": 2, "from_cache": 1, "failed": 0}


def test_unparsable_judge_replies_are_not_measured(tmp_path):
    out = tmp_path / "bench"
    prompts = tmp_path / "p.jsonl"
    prompts.write_text('{"id": "a", "category": "general", "prompt": "hello", '
                       '"reference": "<react>*waves*</react><respond>Hi!</respond><reflect>A greeting.</reflect>"}\n'
                       '{"id": "b", "category": "general", "prompt": "unparsable please"}\n')
    with FakeOpenAI(reply=_fake_reply, models=["tuned"]) as fake:
        assert _run(["--endpoint", fake.base_url, "--models", "tuned", "--output", str(out), "--prompts", str(prompts),
                     "--guided", "off", "--judge-url", fake.base_url, "--judge-model", "j", "--no-plots"]) == 0
    summary = json.loads((out / "summary.json").read_text())
    agg = summary["results"]["tuned"]
    assert agg["judged"] == 1 and agg["metrics"]["judge.reasoning"]["n"] == 1
    assert summary["references"] == {"prompt_file": 1, "nearest_user_turn": 1}
    detailed = {d["prompt_id"]: d for d in json.loads((out / "detailed_results.json").read_text())}
    assert detailed["b"]["judge_error"].startswith("unparsable")
    assert detailed["a"]["reference"]["source"] == "prompt_file"


@pytest.mark.parametrize("argv, message", [
    (["--models", "tuned", "--output", "x", "--concurrency", "0"], "--concurrency"),
    (["--models", "tuned", "--output", "x", "--judge-url", "http://127.0.0.1:1"], "--judge-model go together"),
    (["--models", "tuned", "--output", "x", "--prompts", "/nonexistent.jsonl"], "no such prompts file"),
])
def test_bad_options_are_one_line_errors(argv, message, capsys, tmp_path):
    argv = [a if a != "x" else str(tmp_path / "o") for a in argv]
    with pytest.raises(SystemExit) as exc:
        _run(argv)
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_unreachable_endpoint_and_unknown_model_are_one_line_errors(tmp_path, capsys):
    from tests._fake_openai import closed_port

    with pytest.raises(SystemExit):
        _run(["--endpoint", f"http://127.0.0.1:{closed_port()}", "--models", "m", "--output", str(tmp_path / "o")])
    assert "cannot reach" in capsys.readouterr().err
    with FakeOpenAI(models=["tuned"]) as fake, pytest.raises(SystemExit):
        _run(["--endpoint", fake.base_url, "--models", "other", "--output", str(tmp_path / "o")])
    assert "does not serve other" in capsys.readouterr().err


# -- the real served models ------------------------------------------------------------------------

@pytest.mark.e2e
def test_benchmark_of_the_served_default_against_its_base(serve_url, tmp_path):
    """A small benchmark through rrr-ray's HTTP API: the RRR adapter against its base, guided and
    not, no judge (scores "not measured"); the rerun generates nothing."""
    from rrr_ray.model_names import ADAPTER_NAME
    from rrr_ray.training.pretrained import SMOLLM2_135M

    out = tmp_path / "bench"
    argv = ["--endpoint", serve_url, "--models", f"{ADAPTER_NAME},{SMOLLM2_135M.name}", "--output", str(out),
            "--num-prompts", "2", "--guided", "both", "--max-tokens", "160", "--concurrency", "4"]
    assert _run(argv) == 0
    systems = [ADAPTER_NAME, f"{ADAPTER_NAME}+guided", SMOLLM2_135M.name, f"{SMOLLM2_135M.name}+guided"]
    summary = _check_outputs(out, systems)
    assert summary["requests"]["failed"] == 0 and summary["requests"]["sent_this_run"] == 8
    detailed = json.loads((out / "detailed_results.json").read_text())
    assert len(detailed) == 8 and all(d["reply"] and d["timings"]["ttft_s"] > 0 for d in detailed)
    assert all(d["valid"] for d in detailed if d["guided"] and d["finish_reason"] == "stop")
    categories = json.loads((out / "category_metrics.json").read_text())
    report = (out / "report.md").read_text()
    for system in systems:
        agg = summary["results"][system]
        assert agg["judged"] == 0 and agg["metrics"]["judge.reasoning"]["mean"] is None
        assert agg["metrics"]["respond.semantic_similarity"]["mean"] is not None
        assert set(categories[system]) == {"general", "emotional_support"}
        assert f"`{system}`" in report
    assert "not measured" in report and summary["judge"] is None
    assert _run(argv) == 0
    assert json.loads((out / "summary.json").read_text())["requests"]["sent_this_run"] == 0
