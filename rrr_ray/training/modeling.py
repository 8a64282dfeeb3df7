"""The small Mistral-architecture causal LM that rrr-ray trains from scratch."""

from __future__ import annotations

import json
import logging
from pathlib import Path

from pydantic import BaseModel, Field

log = logging.getLogger(__name__)


class TinyModelConfig(BaseModel):
    """Shape of the from-scratch demo model (a ``MistralForCausalLM`` that vLLM loads)."""

    hidden_size: int = Field(256, description="Width of the residual stream.")
    intermediate_size: int = Field(768, description="Width of the SwiGLU MLP.")
    num_hidden_layers: int = Field(4, description="Transformer blocks.")
    num_attention_heads: int = Field(4, description="Query heads.")
    num_key_value_heads: int = Field(2, description="Key/value heads (grouped-query attention).")
    max_position_embeddings: int = Field(1024, description="Longest context, in tokens.")
    rope_theta: float = Field(10000.0, description="RoPE base.")
    vocab_multiple: int = Field(64, description="Pad the embedding rows to a multiple of this.")


def padded_vocab(n: int, multiple: int) -> int:
    return ((n + multiple - 1) // multiple) * multiple


def build_mistral(cfg: TinyModelConfig, tokenizer, seed: int = 0):
    """A freshly initialised ``MistralForCausalLM`` sized for ``tokenizer``."""
    import torch
    from transformers import MistralConfig, MistralForCausalLM

    torch.manual_seed(seed)
    config = MistralConfig(
        vocab_size=padded_vocab(len(tokenizer), cfg.vocab_multiple),
        hidden_size=cfg.hidden_size,
        intermediate_size=cfg.intermediate_size,
        num_hidden_layers=cfg.num_hidden_layers,
        num_attention_heads=cfg.num_attention_heads,
        num_key_value_heads=cfg.num_key_value_heads,
        head_dim=cfg.hidden_size // cfg.num_attention_heads,
        max_position_embeddings=cfg.max_position_embeddings,
        rope_theta=cfg.rope_theta,
        sliding_window=None,
        tie_word_embeddings=False,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        initializer_range=0.02,
    )
    model = MistralForCausalLM(config)
    log.info("built MistralForCausalLM with %d parameters", count_parameters(model))
    return model


def count_parameters(model) -> int:
    return sum(p.numel() for p in model.parameters())


def save_model_folder(model, tokenizer, out: str | Path, dtype: str = "bfloat16") -> Path:
    """Save a Hugging Face model folder (safetensors in ``dtype``, config, tokenizer, chat template,
    generation config) that transformers and vLLM load from a local path."""
    import torch

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    model = model.to(getattr(torch, dtype))
    model.config.dtype = dtype
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.bos_token_id = tokenizer.bos_token_id
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    model.float()
    return out


def folder_size(path: str | Path) -> int:
    return sum(p.stat().st_size for p in Path(path).rglob("*") if p.is_file())


def read_json(path: str | Path) -> dict:
    return json.loads(Path(path).read_text())
