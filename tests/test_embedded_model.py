"""The rrr-tiny models under models/ (the 4.7M test model, its base and LoRA): size, cards, measured compliance, loading and
generation in transformers, and (e2e) in vLLM, the LoRA adapter unmerged and the merge output."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from rrr_ray.paths import MODELS, REPO

FOLDERS = ["rrr-tiny", "rrr-tiny-base"]
ENV = dict(os.environ)  # with rrr_ray.env's CPU-node settings (conftest)

pytestmark = pytest.mark.skipif(not (MODELS / "rrr-tiny" / "config.json").exists(),
                                reason="no rrr-tiny model (run `make model-tiny`)")


def test_models_folder_is_small_and_documented():
    names = FOLDERS + (["rrr-tiny-lora"] if (MODELS / "rrr-tiny-lora").exists() else [])
    total = sum(p.stat().st_size for name in names for p in (MODELS / name).rglob("*") if p.is_file())
    assert total <= 25 * 1024 * 1024, f"the rrr-tiny models are {total / 1e6:.1f} MB"
    for name in names:
        card = (MODELS / name / "README.md").read_text()
        assert "compliance" in card.lower() and "make model-tiny" in card


def test_compliance_report_meets_the_targets():
    rep = json.loads((MODELS / "compliance.json").read_text())
    assert rep["prompts"] >= 40
    assert rep["compliance"]["base"] <= 0.05
    assert rep["compliance"][rep["default_variant"]] >= 0.9
    assert rep["parameters"] > 1_000_000


@pytest.mark.parametrize("name", FOLDERS)
def test_shipped_model_loads_in_transformers_and_generates(name):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = MODELS / name
    cfg = json.loads((path / "config.json").read_text())
    assert cfg["architectures"] == ["MistralForCausalLM"] and cfg["vocab_size"] % 64 == 0
    tok = AutoTokenizer.from_pretrained(str(path))
    model = AutoModelForCausalLM.from_pretrained(str(path))
    assert tok.eos_token == "<|im_end|>" and model.generation_config.eos_token_id == tok.eos_token_id
    enc = tok.apply_chat_template([{"role": "user", "content": "Hello there"}], add_generation_prompt=True,
                                  return_tensors="pt", return_dict=True)
    torch.manual_seed(0)
    with torch.no_grad():
        gen = model.generate(**enc, max_new_tokens=40, do_sample=True, temperature=0.7)
    assert gen.shape[1] > enc["input_ids"].shape[1]
    assert tok.decode(gen[0, enc["input_ids"].shape[1]:], skip_special_tokens=True).strip()


def test_lora_adapter_loads_on_the_base_with_peft():
    if not (MODELS / "rrr-tiny-lora").exists():
        pytest.skip("no LoRA adapter shipped")
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(str(MODELS / "rrr-tiny-base")),
                                      str(MODELS / "rrr-tiny-lora"))
    assert any("lora_A" in n for n, _ in model.named_parameters())


def _vllm(model: Path, adapter: Path | None = None) -> dict:
    args = [sys.executable, str(REPO / "tests" / "_vllm_generate.py"), str(model)] + ([str(adapter)] if adapter else [])
    r = subprocess.run(args, cwd=REPO, env=ENV, capture_output=True, text=True, timeout=400)
    assert r.returncode == 0, r.stderr[-3000:]
    lines = [line for line in r.stdout.splitlines() if line.startswith("RRR_RESULT ")]
    assert lines, r.stdout[-2000:]
    return json.loads(lines[-1][len("RRR_RESULT "):])


@pytest.mark.e2e
def test_vllm_serves_the_default_model():
    out = _vllm(MODELS / "rrr-tiny")
    assert all(t.strip() for t in out["base"])


@pytest.mark.e2e
def test_vllm_serves_base_and_unmerged_lora_in_one_engine():
    adapter = MODELS / "rrr-tiny-lora"
    if not adapter.exists():
        pytest.skip("no LoRA adapter shipped")
    if json.loads((adapter / "adapter_config.json").read_text()).get("modules_to_save"):
        pytest.skip("vLLM does not serve adapters with modules_to_save unmerged")
    out = _vllm(MODELS / "rrr-tiny-base", adapter)
    assert all(t.strip() for t in out["base"]) and all(t.strip() for t in out["lora"])


@pytest.mark.e2e
def test_vllm_serves_the_merge_output(tmp_path):
    if not (MODELS / "rrr-tiny-lora").exists():
        pytest.skip("no LoRA adapter shipped")
    r = subprocess.run([sys.executable, "-m", "jobs.merge_lora", "--base-model", str(MODELS / "rrr-tiny-base"),
                        "--adapter", str(MODELS / "rrr-tiny-lora"), "--output-dir", str(tmp_path / "merged")],
                       cwd=REPO, env=ENV, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    out = _vllm(tmp_path / "merged")
    assert all(t.strip() for t in out["base"])
