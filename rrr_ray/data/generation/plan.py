"""The deterministic plan of dialogue ``i``: id, topic, few-shot example, temperature, user lines.

Everything is a function of ``(seed, i)``, so a rerun or a resume makes the same dialogues.
"""

from __future__ import annotations

import random
from pathlib import Path

from pydantic import BaseModel

from rrr_ray.data.generation.config import GenerationConfig
from rrr_ray.data.generation.errors import GenerationError
from rrr_ray.data.generation.topics import GENERIC_FOLLOWUPS, TOPICS
from rrr_ray.data.records import DialogueFormatError, DialogueRecord, read_dialogues


def conversation_id(seed: int, index: int) -> str:
    """The id of dialogue ``index`` of a run with ``seed``: the same on every run and resume."""
    return f"gen-s{seed}-{index:06d}"


def load_examples(path: Path) -> list[DialogueRecord]:
    """The curated few-shot dialogues in ``path``."""
    try:
        return read_dialogues(Path(path))
    except DialogueFormatError as exc:
        raise GenerationError(f"cannot read few-shot examples: {exc}") from None


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
    """The plan of dialogue ``index``."""
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
