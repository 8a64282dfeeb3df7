"""The speed benchmarks' own logic: variants of engine_bench, the decode limit of membw, the
profile's categories (the measurements themselves are benchmarks, not tests)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from loadtest.engine_bench import build_engine, parse_variants
from loadtest.investigations.membw import DTYPE_BYTES, read_bandwidth, weight_parameters
from loadtest.investigations.profile_decode import category

REPO = Path(__file__).resolve().parent.parent


def test_variants_are_name_json_pairs_with_unique_names():
    v = parse_variants(['f32={"dtype": "float32"}', 'bf16={"dtype": "bfloat16", "env": {"X": "1"}}', "plain="])
    assert v == {"f32": {"dtype": "float32"}, "bf16": {"dtype": "bfloat16", "env": {"X": "1"}}, "plain": {}}
    for bad in (['a={"dtype": '], ['=["x"]'], ['a=[1]'], ['a={}', 'a={}']):
        with pytest.raises(ValueError):
            parse_variants(bad)


def test_weight_parameters_count_the_safetensors():
    """rrr-tiny's parameter count as its config states it (a tied head counted once)."""
    cfg = json.loads((REPO / "models" / "rrr-tiny" / "config.json").read_text())
    n = weight_parameters(str(REPO / "models" / "rrr-tiny"))
    h, v, layers = cfg["hidden_size"], cfg["vocab_size"], cfg["num_hidden_layers"]
    assert v * h < n < v * h + layers * 20 * h * h
    assert DTYPE_BYTES["bfloat16"] * 2 == DTYPE_BYTES["float32"]


def test_read_bandwidth_reports_every_round():
    r = read_bandwidth(threads=1, rounds=3, gib=1 / 64)
    assert r["threads"] == 1 and len(r["gb_s_rounds"]) == 3 and r["gb_s_median"] > 0


@pytest.mark.parametrize("op, cat", [
    ("aten::sort", "sampling"), ("aten::topk", "sampling"), ("_C::fused_gumbel_argmax", "sampling"),
    ("aten::addmm", "weights (matmul)"), ("_C::onednn_mm", "weights (matmul)"), ("aten::linear", "weights (matmul)"),
    ("_C::cpu_attention_with_kv_cache", "attention"), ("_C::rms_norm", "norms, activations"),
    ("aten::copy_", "other operators"),
])
def test_profile_categories(op, cat):
    assert category(op) == cat


def test_engine_cpus_become_the_pinned_executor(monkeypatch):
    """``engine_cpus`` in engine_bench means what it means in the served engine config."""
    import sys
    import types

    seen = {}
    fake = types.SimpleNamespace(AsyncEngineArgs=lambda **kw: seen.update(kw) or kw)
    fake_llm = types.SimpleNamespace(AsyncLLM=types.SimpleNamespace(from_engine_args=lambda args: args))
    monkeypatch.setitem(sys.modules, "vllm", fake)
    monkeypatch.setitem(sys.modules, "vllm.v1.engine.async_llm", fake_llm)
    build_engine("m", {"engine_cpus": [0, 1], "dtype": "float32"})
    assert seen["distributed_executor_backend"].endswith("PinnedUniProcExecutor")
    assert seen["additional_config"] == {"rrr_engine_cpus": [0, 1]} and "engine_cpus" not in seen
