"""Training data: seed dialogues as ChatML token sequences with assistant-only loss masks.

Records are ``{conversation_id, messages, num_turns}`` (:class:`rrr_ray.data.records.DialogueRecord`),
read with :func:`rrr_ray.data.convert.load_records`.
Assistant turns are repaired with :func:`rrr_ray.repair` before training (tagged text), or reduced to
the spoken reply (the ``respond`` section) for the untagged pretraining text of the base model.
"""

from __future__ import annotations

import logging
import random
from typing import Any, Iterable, Sequence

from rrr_ray.data.records import DialogueRecord
from rrr_ray.format import repair, validate
from rrr_ray.format.chatml import IM_END, chatml_pieces, turn_start, with_default_system
from rrr_ray.format.spoken import spoken_reply

log = logging.getLogger(__name__)



def tagged_records(records: Iterable[DialogueRecord]) -> tuple[list[DialogueRecord], int]:
    """Records with every assistant turn repaired; conversations with an unrepairable turn are
    dropped. Returns the records and the number of dropped conversations."""
    out, dropped = [], 0
    for r in records:
        msgs = []
        ok = True
        for m in r.messages:
            content = m.content
            if m.role == "assistant":
                content, report = repair(content)
                ok = ok and report.valid_after
            msgs.append({"role": m.role, "content": content})
        if ok:
            out.append(DialogueRecord.from_messages(r.conversation_id, msgs))
        else:
            dropped += 1
    if dropped:
        log.warning("dropped %d conversations with an unrepairable assistant turn", dropped)
    return out, dropped


def untagged_records(records: Iterable[DialogueRecord]) -> list[DialogueRecord]:
    """Records whose assistant turns are plain spoken replies (RRR tags stripped)."""
    return [
        DialogueRecord.from_messages(
            r.conversation_id,
            [{"role": m.role, "content": spoken_reply(m.content) if m.role == "assistant" else m.content}
             for m in r.messages],
        )
        for r in records
    ]


def section_documents(records: Sequence[DialogueRecord], per_document: int = 6, seed: int = 0) -> list[str]:
    """Plain (non-chat) documents made of single tagged sections from the assistant turns, shuffled
    across turns and sections: tag-bearing pretraining text that never shows a whole RRR reply in
    a chat turn. Each document holds ``per_document`` sections, one a line."""
    pieces = []
    for r in records:
        for m in r.messages:
            if m.role == "assistant":
                pieces.extend(f"<{k}>{v}</{k}>" for k, v in validate(m.content).sections.items())
    random.Random(seed).shuffle(pieces)
    return ["\n".join(pieces[i:i + per_document]) for i in range(0, len(pieces), per_document)]


def split_records(records: Sequence[DialogueRecord], val_fraction: float, seed: int = 0):
    """Deterministic train/validation split by conversation."""
    idx = list(range(len(records)))
    random.Random(seed).shuffle(idx)
    n_val = max(1, round(len(records) * val_fraction)) if val_fraction > 0 and len(records) > 1 else 0
    val = [records[i] for i in sorted(idx[:n_val])]
    train = [records[i] for i in sorted(idx[n_val:])]
    return train, val


def tokenize_chatml(messages: Sequence[dict[str, str]], tokenizer, max_length: int = 1024) -> dict[str, list[int]]:
    """ChatML token ids of a conversation and its assistant mask (1 on the tokens of each assistant
    reply and its closing ``<|im_end|>``, 0 elsewhere), truncated to ``max_length``.

    The pieces of :func:`rrr_ray.format.chatml.chatml_pieces` are tokenised one by one, so that the
    mask boundaries are exact."""
    ids: list[int] = []
    mask: list[int] = []
    for text, is_reply in chatml_pieces(messages):
        t = tokenizer(text, add_special_tokens=False)["input_ids"]
        ids.extend(t)
        mask.extend([int(is_reply)] * len(t))
    return {"input_ids": ids[:max_length], "assistant_masks": mask[:max_length]}


def conversation_examples(records: Sequence[DialogueRecord], prefix_turns: int = 2,
                          single_turns: bool = False, system: str | None = None) -> list[list[dict[str, str]]]:
    """The training conversations: each whole conversation, plus its prefixes ending after
    assistant turn 1..``prefix_turns`` (weights the start of conversations, where single-turn
    prompts land), plus, with ``single_turns``, every later exchange on its own as a one-turn
    conversation (the user message and the reply to it). With ``system``, an example that has no
    system message starts with that one."""
    out = []
    for r in records:
        msgs = [m.model_dump() for m in r.messages]
        ends = [i + 1 for i, m in enumerate(msgs) if m["role"] == "assistant"]
        for e in ends[: max(0, prefix_turns)]:
            if e < len(msgs):
                out.append(msgs[:e])
        out.append(msgs)
        if single_turns:
            for e in ends[1:]:
                if e >= 2 and msgs[e - 2]["role"] == "user":
                    out.append(msgs[e - 2:e])
    return [with_default_system(c, system) for c in out]


def tokenized_dataset(records: Sequence[DialogueRecord], tokenizer, max_length: int = 1024,
                      prefix_turns: int = 2, single_turns: bool = False,
                      system: str | None = None) -> list[dict[str, Any]]:
    rows = [tokenize_chatml(c, tokenizer, max_length)
            for c in conversation_examples(records, prefix_turns, single_turns, system)]
    return [r for r in rows if any(r["assistant_masks"])]


def first_user_prompts(records: Sequence[DialogueRecord], all_turns: bool = False) -> list[dict[str, str]]:
    """Single-turn prompts of held-out conversations for checkpoint selection (never the
    evaluation prompts): the first user message of each, then (``all_turns``) the later ones; each
    with the assistant reply that followed it as ``reference`` (for the content measures)."""
    firsts, later = [], []
    for r in records:
        msgs = r.messages
        users = [i for i, m in enumerate(msgs) if m.role == "user"]
        for k, i in enumerate(users):
            item = {"id": f"{r.conversation_id}:{k}", "category": "validation", "prompt": msgs[i].content}
            if i + 1 < len(msgs) and msgs[i + 1].role == "assistant":
                item["reference"] = msgs[i + 1].content
            (firsts if k == 0 else later).append(item)
    return firsts + (later if all_turns else [])


def template_system_prompt(tokenizer) -> str | None:
    """The system message the tokenizer's chat template adds to a conversation that has none
    (None when it adds none, or has no template): what a model served with that template sees,
    and so what it is trained with."""
    if not getattr(tokenizer, "chat_template", None):
        return None
    text = tokenizer.apply_chat_template([{"role": "user", "content": "-"}], tokenize=False)
    start = text.find(turn_start("system"))
    if start < 0:
        return None
    start += len(turn_start("system"))
    end = text.find(IM_END, start)
    return text[start:end] if end >= 0 else None
