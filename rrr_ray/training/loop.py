"""A plain PyTorch causal-LM loop (single process) for pretraining the from-scratch base model and
for full fine-tunes where Ray is not wanted. Loss on the tokens where ``assistant_masks`` is 1, or on
every token when ``all_tokens`` is set."""

from __future__ import annotations

import copy
import logging
import math
import random
import time
from typing import Any, Callable, Optional, Sequence

from pydantic import BaseModel, Field

log = logging.getLogger(__name__)


class LoopConfig(BaseModel):
    """Hyper-parameters of :func:`train_causal_lm`."""

    epochs: float = Field(40, gt=0, description="Passes over the rows (an upper bound with max_minutes).")
    max_minutes: float = Field(5.0, gt=0, description="Stop after this many minutes of wall-clock time.")
    batch_size: int = Field(8, ge=1, description="Sequences per optimiser step.")
    lr: float = Field(1e-3, gt=0, description="Peak AdamW learning rate.")
    weight_decay: float = Field(0.01, ge=0, description="AdamW weight decay.")
    warmup_steps: int = Field(20, ge=0, description="Linear warm-up steps.")
    min_lr_ratio: float = Field(0.1, ge=0, le=1, description="Cosine schedule floor, as a share of lr.")
    all_tokens: bool = Field(False, description="Loss on every token instead of assistant tokens only.")
    eval_every: int = Field(0, ge=0, description="Run eval_fn every this many steps (0: never).")
    seed: int = Field(0, description="Shuffling and initialisation seed.")
    threads: int = Field(2, ge=1, description="torch intra-op threads.")


def collate(rows: Sequence[dict[str, list[int]]], pad_id: int, all_tokens: bool):
    import torch

    n = max(len(r["input_ids"]) for r in rows)
    ids = torch.full((len(rows), n), pad_id, dtype=torch.long)
    att = torch.zeros((len(rows), n), dtype=torch.long)
    labels = torch.full((len(rows), n), -100, dtype=torch.long)
    for i, r in enumerate(rows):
        t = torch.tensor(r["input_ids"])
        ids[i, : len(t)] = t
        att[i, : len(t)] = 1
        m = torch.ones(len(t), dtype=torch.bool) if all_tokens else torch.tensor(r["assistant_masks"]).bool()
        labels[i, : len(t)] = torch.where(m, t, torch.tensor(-100))
    return {"input_ids": ids, "attention_mask": att, "labels": labels}


def train_causal_lm(model, rows: Sequence[dict[str, list[int]]], pad_id: int, cfg: LoopConfig,
                    eval_fn: Optional[Callable[[Any], float]] = None, progress: bool = True) -> dict[str, Any]:
    """Train ``model`` in place. With ``eval_fn`` (higher is better) and ``eval_every``, the weights
    of the best evaluation are restored at the end (checkpoint selection by a measured score,
    e.g. format compliance, rather than by loss). Returns the history."""
    import torch

    torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    rng = random.Random(cfg.seed)
    steps_per_epoch = math.ceil(len(rows) / cfg.batch_size)
    total = max(1, int(cfg.epochs * steps_per_epoch))
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay, betas=(0.9, 0.95))

    def lr_at(step: int) -> float:
        if step < cfg.warmup_steps:
            return cfg.lr * (step + 1) / cfg.warmup_steps
        p = min(1.0, (step - cfg.warmup_steps) / max(1, total - cfg.warmup_steps))
        return cfg.lr * (cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * p)))

    bar = None
    if progress:
        from tqdm.auto import tqdm
        bar = tqdm(total=total, desc="train", unit="step")
    history: dict[str, Any] = {"loss": [], "evals": [], "steps": 0}
    best = (-1.0, None, 0)
    start = time.monotonic()
    step = 0
    model.train()
    order: list[int] = []
    while step < total:
        if not order:
            order = list(range(len(rows)))
            rng.shuffle(order)
        batch_idx, order = order[: cfg.batch_size], order[cfg.batch_size:]
        batch = collate([rows[i] for i in batch_idx], pad_id, cfg.all_tokens)
        for g in opt.param_groups:
            g["lr"] = lr_at(step)
        loss = model(**batch).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        step += 1
        history["loss"].append(round(loss.item(), 4))
        if bar is not None:
            bar.update(1)
            bar.set_postfix(loss=f"{loss.item():.3f}")
        elapsed = (time.monotonic() - start) / 60
        out_of_time = elapsed >= cfg.max_minutes
        if eval_fn is not None and cfg.eval_every and (step % cfg.eval_every == 0 or step == total or out_of_time):
            score = float(eval_fn(model))
            history["evals"].append({"step": step, "score": score, "minutes": round(elapsed, 2)})
            log.info("step %d: score %.3f (loss %.3f)", step, score, loss.item())
            if bar is not None:
                bar.write(f"step {step}: score {score:.3f} loss {loss.item():.3f}")
            if score > best[0]:
                best = (score, copy.deepcopy(model.state_dict()), step)
            model.train()
        if out_of_time:
            log.info("stopping at step %d: time budget of %.1f min reached", step, cfg.max_minutes)
            break
    if bar is not None:
        bar.close()
    history["steps"] = step
    history["minutes"] = round((time.monotonic() - start) / 60, 2)
    if best[1] is not None:
        model.load_state_dict(best[1])
        history["best"] = {"step": best[2], "score": best[0]}
    model.eval()
    return history
