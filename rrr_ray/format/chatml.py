"""ChatML: the chat layout the models are trained and served with."""

from __future__ import annotations

from typing import Iterable, Mapping

IM_START = "<|im_start|>"
IM_END = "<|im_end|>"
ASSISTANT_HEADER = f"{IM_START}assistant\n"


def render_chatml(messages: Iterable[Mapping[str, str]], add_generation_prompt: bool = False) -> str:
    """Render messages as ChatML text (the same layout as the tokenizers' chat template)."""
    text = "".join(f"{IM_START}{m['role']}\n{m['content']}{IM_END}\n" for m in messages)
    return text + (ASSISTANT_HEADER if add_generation_prompt else "")


def extract_assistant_reply(text: str) -> str:
    """The last assistant turn of a ChatML-wrapped model output, without its markers.

    Text with no ChatML markers is returned as it is (stripped), so plain replies pass through.
    """
    start = text.rfind(ASSISTANT_HEADER)
    if start >= 0:
        text = text[start + len(ASSISTANT_HEADER):]
    end = text.find(IM_END)
    if end >= 0:
        text = text[:end]
    return text.strip()
