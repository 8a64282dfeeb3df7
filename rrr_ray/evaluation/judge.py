"""An optional judge: any OpenAI-compatible endpoint grades each reply (single-answer grading) on
reasoning quality, response quality and reflection depth, 0-10, at temperature 0, with the fixed
prompt of ``judge_prompt.txt``. The scores are parsed from a strict three-line format; a failed or
unparsable call is recorded as "not measured" (None), never as 0."""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import re
from pathlib import Path
from typing import Any, Iterable, Optional

from pydantic import BaseModel, Field

from rrr_ray.data.generation.errors import endpoint_error
from rrr_ray.evaluation.generation import v1_base
from rrr_ray.evaluation.jsonl_cache import JsonlCache

log = logging.getLogger(__name__)

JUDGE_PROMPT = (Path(__file__).with_name("judge_prompt.txt")).read_text(encoding="utf-8")
JUDGE_CRITERIA: tuple[str, ...] = ("reasoning", "response", "reflection")
_LINE = re.compile(r"(REASONING|RESPONSE|REFLECTION):\s*(10|[0-9])")
PROMPT_DIGEST = hashlib.sha256(JUDGE_PROMPT.encode()).hexdigest()[:12]


class Judgment(BaseModel):
    """The judge's scores of one reply (None: not measured) and why it could not score."""

    key: str
    reasoning: Optional[int] = None
    response: Optional[int] = None
    reflection: Optional[int] = None
    error: Optional[str] = Field(None, description="Why no score was measured (a failed or unparsable call).")
    raw: Optional[str] = Field(None, description="The judge's reply, as it came.")

    @property
    def ok(self) -> bool:
        return self.error is None


def parse_scores(text: str) -> dict[str, int]:
    """The three scores of a judge's reply; ``ValueError`` unless it is exactly the three lines
    (in any order, each once, surrounding whitespace aside)."""
    lines = [ln.strip() for ln in text.strip().splitlines() if ln.strip()]
    scores: dict[str, int] = {}
    for ln in lines:
        m = _LINE.fullmatch(ln)
        if m is None:
            raise ValueError(f"not a score line: {ln[:60]!r}")
        name = m.group(1).lower()
        if name in scores:
            raise ValueError(f"{name} is scored twice")
        scores[name] = int(m.group(2))
    if set(scores) != set(JUDGE_CRITERIA):
        raise ValueError(f"missing scores: {', '.join(sorted(set(JUDGE_CRITERIA) - set(scores)))}")
    return scores


def judgment_key(judge_url: str, judge_model: str, prompt: str, reply: str) -> str:
    data = {"url": judge_url, "model": judge_model, "prompt": prompt, "reply": reply, "template": PROMPT_DIGEST}
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:20]


class JudgmentCache(JsonlCache[Judgment]):
    """JSON lines of judgments; only successful ones are reused by a rerun."""

    record_type = Judgment


async def judge_one(client: Any, model: str, key: str, prompt: str, reply: str, timeout: float) -> Judgment:
    try:
        resp = await client.chat.completions.create(
            model=model, temperature=0, max_tokens=32, timeout=timeout,
            messages=[{"role": "user", "content": JUDGE_PROMPT.format(prompt=prompt, reply=reply)}])
        raw = resp.choices[0].message.content or ""
    except Exception as exc:
        err = endpoint_error(exc, str(client.base_url), model)
        return Judgment(key=key, error=f"{err.code}: {err}")
    try:
        return Judgment(key=key, raw=raw, **parse_scores(raw))
    except ValueError as exc:
        return Judgment(key=key, raw=raw, error=f"unparsable: {exc}")


async def judge_all(items: Iterable[tuple[str, str]], cache: JudgmentCache, *, url: str, model: str, api_key: str,
                    concurrency: int, timeout: float, progress: bool = True) -> list[Judgment]:
    """The judgment of each ``(prompt, reply)``, from the cache where it holds a successful one."""
    from openai import AsyncOpenAI
    from tqdm.auto import tqdm

    items = list(items)
    keys = [judgment_key(url, model, p, r) for p, r in items]
    todo = [(k, p, r) for k, (p, r) in zip(keys, items) if not (k in cache.entries and cache.entries[k].ok)]
    todo = list({k: (k, p, r) for k, p, r in todo}.values())
    if todo:
        client = AsyncOpenAI(base_url=v1_base(url), api_key=api_key, max_retries=1, timeout=timeout)
        semaphore = asyncio.Semaphore(concurrency)
        bar = tqdm(total=len(todo), desc="judging", unit="reply", disable=not progress)

        async def run(k: str, p: str, r: str) -> None:
            async with semaphore:
                j = await judge_one(client, model, k, p, r, timeout)
            cache.add(j)
            bar.update(1)

        try:
            await asyncio.gather(*(run(*t) for t in todo))
        finally:
            bar.close()
            await client.close()
    return [cache.entries[k] for k in keys]
