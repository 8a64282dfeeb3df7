"""The chat messages sent for one reply (``turns`` mode) or one whole dialogue (``whole`` mode)."""

from __future__ import annotations

from rrr_ray.data.generation.plan import DialoguePlan
from rrr_ray.data.records import DialogueRecord, Message, format_turns
from rrr_ray.format.spec import RULES, SECTIONS

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


def format_description() -> str:
    """The reply layout, from the format specification."""
    layout = "\n".join(f"{s.open_tag}{'*' if s.starred else ''}{s.meaning}{'*' if s.starred else ''}{s.close_tag}"
                       for s in SECTIONS)
    rules = "\n".join(f"- {rule}" for rule in RULES.values())
    return f"{layout}\n\nRules:\n{rules}"


def turn_messages(plan: DialoguePlan, example: DialogueRecord, history: list[Message], few_shot_turns: int) -> list[dict]:
    """System prompt, the first ``few_shot_turns`` exchanges of ``example``, then ``history``."""
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
    """System prompt and one user message asking for the whole dialogue of ``plan``."""
    return [
        {"role": "system", "content": WHOLE_SYSTEM_PROMPT.format(layout=format_description())},
        {"role": "user", "content": WHOLE_USER_PROMPT.format(example=format_turns(example.messages), n=plan.num_turns,
                                                             topic=plan.topic, opener=plan.user_lines[0])},
    ]
