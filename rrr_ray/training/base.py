"""Build the from-scratch base model: tokenizer + small Mistral pretrained on untagged dialogues."""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

from pydantic import BaseModel, Field

from rrr_ray.data.convert import DEFAULT_SEED_PATHS, load_records
from rrr_ray.format.chatml import render_chatml
from rrr_ray.training.data import section_documents, tagged_records, tokenized_dataset, untagged_records
from rrr_ray.training.loop import LoopConfig, train_causal_lm
from rrr_ray.training.modeling import TinyModelConfig, build_mistral, count_parameters, save_model_folder
from rrr_ray.training.tokenizer import train_tokenizer

log = logging.getLogger(__name__)


class BaseModelConfig(BaseModel):
    """What ``jobs.build_base_model`` builds."""

    data: list[str] = Field(default_factory=lambda: list(DEFAULT_SEED_PATHS),
                            description="Dialogue files/folders or saved HF datasets.")
    output_dir: str = Field("models/rrr-tiny-base", description="Where the model folder is written.")
    vocab_size: int = Field(3000, ge=300, description="Upper bound on the BPE vocabulary.")
    model: TinyModelConfig = Field(default_factory=TinyModelConfig)
    loop: LoopConfig = Field(default_factory=lambda: LoopConfig(epochs=60, max_minutes=3.0, lr=2e-3,
                                                                all_tokens=True, batch_size=8))
    max_length: int = Field(1024, ge=16, description="Longest training sequence, in tokens.")
    dtype: str = Field("bfloat16", description="Storage dtype of the saved weights.")
    tag_documents: bool = Field(
        True, description="Also pretrain on plain (non-chat) documents of single tagged sections, so "
        "the base knows the tag tokens without ever seeing a tagged chat reply.")


def build_base_model(cfg: BaseModelConfig, progress: bool = True) -> dict[str, Any]:
    """Train tokenizer and base model; save the folder; return a summary."""
    t0 = time.monotonic()
    records = load_records(cfg.data)
    tagged, _ = tagged_records(records)
    plain = untagged_records(records)
    # The tokenizer sees the tagged text too, so the fine-tune needs no new tokens; the base model
    # itself never sees a tag.
    corpus = [render_chatml([m.model_dump() for m in r.messages]) for r in (*tagged, *plain)]
    tokenizer = train_tokenizer(corpus, vocab_size=cfg.vocab_size)
    model = build_mistral(cfg.model, tokenizer, seed=cfg.loop.seed)
    rows = tokenized_dataset(plain, tokenizer, cfg.max_length, prefix_turns=0)
    if cfg.tag_documents:
        rows += [tokenizer(d, add_special_tokens=False) | {} for d in section_documents(tagged, seed=cfg.loop.seed)]
        rows = [{"input_ids": r["input_ids"][: cfg.max_length],
                 "assistant_masks": [1] * min(len(r["input_ids"]), cfg.max_length)} for r in rows]
    n_tokens = sum(len(r["input_ids"]) for r in rows)
    history = train_causal_lm(model, rows, tokenizer.pad_token_id, cfg.loop, progress=progress)
    out = save_model_folder(model, tokenizer, cfg.output_dir, cfg.dtype)
    summary = {
        "output_dir": str(out),
        "parameters": count_parameters(model),
        "vocab_size": len(tokenizer),
        "conversations": len(plain),
        "train_tokens": n_tokens,
        "steps": history["steps"],
        "final_loss": history["loss"][-1] if history["loss"] else None,
        "train_minutes": history["minutes"],
        "total_minutes": round((time.monotonic() - t0) / 60, 2),
    }
    (Path(out) / "training_summary.json").write_text(json.dumps(summary, indent=2))
    return summary
