"""Synthetic RRR dialogue generation, fanned out over Ray against any OpenAI-compatible endpoint.

Two ways to get a dialogue:

- ``turns`` (default for rrr-ray's own endpoint and small models): the job plays the user, from
  topic-based seed user lines, and asks the endpoint for each assistant reply as a chat
  completion, with a curated seed dialogue as few-shot context. Each reply is validated (and,
  when ``repair`` is on, repaired) with the format core; an invalid reply is asked for again.
- ``whole`` (the seed's way, default for OpenAI models): one completion returns the whole
  ``User: ... / Virtual Human: ...`` dialogue text, parsed with ``parse_turns`` and validated.

Everything about dialogue ``i`` (its id, topic, few-shot example, temperature, user lines) is a
function of ``(seed, i)``, so ``--resume`` can skip what is already on disk: the output folder
holds JSONL shards of accepted dialogues, each written atomically, and ``_state/`` holds the
rejections, the job's configuration and its summary.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import json
import logging
import math
import os
import random
import re
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any, Literal, Optional

from pydantic import BaseModel, Field

from rrr_ray.data.io import atomic_write_text
from rrr_ray.data.records import DialogueFormatError, DialogueRecord, Message, format_turns, parse_turns, read_dialogues, read_jsonl
from rrr_ray.format import repair, validate
from rrr_ray.format.spec import RULES, SECTIONS

log = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_EXAMPLES = REPO_ROOT / "data" / "seed" / "curated_seed_dialogues"
DEFAULT_BASE_URL = "http://127.0.0.1:8000/v1"
DEFAULT_MODEL = "rrr-tiny"
OPENAI_MODEL = "gpt-4o-mini"
STATE_DIR = "_state"
SHARD_RE = re.compile(r"^shard-(\d{5})\.jsonl$")

TOPICS: dict[str, dict[str, list[str]]] = {
    "work stress": {
        "openers": [
            "My manager keeps piling on work and I honestly can't keep up anymore.",
            "I have a huge deadline on Friday and I'm panicking a bit.",
            "Work has been so intense lately that I can't switch off in the evenings.",
        ],
        "followups": [
            "I just feel like if I say no, they'll think I'm not good enough.",
            "Even on weekends I keep checking my email.",
            "Maybe I should talk to someone at work about it, but I don't know who.",
        ],
    },
    "personal growth": {
        "openers": [
            "I want to become a more confident person but I don't know where to start.",
            "Lately I've been thinking a lot about who I actually want to be.",
            "I keep starting self-improvement plans and dropping them after a week.",
        ],
        "followups": [
            "I guess I compare myself to other people way too much.",
            "Small steps sound nice, but they feel so slow.",
            "What if I try and it turns out I can't really change?",
        ],
    },
    "learning to code": {
        "openers": [
            "I started learning Python last month and I already feel stuck.",
            "Everyone says coding is easy to pick up, but I keep getting lost in tutorials.",
            "I want to switch careers into software, but I'm scared I'm too old for it.",
        ],
        "followups": [
            "When I see an error message my mind just goes blank.",
            "I understand the examples, but I can't build anything on my own.",
            "Maybe I should pick a small project, like a to-do app?",
        ],
    },
    "time management": {
        "openers": [
            "I never seem to have enough time for the things that matter to me.",
            "I spend my whole day busy but at the end I feel like I did nothing.",
            "I keep procrastinating on everything, even the stuff I enjoy.",
        ],
        "followups": [
            "I've tried to-do lists, but they just get longer and longer.",
            "Mornings are the worst, I waste so much time on my phone.",
            "Maybe I'm just trying to do too many things at once.",
        ],
    },
    "relationships": {
        "openers": [
            "My best friend and I had a fight and we haven't talked in a week.",
            "I feel like my partner and I don't really listen to each other anymore.",
            "I moved to a new city and I find it really hard to make friends.",
        ],
        "followups": [
            "I want to reach out, but I don't know what to say first.",
            "Part of me thinks it was my fault, honestly.",
            "I'm worried they'll just brush me off.",
        ],
    },
    "wellbeing": {
        "openers": [
            "I haven't been sleeping well and it's starting to affect everything.",
            "I feel tired all the time, even after a long weekend.",
            "I want to take better care of myself but I never find the energy.",
        ],
        "followups": [
            "I know I should exercise more, but it feels like a chore.",
            "Sometimes I just feel kind of flat, you know?",
            "Maybe a short walk every day would be a start.",
        ],
    },
}
GENERIC_FOLLOWUPS = [
    "Thanks, that actually helps a bit.",
    "Hmm, I hadn't thought about it that way.",
    "Okay... but what should I do first?",
]


class GenerationError(RuntimeError):
    """A problem that stops the whole job (bad key, unreachable endpoint, bad arguments)."""


def _env_base_url() -> str:
    return os.environ.get("OPENAI_BASE_URL") or DEFAULT_BASE_URL


def _env_api_key() -> str:
    return os.environ.get("OPENAI_API_KEY") or "EMPTY"


def is_openai(base_url: str) -> bool:
    return "api.openai.com" in base_url


class GenerationConfig(BaseModel):
    """Everything the generation job needs; the CLI fills it from arguments."""

    base_url: str = Field(default_factory=_env_base_url,
                          description="OpenAI-compatible API root (…/v1); defaults to $OPENAI_BASE_URL, else rrr-ray's own endpoint.")
    api_key: str = Field(default_factory=_env_api_key, repr=False,
                         description="API key; defaults to $OPENAI_API_KEY ('EMPTY' for local servers).")
    model: Optional[str] = Field(default=None, description="Served model name; default rrr-tiny, or gpt-4o-mini for api.openai.com.")
    num_dialogues: int = Field(default=10, ge=1, description="How many accepted dialogues the output folder must hold.")
    concurrency: int = Field(default=4, ge=1, description="Most dialogues in flight at once (across all workers).")
    workers: Optional[int] = Field(default=None, ge=1, description="Ray actors; default min(concurrency, 2). Each is async.")
    output: Path = Field(default=Path("out/generated"), description="Folder for the JSONL shards.")
    resume: bool = Field(default=False, description="Continue a previous run in the same folder.")
    seed: int = Field(default=0, description="Fixes ids, topics, examples, temperatures and user lines.")
    mode: Literal["auto", "turns", "whole"] = Field(
        default="auto", description="turns: one completion per assistant reply; whole: one completion per dialogue; auto: whole for OpenAI.")
    min_turns: int = Field(default=2, ge=1, description="Fewest assistant replies per dialogue.")
    max_turns: int = Field(default=3, ge=1, description="Most assistant replies per dialogue.")
    few_shot_turns: int = Field(default=2, ge=0, description="Exchanges of the curated example given as few-shot context (turns mode).")
    max_tokens: int = Field(default=256, ge=16, description="Completion budget per reply (turns) or per dialogue x turns (whole).")
    temperature: float = Field(default=0.8, ge=0, le=2, description="Base sampling temperature.")
    temperature_jitter: float = Field(default=0.15, ge=0, le=1, description="Each dialogue's temperature is base ± jitter.")
    top_p: float = Field(default=1.0, gt=0, le=1,
                         description="Nucleus sampling (OpenAI's default, 1.0, is off: on a CPU engine it sorts the vocabulary per token).")
    top_k: int = Field(default=40, ge=0,
                       description="Top-k sampling, sent to rrr-ray and vLLM servers (not to api.openai.com); 0 leaves the server's.")
    max_retries: int = Field(default=4, ge=0, description="Retries of one request on connection errors, timeouts, 429 and 5xx.")
    backoff_base: float = Field(default=0.5, ge=0, description="First retry delay in seconds; doubles each retry (with jitter).")
    backoff_max: float = Field(default=8.0, ge=0, description="Longest retry delay in seconds.")
    format_retries: int = Field(default=2, ge=0, description="New samples asked for a reply that fails validation.")
    repair: bool = Field(default=True, description="Accept a reply that the format core's repair makes valid.")
    guided: bool = Field(default=False, description="Ask the server for guided decoding with the RRR regex (rrr-ray and vLLM servers).")
    request_timeout: float = Field(default=120.0, gt=0, description="Seconds before one request times out.")
    shard_size: int = Field(default=10, ge=1, description="Accepted dialogues per JSONL shard.")
    max_attempts: Optional[int] = Field(default=None, ge=1, description="Stop after this many dialogue attempts; default 3N+10.")
    examples: Path = Field(default=DEFAULT_EXAMPLES, description="Curated dialogues used as few-shot examples.")
    topics: list[str] = Field(default_factory=lambda: list(TOPICS), description="Topics, drawn per dialogue.")
    progress: bool = Field(default=True, description="Show a progress bar.")

    def resolved_model(self) -> str:
        return self.model or (OPENAI_MODEL if is_openai(self.base_url) else DEFAULT_MODEL)

    def resolved_mode(self) -> str:
        if self.mode != "auto":
            return self.mode
        return "whole" if is_openai(self.base_url) or self.resolved_model().startswith("gpt-") else "turns"

    def resolved_attempts(self) -> int:
        return self.max_attempts or 3 * self.num_dialogues + 10


# -- deterministic plan ------------------------------------------------------------------------

def conversation_id(seed: int, index: int) -> str:
    """The id of dialogue ``index`` of a run with ``seed``: the same on every run and resume."""
    return f"gen-s{seed}-{index:06d}"


class ExampleRotation:
    """Few-shot examples drawn at random, none reused until all have been used (as the seed did).

    Deterministic per index: indices ``[k*n, (k+1)*n)`` use a seeded permutation of the ``n``
    examples, so dialogue ``i`` always gets the same example, whichever worker makes it.
    """

    def __init__(self, examples: list[DialogueRecord], seed: int = 0):
        if not examples:
            raise GenerationError("no few-shot examples: the examples folder holds no dialogues")
        self.examples = examples
        self.seed = seed
        self._perms: dict[int, list[int]] = {}

    def index_for(self, index: int) -> int:
        n = len(self.examples)
        cycle = index // n
        perm = self._perms.get(cycle)
        if perm is None:
            perm = list(range(n))
            random.Random(f"{self.seed}:examples:{cycle}").shuffle(perm)
            self._perms[cycle] = perm
        return perm[index % n]

    def pick(self, index: int) -> DialogueRecord:
        return self.examples[self.index_for(index)]


class DialoguePlan(BaseModel):
    index: int
    conversation_id: str
    topic: str
    example_id: str
    temperature: float
    num_turns: int
    user_lines: list[str]


def plan_dialogue(cfg: GenerationConfig, index: int, rotation: ExampleRotation) -> DialoguePlan:
    rng = random.Random(f"{cfg.seed}:dialogue:{index}")
    topic = rng.choice(cfg.topics)
    lines = TOPICS.get(topic, {"openers": [f"I'd like to talk about {topic}."], "followups": []})
    n = rng.randint(cfg.min_turns, max(cfg.min_turns, cfg.max_turns))
    followups = lines["followups"][:]
    rng.shuffle(followups)
    followups += rng.sample(GENERIC_FOLLOWUPS, len(GENERIC_FOLLOWUPS))
    users = [rng.choice(lines["openers"])] + followups[: n - 1]
    while len(users) < n:
        users.append(rng.choice(GENERIC_FOLLOWUPS))
    temp = cfg.temperature + rng.uniform(-cfg.temperature_jitter, cfg.temperature_jitter)
    example = rotation.pick(index)
    return DialoguePlan(index=index, conversation_id=conversation_id(cfg.seed, index), topic=topic,
                        example_id=example.conversation_id, temperature=round(min(2.0, max(0.0, temp)), 3),
                        num_turns=n, user_lines=users)


def format_description() -> str:
    """The reply layout, from the format specification."""
    layout = "\n".join(f"{s.open_tag}{'*' if s.starred else ''}{s.meaning}{'*' if s.starred else ''}{s.close_tag}"
                       for s in SECTIONS)
    rules = "\n".join(f"- {rule}" for rule in RULES.values())
    return f"{layout}\n\nRules:\n{rules}"


TURN_SYSTEM_PROMPT = (
    "You are a warm, attentive virtual human having a supportive conversation. "
    "Answer every user message with exactly three sections, in this layout:\n\n{layout}"
)
WHOLE_SYSTEM_PROMPT = (
    "You write realistic training dialogues between a User and a Virtual Human. Every Virtual Human "
    "turn has exactly three sections, in this layout:\n\n{layout}"
)
WHOLE_USER_PROMPT = (
    "Here is an example dialogue:\n\n{example}\n"
    "Write a new dialogue of exactly {n} exchanges about {topic}. The user opens with something like: "
    "\"{opener}\". Use exactly the same layout: 'User:' lines and 'Virtual Human:' blocks with the three "
    "tagged sections. Output only the dialogue."
)


def turn_messages(plan: DialoguePlan, example: DialogueRecord, history: list[Message], few_shot_turns: int) -> list[dict]:
    msgs = [{"role": "system", "content": TURN_SYSTEM_PROMPT.format(layout=format_description())}]
    shot: list[Message] = []
    for m in example.messages:
        if m.role == "assistant" and sum(x.role == "assistant" for x in shot) >= few_shot_turns:
            break
        if m.role != "system":
            shot.append(m)
    while shot and shot[-1].role != "assistant":
        shot.pop()
    msgs += [{"role": m.role, "content": m.content} for m in shot]
    msgs += [{"role": m.role, "content": m.content} for m in history]
    return msgs


def whole_messages(plan: DialoguePlan, example: DialogueRecord) -> list[dict]:
    return [
        {"role": "system", "content": WHOLE_SYSTEM_PROMPT.format(layout=format_description())},
        {"role": "user", "content": WHOLE_USER_PROMPT.format(example=format_turns(example.messages), n=plan.num_turns,
                                                             topic=plan.topic, opener=plan.user_lines[0])},
    ]


# -- one dialogue ------------------------------------------------------------------------------

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


class _Rejected(Exception):
    def __init__(self, reasons: list[str]):
        super().__init__(", ".join(reasons))
        self.reasons = reasons


class _Fatal(Exception):
    pass


def classify_openai_error(exc: Exception, base_url: str, model: str) -> tuple[str, str]:
    """``(kind, message)`` with kind ``retry``, ``reject`` or ``fatal``."""
    import openai

    if isinstance(exc, openai.AuthenticationError):
        return "fatal", f"authentication failed at {base_url} (HTTP 401): check OPENAI_API_KEY"
    if isinstance(exc, openai.PermissionDeniedError):
        return "fatal", f"permission denied at {base_url} (HTTP 403): check OPENAI_API_KEY"
    if isinstance(exc, openai.NotFoundError):
        return "fatal", f"model {model!r} or route not found at {base_url} (HTTP 404)"
    if isinstance(exc, (openai.APITimeoutError, openai.APIConnectionError)):
        return "retry", f"cannot reach {base_url}: {type(exc).__name__}: {exc}"
    if isinstance(exc, openai.APIStatusError):
        code = exc.status_code
        if code in (408, 409, 429) or code >= 500:
            return "retry", f"HTTP {code} from {base_url}"
        return "reject", f"http_{code}"
    return "fatal", f"unexpected error talking to {base_url}: {type(exc).__name__}: {exc}"


def backoff_delay(attempt: int, base: float, cap: float, rng: random.Random) -> float:
    """Exponential backoff with full jitter: uniform in [d/2, d], d = min(cap, base * 2**attempt)."""
    d = min(cap, base * (2 ** attempt))
    return d / 2 + rng.random() * d / 2


class DialogueGenerator:
    """Makes single dialogues with an async OpenAI client; one lives in each Ray worker."""

    def __init__(self, cfg: GenerationConfig):
        from openai import AsyncOpenAI

        self.cfg = cfg
        self.model = cfg.resolved_model()
        self.mode = cfg.resolved_mode()
        self.client = AsyncOpenAI(base_url=cfg.base_url, api_key=cfg.api_key, max_retries=0,
                                  timeout=cfg.request_timeout)
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
        """One chat completion with bounded retries and exponential backoff."""
        attempt = 0
        while True:
            try:
                extra = {**self._sampling, **(self._extra if guided else {})}
                resp = await self.client.chat.completions.create(
                    model=self.model, messages=messages, temperature=temperature, top_p=self.cfg.top_p,
                    max_tokens=max_tokens, seed=seed, extra_body=extra or None)
                return resp.choices[0].message.content or ""
            except Exception as exc:  # classified below
                kind, message = classify_openai_error(exc, self.cfg.base_url, self.model)
                if kind == "fatal":
                    raise _Fatal(message) from None
                if kind == "reject":
                    raise _Rejected([message]) from None
                if attempt >= self.cfg.max_retries:
                    if "cannot reach" in message:
                        raise _Fatal(f"{message} (after {attempt + 1} attempts)") from None
                    raise _Rejected([message.split(" from ")[0].lower().replace(" ", "_")]) from None
                delay = backoff_delay(attempt, self.cfg.backoff_base, self.cfg.backoff_max, rng)
                log.warning("%s; retry %d/%d in %.1fs", message, attempt + 1, self.cfg.max_retries, delay)
                result.retries += 1
                attempt += 1
                await asyncio.sleep(delay)

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
        except _Rejected as rej:
            result.rejected = rej.reasons
        except _Fatal as fatal:
            result.fatal = str(fatal)
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
                raise _Rejected(codes)
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
                codes = []
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
                if not codes:
                    return parsed
            except DialogueFormatError:
                codes = ["parse_error"]
            if attempt < self.cfg.format_retries:
                result.format_retries += 1
        raise _Rejected(sorted(set(codes)))


def load_examples(path: Path) -> list[DialogueRecord]:
    try:
        return read_dialogues(Path(path))
    except DialogueFormatError as exc:
        raise GenerationError(f"cannot read few-shot examples: {exc}") from None


# -- endpoint check ----------------------------------------------------------------------------

def check_endpoint(cfg: GenerationConfig) -> None:
    """Fail fast, with one clear line, on a bad key, an unreachable endpoint or an unknown model."""
    import openai

    model = cfg.resolved_model()
    client = openai.OpenAI(base_url=cfg.base_url, api_key=cfg.api_key, max_retries=0,
                           timeout=min(cfg.request_timeout, 30.0))
    rng = random.Random(cfg.seed)
    attempt = 0
    while True:
        try:
            served = [m.id for m in client.models.list()]
            break
        except Exception as exc:
            kind, message = classify_openai_error(exc, cfg.base_url, model)
            if kind == "retry" and attempt < cfg.max_retries:
                delay = backoff_delay(attempt, cfg.backoff_base, cfg.backoff_max, rng)
                log.warning("%s; retry %d/%d in %.1fs", message, attempt + 1, cfg.max_retries, delay)
                attempt += 1
                time.sleep(delay)
                continue
            if kind == "reject":
                message = f"unexpected {message.replace('_', ' ').upper()} from {cfg.base_url}/models"
            raise GenerationError(message + (f" (after {attempt + 1} attempts)" if kind == "retry" else "")) from None
    if served and model not in served:
        raise GenerationError(f"model {model!r} is not served at {cfg.base_url}; it serves: {', '.join(served[:10])}")


# -- output folder -----------------------------------------------------------------------------

class OutputState(BaseModel):
    """What an output folder already holds."""

    accepted: set[str] = Field(default_factory=set)
    rejected: set[str] = Field(default_factory=set)
    next_seq: int = 0
    duplicates: list[str] = Field(default_factory=list)


def shard_paths(output: Path) -> list[Path]:
    output = Path(output)
    return sorted(p for p in output.iterdir() if SHARD_RE.match(p.name)) if output.is_dir() else []


def read_output_state(output: Path) -> OutputState:
    state = OutputState()
    seqs = [-1]
    for shard in shard_paths(output):
        seqs.append(int(SHARD_RE.match(shard.name).group(1)))
        for rec in read_jsonl(shard):
            if rec.conversation_id in state.accepted:
                state.duplicates.append(rec.conversation_id)
            state.accepted.add(rec.conversation_id)
    state_dir = Path(output) / STATE_DIR
    if state_dir.is_dir():
        for p in sorted(state_dir.glob("rejected-*.json")):
            seqs.append(int(p.stem.split("-")[1]))
            state.rejected.update(item["conversation_id"] for item in json.loads(p.read_text()))
    state.next_seq = max(seqs) + 1
    return state


def prepare_output(cfg: GenerationConfig) -> OutputState:
    out = Path(cfg.output)
    if out.exists() and not out.is_dir():
        raise GenerationError(f"{out} exists and is not a folder")
    out.mkdir(parents=True, exist_ok=True)
    for tmp in list(out.glob(".shard-*.tmp")) + list(out.glob(f"{STATE_DIR}/.*.tmp")):
        tmp.unlink()  # left by a crash mid-write: never part of the output
    state = read_output_state(out)
    cfg_path = out / STATE_DIR / "config.json"
    if (state.accepted or state.rejected) and not cfg.resume:
        raise GenerationError(f"{out} already holds {len(state.accepted)} generated dialogues; "
                              "pass --resume to continue, or choose an empty folder")
    if cfg.resume and cfg_path.is_file():
        previous = json.loads(cfg_path.read_text())
        if previous.get("seed") != cfg.seed:
            raise GenerationError(f"--seed {cfg.seed} differs from the seed {previous.get('seed')} that {out} was generated with")
    if state.duplicates:
        log.warning("%s holds duplicated ids: %s", out, ", ".join(state.duplicates[:5]))
    atomic_write_text(cfg_path, json.dumps(cfg.model_dump(mode="json", exclude={"api_key"}), indent=2) + "\n")
    return state


# -- executors: Ray (the job) or a local event loop (tests, debugging) -------------------------

class _RayExecutor:
    def __init__(self, cfg: GenerationConfig):
        import ray

        self.ray = ray
        if not ray.is_initialized():
            if os.environ.get("RAY_ADDRESS"):
                ray.init(address=os.environ["RAY_ADDRESS"], logging_level=logging.WARNING)
            else:
                ray.init(num_cpus=2, include_dashboard=False, logging_level=logging.WARNING)
            self._owns_ray = True
        else:
            self._owns_ray = False
        n = cfg.workers or min(cfg.concurrency, 2)
        per = math.ceil(cfg.concurrency / n)
        actor_cls = ray.remote(num_cpus=0, max_concurrency=per)(GeneratorActor)
        data = cfg.model_dump(mode="json")
        self.actors = [actor_cls.remote(data) for _ in range(n)]
        ray.get([a.ready.remote() for a in self.actors])  # started: throughput is timed from here
        self.load = [0] * n
        self.where: dict[Any, int] = {}

    def submit(self, index: int):
        i = min(range(len(self.actors)), key=self.load.__getitem__)
        ref = self.actors[i].generate.remote(index)
        self.load[i] += 1
        self.where[ref] = i
        return ref

    def wait(self, pending: list) -> tuple[Any, DialogueResult]:
        ready, _ = self.ray.wait(pending, num_returns=1)
        ref = ready[0]
        self.load[self.where.pop(ref)] -= 1
        return ref, DialogueResult.model_validate(self.ray.get(ref))

    def close(self) -> None:
        for a in self.actors:
            self.ray.kill(a)


class GeneratorActor:
    """The Ray actor (async: many dialogues in flight per process)."""

    def __init__(self, cfg: dict):
        logging.basicConfig(level=logging.WARNING)
        self.gen = DialogueGenerator(GenerationConfig.model_validate(cfg))

    async def generate(self, index: int) -> dict:
        return (await self.gen.generate(index)).model_dump(mode="json")

    def ready(self) -> bool:
        return True


class _LocalExecutor:
    def __init__(self, cfg: GenerationConfig):
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.gen = asyncio.run_coroutine_threadsafe(self._make(cfg), self.loop).result()

    @staticmethod
    async def _make(cfg: GenerationConfig) -> DialogueGenerator:
        return DialogueGenerator(cfg)

    def submit(self, index: int):
        return asyncio.run_coroutine_threadsafe(self.gen.generate(index), self.loop)

    def wait(self, pending: list) -> tuple[Any, DialogueResult]:
        done, _ = concurrent.futures.wait(pending, return_when=concurrent.futures.FIRST_COMPLETED)
        fut = next(iter(done))
        return fut, fut.result()

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout=5)


# -- the job -----------------------------------------------------------------------------------

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
    output: str

    def lines(self) -> list[str]:
        reasons = ", ".join(f"{k}: {v}" for k, v in sorted(self.rejected_reasons.items())) or "none"
        return [
            f"generated {self.generated} dialogues in {self.elapsed_s:.1f}s ({self.dialogues_per_minute:.1f}/min, "
            f"concurrency {self.concurrency}, mode {self.mode}, model {self.model})",
            f"folder {self.output} holds {self.total}/{self.requested} (resumed with {self.resumed_with})",
            f"rejected {self.rejected} ({reasons}); retries {self.retries}; format retries {self.format_retries}; "
            f"repaired {self.repaired}",
        ]


def run_generation(cfg: GenerationConfig, use_ray: bool = True) -> GenerationSummary:
    """Generate until ``cfg.output`` holds ``cfg.num_dialogues`` accepted dialogues."""
    from tqdm import tqdm

    if cfg.min_turns > cfg.max_turns:
        raise GenerationError(f"--min-turns {cfg.min_turns} is larger than --max-turns {cfg.max_turns}")
    unknown = [t for t in cfg.topics if t not in TOPICS]
    if unknown:
        log.warning("topics without seed user lines (a generic opener is used): %s", ", ".join(unknown))
    load_examples(cfg.examples)
    state = prepare_output(cfg)
    start_total = len(state.accepted)
    done = state.accepted | state.rejected
    out = Path(cfg.output)
    seq = state.next_seq
    buffer: list[DialogueRecord] = []
    rejected_buffer: list[dict] = []
    totals = Counter()
    reasons: Counter = Counter()
    accepted = start_total
    attempts = 0

    def flush() -> None:
        nonlocal seq, buffer, rejected_buffer
        if not buffer and not rejected_buffer:
            return
        if buffer:
            from rrr_ray.data.records import records_to_jsonl

            atomic_write_text(out / f"shard-{seq:05d}.jsonl", records_to_jsonl(buffer))
        if rejected_buffer:
            atomic_write_text(out / STATE_DIR / f"rejected-{seq:05d}.json", json.dumps(rejected_buffer, indent=1) + "\n")
        seq += 1
        buffer, rejected_buffer = [], []

    if accepted < cfg.num_dialogues:
        check_endpoint(cfg)
    executor = None
    t0 = time.monotonic()
    bar = tqdm(total=cfg.num_dialogues, initial=min(accepted, cfg.num_dialogues), unit="dlg", desc="generating",
               disable=not cfg.progress, dynamic_ncols=True)
    try:
        if accepted < cfg.num_dialogues:
            executor = (_RayExecutor if use_ray else _LocalExecutor)(cfg)
        t0 = time.monotonic()  # throughput is measured from the first request, not from cluster start
        index = 0
        pending: dict[Any, int] = {}
        limit = cfg.resolved_attempts()
        while accepted < cfg.num_dialogues:
            while len(pending) < cfg.concurrency and accepted + len(pending) < cfg.num_dialogues and attempts < limit:
                while conversation_id(cfg.seed, index) in done:
                    index += 1
                pending[executor.submit(index)] = index
                index += 1
                attempts += 1
            if not pending:
                break
            ref, res = executor.wait(list(pending))
            pending.pop(ref)
            totals["retries"] += res.retries
            totals["format_retries"] += res.format_retries
            totals["repaired"] += res.repaired
            if res.fatal:
                raise GenerationError(res.fatal)
            if res.record is not None:
                buffer.append(res.record)
                accepted += 1
                bar.update(1)
            else:
                totals["rejected"] += 1
                reasons.update(set(res.rejected))
                rejected_buffer.append({"conversation_id": res.conversation_id, "reasons": res.rejected})
                log.info("rejected %s: %s", res.conversation_id, ", ".join(res.rejected))
            bar.set_postfix(rejected=totals["rejected"], retries=totals["retries"])
            if len(buffer) >= cfg.shard_size or len(rejected_buffer) >= cfg.shard_size:
                flush()
        if accepted < cfg.num_dialogues:
            log.warning("stopped after %d attempts with %d/%d dialogues; raise --max-attempts or check the rejections",
                        attempts, accepted, cfg.num_dialogues)
    finally:
        flush()  # whatever was accepted is kept, even when the job stops on an error
        bar.close()
        if executor is not None:
            executor.close()
    elapsed = time.monotonic() - t0
    generated = accepted - start_total
    summary = GenerationSummary(
        requested=cfg.num_dialogues, total=accepted, generated=generated, resumed_with=start_total,
        rejected=totals["rejected"], rejected_reasons=dict(reasons), retries=totals["retries"],
        format_retries=totals["format_retries"], repaired=totals["repaired"], attempts=attempts,
        elapsed_s=round(elapsed, 3), dialogues_per_minute=round(60 * generated / elapsed, 3) if elapsed > 0 else 0.0,
        mode=cfg.resolved_mode(), model=cfg.resolved_model(), concurrency=cfg.concurrency, output=str(out))
    atomic_write_text(out / STATE_DIR / "summary.json", summary.model_dump_json(indent=2) + "\n")
    for line in summary.lines():
        log.info(line)
    return summary
