"""The default model's report: format and coherence of the merged fine-tune, unguided and guided,
beside its base and the seed's curated replies (``jobs.report_default_model`` writes it as JSON;
the model card quotes it).

- **Format**: strict compliance (:mod:`rrr_ray.evaluation.compliance`) of replies from the real
  vLLM engine, with the engine settings the graph serves the model with, by prompt category too.
- **Coherence**: the median per-token perplexity of the spoken replies (the respond sections; a
  reply with no tags, as the base's, counts whole) under the base model, conditioned on the user
  turn in ChatML, for each model's replies and for the seed's curated replies; the distinct-bigram
  ratio over all of them.
"""

from __future__ import annotations

from typing import Any

from rrr_ray.evaluation.compliance import score_replies
from rrr_ray.training.quality import spoken_text

GENERATION_KEYS = ("dtype", "max_model_len", "max_num_seqs", "enforce_eager")
"""The served engine settings that the offline engine of the format measurement shares."""
RULE = "strict: rrr_ray.validate(reply).valid on the raw reply, no repair"


def generate_replies(model: str, prompts: list[dict[str, str]], samples: int, temperature: float,
                     max_tokens: int, guided_max_tokens: int | None = None) -> list[dict[str, Any]]:
    """``samples`` replies per prompt from an offline vLLM engine (request *i* seeded with *i*),
    then as many guided ones when ``guided_max_tokens`` is given; each a prompt dict with
    ``guided`` and ``reply``."""
    from vllm import LLM, SamplingParams
    from vllm.sampling_params import StructuredOutputsParams

    from rrr_ray.format import guided_regex
    from rrr_ray.serving.derived import served_engine_args

    settings = {k: v for k, v in served_engine_args(model).items() if k in GENERATION_KEYS}
    llm = LLM(model=model, seed=0, disable_log_stats=True, **settings)
    try:
        batch = [p for p in prompts for _ in range(samples)]
        out = []
        for mode in ([False, True] if guided_max_tokens else [False]):
            params = [SamplingParams(max_tokens=guided_max_tokens if mode else max_tokens, temperature=temperature,
                                     seed=i,
                                     structured_outputs=StructuredOutputsParams(regex=guided_regex()) if mode else None)
                      for i in range(len(batch))]
            results = llm.chat([[{"role": "user", "content": p["prompt"]}] for p in batch], params, use_tqdm=True)
            out.extend({**p, "guided": mode, "reply": r.outputs[0].text} for p, r in zip(batch, results))
        return out
    finally:
        del llm


def seed_pairs(path: str) -> list[tuple[str, str]]:
    """(user, respond) of every assistant turn of the seed's curated dialogues."""
    from rrr_ray.data.convert import load_records
    from rrr_ray.training.data import tagged_records
    from rrr_ray.training.quality import respond_section

    pairs = []
    records, _ = tagged_records(load_records([path]))
    for r in records:
        msgs = r.messages
        for prev, m in zip(msgs, msgs[1:]):
            if m.role == "assistant" and prev.role == "user" and (resp := respond_section(m.content)):
                pairs.append((prev.content, resp))
    return pairs


def coherence(base: str, sets: dict[str, list[tuple[str, str]]]) -> dict[str, Any]:
    """Median perplexity under ``base`` and distinct-bigram ratio of each set of (user, spoken) pairs."""
    from rrr_ray.training.merge import load_causal_lm
    from rrr_ray.training.quality import distinct_bigram_ratio, median, respond_perplexities

    model, tok = load_causal_lm(base)
    out = {}
    for name, pairs in sets.items():
        ppl = respond_perplexities(model, tok, pairs)
        out[name] = {"respond_sections": len(pairs), "median_perplexity": median(ppl),
                     "distinct_bigram_ratio": distinct_bigram_ratio(r for _, r in pairs)}
    return out


def _ratio(x: float | None, y: float | None) -> float | None:
    return x / y if x and y else None


def measure_default_model(tuned: str, base: str, prompts: list[dict[str, str]], seed_replies: str, samples: int,
                          temperature: float, max_tokens: int, guided_max_tokens: int) -> dict[str, Any]:
    """The report's format and coherence figures, every reply kept (``compliance``, ``coherence``,
    ``coherence_vs_seed``, ``examples``, ``replies``)."""
    tuned_replies = generate_replies(tuned, prompts, samples, temperature, max_tokens, guided_max_tokens)
    base_replies = generate_replies(base, prompts, samples, temperature, max_tokens)
    sets = {"tuned": [r for r in tuned_replies if not r["guided"]],
            "tuned_guided": [r for r in tuned_replies if r["guided"]], "base": base_replies}
    formats = {k: score_replies(v, [r["reply"] for r in v]) for k, v in sets.items()}
    pairs = {k: [(r["prompt"], s) for r in v if (s := spoken_text(r["reply"]))] for k, v in sets.items()}
    pairs["seed_curated"] = seed_pairs(seed_replies)
    coh = coherence(base, pairs)
    seed = coh["seed_curated"]
    return {
        "rule": RULE,
        "compliance": {k: {"strict": v["compliance"], "repaired": v["repaired_compliance"], "n": v["n"],
                           "by_category": {c: x["compliance"] for c, x in v["by_category"].items()},
                           "errors": v["errors"]} for k, v in formats.items()},
        "coherence": coh,
        "coherence_vs_seed": {k: {"perplexity_ratio": _ratio(v["median_perplexity"], seed["median_perplexity"]),
                                  "distinct_bigram_ratio_vs_seed": _ratio(v["distinct_bigram_ratio"],
                                                                          seed["distinct_bigram_ratio"])}
                              for k, v in coh.items() if k != "seed_curated"},
        "examples": {k: [{"prompt": r["prompt"], "reply": r["reply"]} for r in v[:: max(1, len(v) // 4)][:4]]
                     for k, v in sets.items()},
        "replies": {k: [{"id": r["id"], "category": r["category"], "reply": r["reply"]} for r in v]
                    for k, v in sets.items()},
    }
