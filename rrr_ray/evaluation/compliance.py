"""RRR format compliance of a model's replies: the one place that scores it (training's in-loop
measurement, the default model's report and the benchmark all call it).

The strict rule is :func:`rrr_ray.validate` on the raw reply, with no repair
(:func:`reply_compliance`). :func:`score_replies` summarises replies already generated;
:func:`measure_compliance` generates them first through any backend: ``generate_fn`` takes a list of
user prompts and returns one reply per prompt (plain reply text, or ChatML-wrapped output).
"""

from __future__ import annotations

import logging
from collections import Counter, defaultdict
from typing import Any, Callable, Iterable, Mapping, Sequence

from rrr_ray.format import extract_assistant_reply, repair, validate

log = logging.getLogger(__name__)

GenerateFn = Callable[[list[str]], list[str]]


def reply_compliance(reply: str) -> tuple[bool, list[str]]:
    """Whether a reply is valid RRR as it is (strict: no repair), and its error codes, sorted."""
    v = validate(reply)
    return v.valid, sorted(set(v.error_codes))


def _as_prompt_dicts(prompts: Iterable[str | Mapping[str, str]]) -> list[dict[str, str]]:
    out = []
    for i, p in enumerate(prompts):
        if isinstance(p, str):
            out.append({"id": str(i), "category": "general", "prompt": p})
        else:
            out.append({"id": str(p.get("id", i)), "category": p.get("category", "general"), "prompt": p["prompt"]})
    return out


def score_replies(prompts: Sequence[str | Mapping[str, str]], replies: Sequence[str], samples_per_prompt: int = 1,
                  keep_examples: int = 3) -> dict[str, Any]:
    """Format compliance of ``replies``, one per entry of ``prompts`` (a prompt string, or a dict with
    ``prompt`` and optionally ``id`` and ``category``).

    Returns ``{"compliance", "repaired_compliance", "n", "valid", "by_category", "errors",
    "examples"}``: ``compliance`` is the strict share of replies that validate as they are,
    ``repaired_compliance`` the share valid after :func:`rrr_ray.repair`, ``errors`` counts the
    error codes, ``examples`` holds a few replies of each verdict."""
    batch = _as_prompt_dicts(prompts)
    if not batch:
        raise ValueError("no prompts to measure compliance on")
    if len(replies) != len(batch):
        raise ValueError(f"{len(replies)} replies for {len(batch)} prompts")
    valid = repaired_valid = 0
    errors: Counter[str] = Counter()
    per_cat: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    examples: dict[str, list[dict[str, str]]] = {"valid": [], "invalid": []}
    for p, raw in zip(batch, replies):
        reply = extract_assistant_reply(raw)
        ok, codes = reply_compliance(reply)
        repaired_valid += repair(reply)[1].valid_after
        valid += ok
        per_cat[p["category"]][0] += ok
        per_cat[p["category"]][1] += 1
        errors.update(codes)
        bucket = examples["valid" if ok else "invalid"]
        if len(bucket) < keep_examples:
            bucket.append({"prompt": p["prompt"], "reply": reply})
    n = len(batch)
    return {
        "compliance": valid / n,
        "repaired_compliance": repaired_valid / n,
        "n": n,
        "valid": valid,
        "prompts": n // samples_per_prompt,
        "samples_per_prompt": samples_per_prompt,
        "by_category": {c: {"compliance": v / t, "n": t} for c, (v, t) in sorted(per_cat.items())},
        "errors": dict(errors.most_common()),
        "examples": examples,
    }


def measure_compliance(generate_fn: GenerateFn, prompts: Sequence[str | Mapping[str, str]],
                       samples_per_prompt: int = 1, keep_examples: int = 3) -> dict[str, Any]:
    """Generate ``samples_per_prompt`` replies per prompt and score them (:func:`score_replies`)."""
    items = _as_prompt_dicts(prompts)
    if not items:
        raise ValueError("no prompts to measure compliance on")
    batch = [p for p in items for _ in range(samples_per_prompt)]
    replies = generate_fn([p["prompt"] for p in batch])
    if len(replies) != len(batch):
        raise ValueError(f"generate_fn returned {len(replies)} replies for {len(batch)} prompts")
    return score_replies(batch, replies, samples_per_prompt, keep_examples)


def hf_generate_fn(model, tokenizer, max_new_tokens: int = 256, temperature: float = 0.7,
                   batch_size: int = 64, seed: int = 0) -> GenerateFn:
    """A ``generate_fn`` over a transformers (or peft) causal LM, ChatML single-turn prompts,
    sampled at ``temperature`` (greedy when 0)."""
    import torch

    def generate(prompts: list[str]) -> list[str]:
        torch.manual_seed(seed)
        was_training = model.training
        model.eval()
        tokenizer.padding_side = "left"
        out: list[str] = []
        try:
            for i in range(0, len(prompts), batch_size):
                texts = [tokenizer.apply_chat_template([{"role": "user", "content": p}], tokenize=False,
                                                       add_generation_prompt=True) for p in prompts[i:i + batch_size]]
                enc = tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False)
                with torch.no_grad():
                    gen = model.generate(
                        **enc, max_new_tokens=max_new_tokens, do_sample=temperature > 0,
                        temperature=temperature if temperature > 0 else None, top_p=None, top_k=None,
                        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
                    )
                new = gen[:, enc["input_ids"].shape[1]:]
                out.extend(tokenizer.batch_decode(new, skip_special_tokens=True))
        finally:
            if was_training:
                model.train()
        return out

    return generate


def vllm_generate_fn(llm, max_new_tokens: int = 256, temperature: float = 0.7, seed: int = 0,
                     lora_request=None) -> GenerateFn:
    """A ``generate_fn`` over a ``vllm.LLM`` (chat API, so the model's chat template applies)."""
    from vllm import SamplingParams

    def generate(prompts: list[str]) -> list[str]:
        params = SamplingParams(max_tokens=max_new_tokens, temperature=temperature, seed=seed)
        convs = [[{"role": "user", "content": p}] for p in prompts]
        outs = llm.chat(convs, params, use_tqdm=False, lora_request=lora_request)
        return [o.outputs[0].text for o in outs]

    return generate
