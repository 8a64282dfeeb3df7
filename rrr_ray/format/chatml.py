"""ChatML: the chat layout the models are trained and served with.

This module is the one definition of the layout: each message is
``<|im_start|>{role}\\n{content}<|im_end|>\\n``, and a generation prompt is ``<|im_start|>assistant\\n``.
:func:`render_chatml` writes it as text, :func:`chatml_pieces` as pieces that mark the assistant
replies (for loss masks), and :data:`CHAT_TEMPLATE` is the same layout as a tokenizer chat template.
"""

from __future__ import annotations

from typing import Iterable, Iterator, Mapping

IM_START = "<|im_start|>"
IM_END = "<|im_end|>"
SEPARATOR = "\n"
"""Ends the role line and follows each closing ``IM_END``."""


def turn_start(role: str) -> str:
    """The text that opens a message of ``role``."""
    return f"{IM_START}{role}{SEPARATOR}"


ASSISTANT_HEADER = turn_start("assistant")


def chatml_pieces(messages: Iterable[Mapping[str, str]],
                  add_generation_prompt: bool = False) -> Iterator[tuple[str, bool]]:
    """The ChatML text of ``messages`` as consecutive ``(text, is_reply)`` pieces.

    ``is_reply`` is true exactly on each assistant message's content with its closing ``IM_END``
    (what a model learns to generate); joined, the pieces are :func:`render_chatml`'s text.
    """
    for m in messages:
        yield turn_start(m["role"]), False
        if m["role"] == "assistant":
            yield f"{m['content']}{IM_END}", True
            yield SEPARATOR, False
        else:
            yield f"{m['content']}{IM_END}{SEPARATOR}", False
    if add_generation_prompt:
        yield ASSISTANT_HEADER, False


def render_chatml(messages: Iterable[Mapping[str, str]], add_generation_prompt: bool = False) -> str:
    """Render messages as ChatML text (the same layout as :data:`CHAT_TEMPLATE`)."""
    return "".join(text for text, _ in chatml_pieces(messages, add_generation_prompt))


def _jinja_str(text: str) -> str:
    """``text`` as a Jinja string literal."""
    escaped = text.replace("\\", "\\\\").replace("'", "\\'").replace("\n", "\\n")
    return f"'{escaped}'"


def with_default_system(messages: Iterable[Mapping[str, str]], system: str | None) -> list[dict[str, str]]:
    """``messages`` with a leading ``system`` message added when they bring none (``system`` None:
    unchanged). What :func:`chat_template` does for the same ``system``."""
    msgs = [dict(m) for m in messages]
    if system is not None and (not msgs or msgs[0]["role"] != "system"):
        msgs.insert(0, {"role": "system", "content": system})
    return msgs


def chat_template(default_system: str | None = None) -> str:
    """The layout of :func:`chatml_pieces` as a Hugging Face chat template; its ``generation`` blocks
    mark the reply pieces for ``return_assistant_tokens_mask``. With ``default_system``, a
    conversation that does not start with a system message gets that one."""
    system = ""
    if default_system is not None:
        system = ("{% if messages | length == 0 or messages[0]['role'] != 'system' %}"
                  "{{ " + _jinja_str(turn_start("system") + default_system + IM_END + SEPARATOR) + " }}"
                  "{% endif %}")
    return (
        system
        + "{% for message in messages %}"
        "{{ " + _jinja_str(IM_START) + " + message['role'] + " + _jinja_str(SEPARATOR) + " }}"
        "{% if message['role'] == 'assistant' %}"
        "{% generation %}{{ message['content'] + " + _jinja_str(IM_END) + " }}{% endgeneration %}"
        "{{ " + _jinja_str(SEPARATOR) + " }}"
        "{% else %}{{ message['content'] + " + _jinja_str(IM_END + SEPARATOR) + " }}{% endif %}"
        "{% endfor %}"
        "{% if add_generation_prompt %}{{ " + _jinja_str(ASSISTANT_HEADER) + " }}{% endif %}"
    )


CHAT_TEMPLATE = chat_template()
"""The ChatML template with no default system message (the from-scratch ``rrr-tiny`` models)."""


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
