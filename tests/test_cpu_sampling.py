"""CPU top-p without a vocabulary sort keeps exactly vLLM's nucleus."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")
ops = pytest.importorskip("vllm.v1.sample.ops.topk_topp_sampler")

from rrr_ray.serving.vllm_compat import cpu_top_p as cpu_sampling  # noqa: E402
from rrr_ray.serving.vllm_compat.cpu_top_p import top_p_filter  # noqa: E402


def vllm_sort(logits, k, p):
    return ops.apply_top_k_top_p_pytorch(logits, k, p, allow_cpu_sync=True)


def logits_batch(seed: int, rows: int = 32, vocab: int = 49152):
    """Rows from peaked (a tuned chat model at temperature 0.7) to flat (nucleus of thousands)."""
    g = torch.Generator().manual_seed(seed)
    scale = torch.linspace(0.05, 8.0, rows).unsqueeze(1)
    return torch.randn(rows, vocab, generator=g) * scale


@pytest.mark.parametrize("top_p", [0.5, 0.9, 0.999])
def test_the_same_tokens_kept_with_the_same_logits(top_p):
    logits = logits_batch(int(top_p * 1000))
    p = torch.full((logits.shape[0],), top_p)
    expected = vllm_sort(logits.clone(), None, p)
    calls = []

    def fallback(rows, k, pr):
        calls.append(rows.shape[0])
        return vllm_sort(rows, k, pr)

    got = top_p_filter(logits.clone(), p, fallback)
    differ = torch.isinf(got) != torch.isinf(expected)
    for row, token in differ.nonzero().tolist():  # only where float32 sums land on either side of p
        probs = logits[row].softmax(-1)
        assert abs(probs[probs > probs[token]].sum().item() - top_p) < 1e-5
    assert differ.sum() <= 2
    kept = ~torch.isinf(expected) & ~differ
    assert torch.equal(got[kept], logits[kept])  # kept logits untouched: the same distribution
    assert calls and 0 < calls[0] < logits.shape[0]  # flat rows sorted, peaked ones not


def test_mixed_top_p_per_row_and_top_p_one_rows_left_whole():
    logits = logits_batch(7, rows=8)
    p = torch.tensor([0.9, 1.0, 0.5, 1.0, 0.7, 0.95, 0.3, 0.99])
    got = top_p_filter(logits.clone(), p, vllm_sort)
    expected = vllm_sort(logits.clone(), None, p)
    assert torch.equal(torch.isinf(got), torch.isinf(expected))
    assert not torch.isinf(got[1]).any() and not torch.isinf(got[3]).any()


def test_a_peaked_batch_needs_no_sort():
    logits = torch.full((4, 1000), -10.0)
    logits[:, :3] = torch.tensor([5.0, 4.0, 1.0])
    got = top_p_filter(logits.clone(), torch.full((4,), 0.9), lambda *a: pytest.fail("sorted"))
    assert (~torch.isinf(got)).sum(dim=1).tolist() == [2, 2, 2, 2]  # 0.70 + 0.26 >= 0.9


def test_install_replaces_vllms_cpu_top_p_unless_told_to_sort(monkeypatch):
    original = ops.apply_top_k_top_p
    try:
        monkeypatch.setenv(cpu_sampling.ENV_TOP_P, "sort")
        assert cpu_sampling.install() is None and ops.apply_top_k_top_p is original
        monkeypatch.delenv(cpu_sampling.ENV_TOP_P)
        assert cpu_sampling.install() == "top_p_filter" and ops.apply_top_k_top_p is not original
        assert cpu_sampling.install() is None  # once
        logits = logits_batch(3, rows=4)
        p = torch.full((4,), 0.9)
        assert torch.equal(torch.isinf(ops.apply_top_k_top_p(logits.clone(), None, p)),
                           torch.isinf(vllm_sort(logits.clone(), None, p)))
        k = torch.full((4,), 5)
        assert torch.equal(ops.apply_top_k_top_p(logits.clone(), k, None), original(logits.clone(), k, None))
    finally:
        ops.apply_top_k_top_p = original
