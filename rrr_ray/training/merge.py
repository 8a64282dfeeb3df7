"""Merging a LoRA adapter into its base, and loading models for evaluation."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any, Optional

from rrr_ray.training.modeling import save_model_folder
from rrr_ray.training.tokenizer import load_tokenizer

log = logging.getLogger(__name__)


def adapter_base(adapter_dir: str | Path) -> Optional[str]:
    cfg = Path(adapter_dir) / "adapter_config.json"
    if not cfg.exists():
        raise FileNotFoundError(f"{adapter_dir}: no adapter_config.json (not a peft adapter folder)")
    return json.loads(cfg.read_text()).get("base_model_name_or_path")


def load_causal_lm(model_dir: str | Path, adapter_dir: str | Path | None = None):
    """A float32 transformers model (with the adapter applied, unmerged, when given) and its tokenizer."""
    import torch
    from transformers import AutoModelForCausalLM

    model_dir = Path(model_dir)
    if not (model_dir / "config.json").exists():
        raise FileNotFoundError(f"{model_dir}: no config.json (not a model folder)")
    model = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32)
    tokenizer = load_tokenizer(adapter_dir if adapter_dir and (Path(adapter_dir) / "tokenizer.json").exists()
                               else model_dir)
    if adapter_dir is not None:
        from peft import PeftModel

        adapter_base(adapter_dir)
        model = PeftModel.from_pretrained(model, str(adapter_dir))
    model.eval()
    return model, tokenizer


def merge_adapter(base_dir: str | Path, adapter_dir: str | Path, out_dir: str | Path,
                  dtype: str = "bfloat16") -> Path:
    """Merge ``adapter_dir`` into ``base_dir`` and write a plain model folder vLLM serves."""
    model, tokenizer = load_causal_lm(base_dir, adapter_dir)
    merged = model.merge_and_unload()
    out = save_model_folder(merged, tokenizer, out_dir, dtype)
    log.info("merged %s into %s -> %s", adapter_dir, base_dir, out)
    return out


def cast_adapter(adapter_dir: str | Path, dtype: str = "bfloat16") -> None:
    """Store an adapter's tensors in ``dtype`` (halves its size for shipping)."""
    import torch
    from safetensors.torch import load_file, save_file

    f = Path(adapter_dir) / "adapter_model.safetensors"
    tensors = {k: v.to(getattr(torch, dtype)).contiguous() for k, v in load_file(str(f)).items()}
    save_file(tensors, str(f), metadata={"format": "pt"})


def set_adapter_base(adapter_dir: str | Path, base: str) -> None:
    """Point ``adapter_config.json`` at ``base`` (e.g. a path relative to the repository)."""
    p = Path(adapter_dir) / "adapter_config.json"
    cfg = json.loads(p.read_text())
    cfg["base_model_name_or_path"] = base
    p.write_text(json.dumps(cfg, indent=2))


def evaluate_folder(model_dir: str | Path, prompts, adapter_dir: str | Path | None = None,
                    samples_per_prompt: int = 3, temperature: float = 0.7, max_new_tokens: int = 256,
                    seed: int = 0) -> dict[str, Any]:
    """Format compliance of a saved model (optionally with an unmerged adapter) on ``prompts``."""
    from rrr_ray.evaluation.compliance import hf_generate_fn, measure_compliance

    model, tokenizer = load_causal_lm(model_dir, adapter_dir)
    fn = hf_generate_fn(model, tokenizer, max_new_tokens=max_new_tokens, temperature=temperature, seed=seed)
    return measure_compliance(fn, prompts, samples_per_prompt)
