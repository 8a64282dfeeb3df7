"""The job: generate until the output folder holds the requested number of accepted dialogues."""

from __future__ import annotations

import logging
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

from pydantic import BaseModel, Field

from rrr_ray.data.generation.config import GenerationConfig
from rrr_ray.data.generation.dialogue import DialogueResult
from rrr_ray.data.generation.errors import GenerationError
from rrr_ray.data.generation.executors import Executor, make_executor
from rrr_ray.data.generation.plan import conversation_id, load_examples
from rrr_ray.data.generation.probe import check_endpoint
from rrr_ray.data.generation.state import STATE_DIR, ShardWriter, prepare_output
from rrr_ray.data.generation.topics import TOPICS
from rrr_ray.data.io import atomic_write_text

log = logging.getLogger(__name__)


class GenerationSummary(BaseModel):
    requested: int = Field(description="Accepted dialogues the folder must hold.")
    total: int = Field(description="Accepted dialogues the folder holds now.")
    generated: int = Field(description="Accepted in this run.")
    resumed_with: int = Field(description="Accepted dialogues already there when this run started.")
    rejected: int = Field(description="Rejected in this run.")
    rejected_reasons: dict[str, int] = Field(default_factory=dict, description="Reason (error code) -> dialogues.")
    retries: int = Field(description="Request retries (connection errors, timeouts, 429, 5xx).")
    format_retries: int = Field(description="Replies asked for again because they failed validation.")
    repaired: int = Field(description="Replies accepted after repair.")
    attempts: int
    elapsed_s: float
    dialogues_per_minute: float
    mode: str
    model: str
    concurrency: int
    nodes: int = Field(0, description="Ray nodes the workers ran on (0: nothing left to generate).")
    output: str

    def lines(self) -> list[str]:
        reasons = ", ".join(f"{k}: {v}" for k, v in sorted(self.rejected_reasons.items())) or "none"
        return [
            f"generated {self.generated} dialogues in {self.elapsed_s:.1f}s ({self.dialogues_per_minute:.1f}/min, "
            f"concurrency {self.concurrency}, {self.nodes} node(s), mode {self.mode}, model {self.model})",
            f"folder {self.output} holds {self.total}/{self.requested} (resumed with {self.resumed_with})",
            f"rejected {self.rejected} ({reasons}); retries {self.retries}; format retries {self.format_retries}; "
            f"repaired {self.repaired}",
        ]


@dataclass
class Tally:
    """Counts of one run; ``accepted`` includes the dialogues already in the folder."""

    accepted: int
    attempts: int = 0
    rejected: int = 0
    retries: int = 0
    format_retries: int = 0
    repaired: int = 0
    reasons: Counter = field(default_factory=Counter)


def check_config(cfg: GenerationConfig) -> None:
    """Refuse settings that contradict each other; warn about topics without seed lines."""
    if cfg.min_turns > cfg.max_turns:
        raise GenerationError(f"--min-turns {cfg.min_turns} is larger than --max-turns {cfg.max_turns}")
    unknown = [t for t in cfg.topics if t not in TOPICS]
    if unknown:
        log.warning("topics without seed user lines (a generic opener is used): %s", ", ".join(unknown))


def unfinished_indices(seed: int, done: set[str]) -> Iterator[int]:
    """Dialogue indices, in order, skipping those whose id is in ``done``."""
    index = 0
    while True:
        if conversation_id(seed, index) not in done:
            yield index
        index += 1


def record_result(res: DialogueResult, tally: Tally, writer: ShardWriter) -> bool:
    """Count ``res`` and buffer it for the next shard; True if it was accepted."""
    tally.retries += res.retries
    tally.format_retries += res.format_retries
    tally.repaired += res.repaired
    if res.fatal:
        raise GenerationError(res.fatal)
    if res.record is not None:
        writer.accept(res.record)
        tally.accepted += 1
        return True
    tally.rejected += 1
    tally.reasons.update(set(res.rejected))
    writer.reject(res.conversation_id, res.rejected)
    log.info("rejected %s: %s", res.conversation_id, ", ".join(res.rejected))
    return False


def generate_missing(cfg: GenerationConfig, executor: Executor, done: set[str], tally: Tally,
                     writer: ShardWriter, bar: Any) -> None:
    """Keep ``cfg.concurrency`` dialogues in flight until enough are accepted or attempts run out."""
    indices = unfinished_indices(cfg.seed, done)
    pending: dict[Any, int] = {}
    limit = cfg.resolved_attempts()
    while tally.accepted < cfg.num_dialogues:
        while (len(pending) < cfg.concurrency and tally.accepted + len(pending) < cfg.num_dialogues
               and tally.attempts < limit):
            index = next(indices)
            pending[executor.submit(index)] = index
            tally.attempts += 1
        if not pending:
            break
        ref, res = executor.wait(list(pending))
        pending.pop(ref)
        if record_result(res, tally, writer):
            bar.update(1)
        bar.set_postfix(rejected=tally.rejected, retries=tally.retries)
        if writer.full:
            writer.flush()
    if tally.accepted < cfg.num_dialogues:
        log.warning("stopped after %d attempts with %d/%d dialogues; raise --max-attempts or check the rejections",
                    tally.attempts, tally.accepted, cfg.num_dialogues)


def make_summary(cfg: GenerationConfig, tally: Tally, resumed_with: int, elapsed: float,
                 nodes: int = 0) -> GenerationSummary:
    generated = tally.accepted - resumed_with
    return GenerationSummary(
        requested=cfg.num_dialogues, total=tally.accepted, generated=generated, resumed_with=resumed_with,
        rejected=tally.rejected, rejected_reasons=dict(tally.reasons), retries=tally.retries,
        format_retries=tally.format_retries, repaired=tally.repaired, attempts=tally.attempts,
        elapsed_s=round(elapsed, 3), dialogues_per_minute=round(60 * generated / elapsed, 3) if elapsed > 0 else 0.0,
        mode=cfg.resolved_mode(), model=cfg.resolved_model(), concurrency=cfg.concurrency, nodes=nodes,
        output=str(cfg.output))


def run_generation(cfg: GenerationConfig, use_ray: bool = True) -> GenerationSummary:
    """Generate until ``cfg.output`` holds ``cfg.num_dialogues`` accepted dialogues."""
    from tqdm import tqdm

    check_config(cfg)
    load_examples(cfg.examples)
    state = prepare_output(cfg)
    out = Path(cfg.output)
    tally = Tally(accepted=len(state.accepted))
    resumed_with = tally.accepted
    needed = tally.accepted < cfg.num_dialogues
    writer = ShardWriter(out, state.next_seq, cfg.shard_size)
    if needed:
        check_endpoint(cfg)
    executor = None
    t0 = time.monotonic()
    bar = tqdm(total=cfg.num_dialogues, initial=min(tally.accepted, cfg.num_dialogues), unit="dlg", desc="generating",
               disable=not cfg.progress, dynamic_ncols=True)
    try:
        if needed:
            executor = make_executor(cfg, use_ray)
        t0 = time.monotonic()  # throughput is measured from the first request, not from cluster start
        if executor is not None:
            generate_missing(cfg, executor, state.accepted | state.rejected, tally, writer, bar)
    finally:
        writer.flush()  # whatever was accepted is kept, even when the job stops on an error
        bar.close()
        if executor is not None:
            executor.close()
    summary = make_summary(cfg, tally, resumed_with, time.monotonic() - t0,
                           len(set(executor.nodes)) if executor is not None else 0)
    atomic_write_text(out / STATE_DIR / "summary.json", summary.model_dump_json(indent=2) + "\n")
    for line in summary.lines():
        log.info(line)
    return summary
