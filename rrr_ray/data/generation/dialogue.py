"""One dialogue: ask the endpoint for it, validate (and repair) every reply, accept or reject it.

``turns`` mode asks for each assistant reply as a chat completion, with a curated dialogue as
few-shot context; ``whole`` mode asks for the whole ``User: ... / Virtual Human: ...`` text and
parses it. A reply that fails validation is asked for again, up to ``format_retries`` times.
"""

from __future__ import annotations

import random
import time
from typing import Any, Optional

from pydantic import BaseModel, Field

from rrr_ray.data.generation.client import EndpointClient
from rrr_ray.data.generation.config import GenerationConfig, is_openai
from rrr_ray.data.generation.errors import DialogueRejected, EndpointError
from rrr_ray.data.generation.plan import DialoguePlan, ExampleRotation, load_examples, plan_dialogue
from rrr_ray.data.generation.prompts import turn_messages, whole_messages
from rrr_ray.data.records import DialogueFormatError, DialogueRecord, Message, parse_turns
from rrr_ray.format import repair, validate


class DialogueResult(BaseModel):
    index: int
    conversation_id: str
    record: Optional[DialogueRecord] = None
    rejected: list[str] = Field(default_factory=list, description="Why it was rejected: validator error codes or http_*.")
    retries: int = 0
    format_retries: int = 0
    repaired: int = 0
    fatal: Optional[str] = None
    seconds: float = 0.0

    def count_retry(self) -> None:
        self.retries += 1


class DialogueGenerator:
    """Makes single dialogues with an async OpenAI client; one lives in each Ray worker."""

    def __init__(self, cfg: GenerationConfig):
        self.cfg = cfg
        self.model = cfg.resolved_model()
        self.mode = cfg.resolved_mode()
        self.client = EndpointClient(cfg)
        self.rotation = ExampleRotation(load_examples(cfg.examples), cfg.seed)
        self._extra: dict[str, Any] = {}
        self._sampling: dict[str, Any] = {}  # extra sampling fields (OpenAI's API has no top_k)
        if cfg.top_k and not is_openai(cfg.base_url):
            self._sampling["top_k"] = cfg.top_k
        if cfg.guided:
            from rrr_ray.format import guided_regex

            # rrr-ray's own endpoint reads ``guided``; vLLM's reads ``structured_outputs``; each ignores the other.
            self._extra = {"guided": True, "structured_outputs": {"regex": guided_regex()}}

    def sample_seed(self, index: int, *parts: int) -> int:
        """The sampling seed of one request: a function of (seed, dialogue, turn, attempt), so a
        rerun, a resume or another concurrency level asks for the same samples."""
        return random.Random(f"{self.cfg.seed}:sample:{index}:{':'.join(map(str, parts))}").randrange(2 ** 31)

    async def chat(self, messages: list[dict], temperature: float, max_tokens: int, result: DialogueResult,
                   rng: random.Random, guided: bool = True, seed: Optional[int] = None) -> str:
        """One chat completion; retries are counted in ``result``."""
        extra = {**self._sampling, **(self._extra if guided else {})}
        return await self.client.chat(messages, temperature=temperature, top_p=self.cfg.top_p, max_tokens=max_tokens,
                                      seed=seed, extra_body=extra or None, rng=rng, on_retry=result.count_retry)

    def check_reply(self, text: str, result: DialogueResult) -> tuple[Optional[str], list[str]]:
        """``(accepted reply, [])`` or ``(None, error codes)``."""
        v = validate(text)
        if v.valid:
            return text.strip(), []
        if self.cfg.repair:
            fixed, report = repair(text)
            if report.valid_after:
                result.repaired += 1
                return fixed, []
        return None, v.error_codes or ["invalid"]

    async def generate(self, index: int) -> DialogueResult:
        """Dialogue ``index``: a record, or the reasons it was rejected, or a fatal error."""
        plan = plan_dialogue(self.cfg, index, self.rotation)
        result = DialogueResult(index=index, conversation_id=plan.conversation_id)
        rng = random.Random(f"{self.cfg.seed}:requests:{index}")
        start = time.monotonic()
        try:
            example = self.rotation.pick(index)
            if self.mode == "turns":
                messages = await self._by_turns(plan, example, result, rng)
            else:
                messages = await self._whole(plan, example, result, rng)
            result.record = DialogueRecord.from_messages(plan.conversation_id, messages)
        except DialogueRejected as rej:
            result.rejected = rej.reasons
        except EndpointError as exc:
            if exc.fatal:
                result.fatal = exc.describe()
            else:
                result.rejected = [exc.code]
        result.seconds = time.monotonic() - start
        return result

    async def _by_turns(self, plan: DialoguePlan, example: DialogueRecord, result: DialogueResult,
                        rng: random.Random) -> list[Message]:
        history: list[Message] = []
        for turn, user_line in enumerate(plan.user_lines):
            history.append(Message(role="user", content=user_line))
            messages = turn_messages(plan, example, history, self.cfg.few_shot_turns)
            for attempt in range(self.cfg.format_retries + 1):
                text = await self.chat(messages, plan.temperature, self.cfg.max_tokens, result, rng,
                                       seed=self.sample_seed(plan.index, turn, attempt))
                reply, codes = self.check_reply(text, result)
                if reply is not None:
                    break
                if attempt < self.cfg.format_retries:
                    result.format_retries += 1
            else:
                raise DialogueRejected(codes)
            history.append(Message(role="assistant", content=reply))
        return history

    async def _whole(self, plan: DialoguePlan, example: DialogueRecord, result: DialogueResult,
                     rng: random.Random) -> list[Message]:
        messages = whole_messages(plan, example)
        codes: list[str] = []
        for attempt in range(self.cfg.format_retries + 1):
            text = await self.chat(messages, plan.temperature, self.cfg.max_tokens * plan.num_turns, result, rng,
                                   guided=False, seed=self.sample_seed(plan.index, attempt))
            try:
                parsed = parse_turns(text.strip().strip("`").strip(), plan.conversation_id)
                codes = self._whole_errors(parsed, result)
                if not codes:
                    return parsed
            except DialogueFormatError:
                codes = ["parse_error"]
            if attempt < self.cfg.format_retries:
                result.format_retries += 1
        raise DialogueRejected(sorted(set(codes)))

    def _whole_errors(self, parsed: list[Message], result: DialogueResult) -> list[str]:
        """Error codes of a parsed whole dialogue; accepted (possibly repaired) replies replace
        their originals in ``parsed``."""
        codes: list[str] = []
        if not parsed or parsed[0].role != "user" or not any(m.role == "assistant" for m in parsed):
            codes = ["parse_error"]
        for i, m in enumerate(parsed):
            if m.role == "assistant":
                reply, errs = self.check_reply(m.content, result)
                if reply is None:
                    codes += errs
                else:
                    parsed[i] = Message(role="assistant", content=reply)
            elif i and parsed[i - 1].role == m.role:
                codes.append("parse_error")
        return codes
