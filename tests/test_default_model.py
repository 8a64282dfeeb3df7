"""The served default: SmolLM2-135M-Instruct converted at install time, the committed RRR adapter,
the merge, the measured report, and (e2e) the adapter served by name through the real graph."""

from __future__ import annotations

import json
import subprocess
import sys

import httpx
import pytest

from rrr_ray import validate
from rrr_ray.format.spec import SYSTEM_PROMPT
from rrr_ray.training import pretrained
from rrr_ray.model_names import ADAPTER_NAME, MERGED_NAME
from rrr_ray.training.pretrained import SMOLLM2_135M
from tests.helpers import REPO

MODELS = REPO / "models"
BASE, ADAPTER, MERGED = MODELS / SMOLLM2_135M.name, MODELS / ADAPTER_NAME, MODELS / MERGED_NAME
REPORT = ADAPTER / "report.json"
PROMPT = "I have a big presentation tomorrow and I feel anxious."


def test_install_converted_the_base_and_merged_the_adapter():
    assert pretrained.is_current(BASE, SMOLLM2_135M)
    meta = json.loads((BASE / "source.json").read_text())
    assert meta["sha256"] == SMOLLM2_135M.sha256 and meta["parameters"] > 130_000_000
    merged = json.loads((MERGED / "source.json").read_text())
    assert merged["adapter_sha256"] == pretrained.sha256_of(ADAPTER / "adapter_model.safetensors")
    assert "Apache-2.0" in (BASE / "README.md").read_text()


def test_prepare_models_is_idempotent_and_fast_when_current():
    r = subprocess.run([sys.executable, "-m", "jobs.prepare_models"], cwd=REPO, capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stdout.count("up to date") == 2, r.stdout


def test_a_missing_or_altered_gguf_is_one_clear_line(tmp_path):
    altered = pretrained.GGUFSource(**{**SMOLLM2_135M.__dict__, "sha256": "0" * 64})
    with pytest.raises(pretrained.BaseModelError, match="sha256 .* is not the expected 0000"):
        pretrained.ensure_base_model(tmp_path, altered)
    absent = pretrained.GGUFSource(**{**SMOLLM2_135M.__dict__, "module": "no_such_module_rrr"})
    with pytest.raises(pretrained.BaseModelError, match="is not installed"):
        pretrained.ensure_base_model(tmp_path, absent)
    assert not list(tmp_path.iterdir())  # nothing half-written


def test_the_template_adds_rrr_rays_system_prompt_and_training_uses_the_same():
    from rrr_ray.format.chatml import render_chatml, with_default_system
    from rrr_ray.training.data import template_system_prompt
    from rrr_ray.training.tokenizer import load_tokenizer

    tok = load_tokenizer(BASE)
    assert template_system_prompt(tok) == SYSTEM_PROMPT
    conv = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "<react>x</react>"}]
    assert tok.apply_chat_template(conv, tokenize=False) == render_chatml(with_default_system(conv, SYSTEM_PROMPT))
    own = [{"role": "system", "content": "Be brief."}, *conv]
    assert tok.apply_chat_template(own, tokenize=False) == render_chatml(own)  # a given system message wins


def test_the_adapter_is_small_servable_unmerged_and_documented():
    cfg = json.loads((ADAPTER / "adapter_config.json").read_text())
    assert not cfg.get("modules_to_save") and cfg["r"] <= 16  # vLLM serves it by name
    assert cfg["base_model_name_or_path"] == f"models/{SMOLLM2_135M.name}"
    size = sum(p.stat().st_size for p in ADAPTER.rglob("*") if p.is_file())
    assert size <= 25 * 1024 * 1024, f"{size / 1e6:.1f} MB"
    card = (ADAPTER / "README.md").read_text()
    assert "make model" in card and "compliance" in card.lower()


def test_the_report_meets_the_targets():
    rep = json.loads(REPORT.read_text())
    assert rep["n_prompts"] >= 40 and rep["samples_per_prompt"] >= 3 and rep["temperature"] == 0.7
    tuned = rep["compliance"]["tuned"]
    assert tuned["strict"] >= 0.95 and min(tuned["by_category"].values()) >= 0.95, tuned
    assert rep["compliance"]["tuned_guided"]["strict"] == 1.0
    q = rep["coherence_vs_seed"]["tuned"]
    assert q["perplexity_ratio"] <= 1.5 and q["distinct_bigram_ratio_vs_seed"] >= 0.8, q


@pytest.mark.e2e
def test_the_adapter_is_served_by_name_through_the_graph(serve_url):
    ids = [m["id"] for m in httpx.get(f"{serve_url}/v1/models", timeout=30).json()["data"]]
    assert ADAPTER_NAME in ids and SMOLLM2_135M.name in ids
    r = httpx.post(f"{serve_url}/generate", json={"prompt": PROMPT, "model": ADAPTER_NAME, "temperature": 0,
                                                  "max_new_tokens": 200}, timeout=300)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["metadata"]["model"] == ADAPTER_NAME and body["error"] is None
    assert validate(body["generated_text"]).valid, body["generated_text"]
    assert len(validate(body["generated_text"]).sections["respond"].split()) >= 4  # words, not tags


@pytest.mark.e2e
def test_the_base_and_the_adapter_answer_in_one_engine_and_guided_is_valid(serve_url):
    for model in (SMOLLM2_135M.name, ADAPTER_NAME):
        r = httpx.post(f"{serve_url}/generate", json={"prompt": PROMPT, "model": model, "guided": True,
                                                      "temperature": 0.7, "seed": 3, "max_new_tokens": 512},
                       timeout=300)
        assert r.status_code == 200, r.text
        assert validate(r.json()["generated_text"]).valid, (model, r.json()["generated_text"])


def test_chat_template_with_a_default_system_renders_what_training_tokenises():
    from jinja2 import Environment

    from rrr_ray.format.chatml import chat_template, render_chatml, with_default_system

    env = Environment()
    env.add_extension("jinja2.ext.loopcontrols")

    def render(template: str, messages, gen: bool) -> str:  # the `generation` block is HF's own tag
        return env.from_string(template.replace("{% generation %}", "").replace("{% endgeneration %}", "")).render(
            messages=messages, add_generation_prompt=gen)

    conv = [{"role": "user", "content": "I can't sleep."}]
    assert render(chat_template("Be kind."), conv, True) == render_chatml(with_default_system(conv, "Be kind."), True)
    assert render(chat_template(), conv, True) == render_chatml(conv, True)
    own = [{"role": "system", "content": "Short."}, *conv]
    assert with_default_system(own, "Be kind.") == own and with_default_system(conv, None) == conv


def test_distinct_bigrams_and_respond_sections():
    from rrr_ray.training.quality import distinct_bigram_ratio, respond_section

    assert distinct_bigram_ratio(["a b c", "a b c"]) == 0.5 and distinct_bigram_ratio(["one"]) is None
    assert respond_section("<react>*nods*</react>\n<respond> Go on. </respond>\n<reflect>x</reflect>") == "Go on."
    assert respond_section("<react>*nods*</react>") is None


def test_respond_perplexity_prefers_a_sentence_to_its_words_shuffled():
    from rrr_ray.training.merge import load_causal_lm
    from rrr_ray.training.quality import respond_perplexities

    model, tok = load_causal_lm(BASE)
    user = "I have a big presentation tomorrow and I feel anxious."
    good = "That sounds stressful. What part of the presentation worries you the most?"
    bad = "most the you worries presentation the of part What stressful. sounds That"
    ppl = respond_perplexities(model, tok, [(user, good), (user, bad)], batch_size=2)
    assert 1 < ppl[0] < ppl[1] / 3
    assert respond_perplexities(model, tok, [(user, good)])[0] == pytest.approx(ppl[0], rel=1e-3)  # padding-free
