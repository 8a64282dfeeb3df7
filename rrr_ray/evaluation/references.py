"""Reference replies, the seed benchmark's way: for each prompt, the assistant reply that follows
the user turn of the dialogue data most similar to it (MiniLM cosine). A prompt's own
``reference`` field, when its file has one, is used instead."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
from pydantic import BaseModel, Field

from rrr_ray.data.convert import load_records
from rrr_ray.format import repair


class Reference(BaseModel):
    """The reply a generation is compared with, and where it came from."""

    text: str
    source: str = Field(description="'prompt_file', or 'nearest_user_turn' (looked up in the dialogue data).")
    conversation_id: str | None = None
    user_turn: str | None = Field(None, description="The user turn it answers (nearest_user_turn only).")
    similarity: float | None = Field(None, description="MiniLM cosine of that user turn and the prompt.")


def dialogue_pairs(paths: Iterable[str | Path]) -> list[tuple[str, str, str]]:
    """``(conversation_id, user turn, the assistant reply after it)`` of every dialogue; replies
    are repaired (the seed data holds a few unclosed tags)."""
    pairs = []
    for record in load_records(paths):
        msgs = record.messages
        for user, reply in zip(msgs, msgs[1:]):
            if user.role == "user" and reply.role == "assistant":
                pairs.append((record.conversation_id, user.content, repair(reply.content)[0]))
    return pairs


@lru_cache(maxsize=4)
def _embedded_pairs(data: tuple[str, ...]) -> tuple[list[tuple[str, str, str]], np.ndarray]:
    """The dialogue pairs of ``data`` and their user turns' embeddings (once per process)."""
    from rrr_ray.evaluation.embeddings import embed

    pairs = dialogue_pairs(data)
    if not pairs:
        raise ValueError("the dialogue data holds no user turn followed by an assistant reply")
    return pairs, embed([u for _, u, _ in pairs])


def find_references(prompts: Sequence[dict[str, str]], data: Iterable[str | Path]) -> dict[str, Reference]:
    """The reference of each prompt, by prompt id."""
    out: dict[str, Reference] = {p["id"]: Reference(text=p["reference"], source="prompt_file")
                                 for p in prompts if p.get("reference")}
    todo = [p for p in prompts if p["id"] not in out]
    if not todo:
        return out
    from rrr_ray.evaluation.embeddings import embed

    pairs, users = _embedded_pairs(tuple(str(p) for p in data))
    queries = embed([p["prompt"] for p in todo])
    sims = queries @ users.T
    for p, row in zip(todo, sims):
        best = int(row.argmax())
        cid, user, reply = pairs[best]
        out[p["id"]] = Reference(text=reply, source="nearest_user_turn", conversation_id=cid, user_turn=user,
                                 similarity=float(row[best]))
    return out
