"""Measure the served default against its base and the seed's curated replies; print the figures and
write them as JSON (what the model card and the README quote).

    python -m jobs.report_default_model [--samples 3 --temperature 0.7 --output out/default_model/report.json]

- **Format**: strict compliance (``rrr_ray.validate`` on the raw reply, no repair) of the merged
  fine-tune (``models/rrr-smollm2``), unguided and guided, and of the base, on the held-out prompts
  (``data/eval_prompts.jsonl``, 40 prompts in five categories), ``--samples`` replies each at
  ``--temperature``; by category too. Replies come from the real vLLM engine.
- **Coherence**: the median per-token perplexity of the spoken replies (the respond sections; a
  reply with no tags, as the base's, counts whole) under the base model, conditioned on the user
  turn in ChatML, for each model's replies and for the seed's curated replies; the distinct-bigram
  ratio over all of them. Every reply is kept in the JSON.
- **Speed** (``--speed``): tok/s at 1 and 16 streams and engine start-up of the merged model and of
  the unmerged adapter (vLLM LoRA) on the base, with ``loadtest.engine_bench``.
"""

from __future__ import annotations

import argparse
import json
import logging
import subprocess
import sys
import tempfile
import time
from datetime import date
from pathlib import Path
from typing import Any

from jobs._common import die, env_defaults, print_summary

GENERATION_KEYS = ("dtype", "max_model_len", "max_num_seqs", "enforce_eager")
"""The served engine settings that the offline engine of the format measurement shares."""


def served_engine_args(model: str, lora: str | None = None) -> dict[str, Any]:
    """The vLLM engine arguments serve_config.yaml's default model is served with (executor, bound
    CPU and all), pointed at ``model``; ``lora`` (``NAME=PATH``) served by name on it."""
    from deployments.launch import DEFAULT_CONFIG
    from loadtest.compare import engine_kwargs_from_graph, graph_args

    app = graph_args(model, str(DEFAULT_CONFIG))
    if lora:
        name, _, path = lora.partition("=")
        app["models"][0]["lora_modules"] = {name: path}
    return engine_kwargs_from_graph(app)


def parse_args(argv=None) -> argparse.Namespace:
    from rrr_ray.training.compliance import DEFAULT_EVAL_PROMPTS
    from rrr_ray.training.pretrained import ADAPTER_NAME, MERGED_NAME, SMOLLM2_135M

    p = argparse.ArgumentParser(prog="python -m jobs.report_default_model", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tuned", default=f"models/{MERGED_NAME}", help="merged fine-tune folder")
    p.add_argument("--base", default=f"models/{SMOLLM2_135M.name}", help="base model folder")
    p.add_argument("--adapter", default=f"models/{ADAPTER_NAME}", help="the unmerged adapter (speed only)")
    p.add_argument("--prompts", default=DEFAULT_EVAL_PROMPTS, help="held-out prompts (JSON lines)")
    p.add_argument("--seed-replies", default="data/seed/curated_seed_dialogues",
                   help="the seed's curated dialogues (the coherence reference)")
    p.add_argument("--samples", type=int, default=3, help="replies per prompt")
    p.add_argument("--temperature", type=float, default=0.7)
    p.add_argument("--max-tokens", type=int, default=256, help="most tokens of an unguided reply")
    p.add_argument("--guided-max-tokens", type=int, default=512,
                   help="most tokens of a guided reply (room for the longest reply the guided regex admits)")
    p.add_argument("--speed", action="store_true", help="also measure tok/s and start-up (about 6 minutes)")
    p.add_argument("--output", default="out/default_model/report.json")
    return p.parse_args(argv)


def generate(model: str, prompts: list[dict[str, str]], samples: int, temperature: float, max_tokens: int,
             guided_max_tokens: int | None = None) -> list[dict[str, str]]:
    """``samples`` replies per prompt from an offline vLLM engine (request *i* seeded with *i*),
    then as many guided ones when ``guided_max_tokens`` is given."""
    from vllm import LLM, SamplingParams
    from vllm.sampling_params import StructuredOutputsParams

    from rrr_ray.format import guided_regex

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


def compliance(replies: list[dict[str, Any]]) -> dict[str, Any]:
    from rrr_ray.training.compliance import measure_compliance

    texts = iter([r["reply"] for r in replies])
    return measure_compliance(lambda ps: [next(texts) for _ in ps], replies, 1)


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
    from rrr_ray.training.merge import load_causal_lm
    from rrr_ray.training.quality import distinct_bigram_ratio, median, respond_perplexities

    model, tok = load_causal_lm(base)
    out = {}
    for name, pairs in sets.items():
        ppl = respond_perplexities(model, tok, pairs)
        out[name] = {"respond_sections": len(pairs), "median_perplexity": median(ppl),
                     "distinct_bigram_ratio": distinct_bigram_ratio(r for _, r in pairs)}
    return out


def engine_speed(model: str, lora: str | None = None) -> dict[str, Any]:
    """tok/s at 1 and 16 streams (64 tokens a request, EOS ignored) and start-up, from engine_bench,
    with the served engine settings and environment."""
    import os

    from deployments.launch import DEFAULT_CONFIG
    from loadtest.compare import graph_env
    from loadtest.metrics import RequestRecord, summarize

    with tempfile.TemporaryDirectory() as d:
        out = Path(d) / "levels.json"
        cmd = [sys.executable, "-m", "loadtest.engine_bench", "--model", model, "--concurrency", "1,16",
               "--requests-per-level", "8,32", "--out", str(out)]
        cmd += [f"--engine-arg={k}={json.dumps(v)}" for k, v in served_engine_args(model, lora).items()]
        if lora:
            cmd += ["--lora", lora]
        subprocess.run(cmd, check=True, env={**graph_env(str(DEFAULT_CONFIG)), **os.environ})
        data = json.loads(out.read_text())
    levels = {}
    for c, lv in data["levels"].items():
        s = summarize([RequestRecord(**r) for r in lv["records"]], lv["wall_s"])
        levels[c] = {"tok_s": s.get("output_throughput"), "ttft_p50_ms": s.get("ttft_ms", {}).get("p50"),
                     "itl_p50_ms": s.get("itl_ms", {}).get("p50"), "requests": s.get("completed")}
    return {"startup_s": round(data["startup_s"], 1), "engine_args": data["engine_args"], "levels": levels}


def main(argv=None) -> int:
    env_defaults()
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    from rrr_ray.training.compliance import load_prompts
    from rrr_ray.training.quality import spoken_text

    for path in (args.tuned, args.base):
        if not (Path(path) / "config.json").exists():
            die(f"{path}: not a model folder (make install builds it)")
    try:
        prompts = load_prompts(args.prompts)
    except (FileNotFoundError, ValueError) as exc:
        die(str(exc))
    t0 = time.monotonic()
    tuned = generate(args.tuned, prompts, args.samples, args.temperature, args.max_tokens, args.guided_max_tokens)
    base = generate(args.base, prompts, args.samples, args.temperature, args.max_tokens)
    sets = {"tuned": [r for r in tuned if not r["guided"]], "tuned_guided": [r for r in tuned if r["guided"]],
            "base": base}
    formats = {k: compliance(v) for k, v in sets.items()}
    pairs = {k: [(r["prompt"], s) for r in v if (s := spoken_text(r["reply"]))] for k, v in sets.items()}
    pairs["seed_curated"] = seed_pairs(args.seed_replies)
    coh = coherence(args.base, pairs)
    seed = coh["seed_curated"]
    report: dict[str, Any] = {
        "date": date.today().isoformat(),
        "command": "python -m jobs.report_default_model " + " ".join(argv if argv is not None else sys.argv[1:]),
        "models": {"tuned": args.tuned, "base": args.base}, "prompts": args.prompts, "n_prompts": len(prompts),
        "samples_per_prompt": args.samples, "temperature": args.temperature, "max_tokens": args.max_tokens,
        "guided_max_tokens": args.guided_max_tokens,
        "rule": "strict: rrr_ray.validate(reply).valid on the raw reply, no repair",
        "compliance": {k: {"strict": v["compliance"], "repaired": v["repaired_compliance"], "n": v["n"],
                           "by_category": {c: x["compliance"] for c, x in v["by_category"].items()},
                           "errors": v["errors"]} for k, v in formats.items()},
        "coherence": coh,
        "coherence_vs_seed": {k: {"perplexity_ratio": (v["median_perplexity"] / seed["median_perplexity"]
                                                       if v["median_perplexity"] else None),
                                  "distinct_bigram_ratio_vs_seed": (v["distinct_bigram_ratio"] /
                                                                    seed["distinct_bigram_ratio"]
                                                                    if v["distinct_bigram_ratio"] else None)}
                              for k, v in coh.items() if k != "seed_curated"},
        "examples": {k: [{"prompt": r["prompt"], "reply": r["reply"]} for r in v[:: max(1, len(v) // 4)][:4]]
                     for k, v in sets.items()},
        "replies": {k: [{"id": r["id"], "category": r["category"], "reply": r["reply"]} for r in v]
                    for k, v in sets.items()},
    }
    if args.speed:
        report["speed"] = {"merged": engine_speed(args.tuned),
                           "unmerged_lora": engine_speed(args.base, lora=f"rrr={args.adapter}")}
    report["minutes"] = round((time.monotonic() - t0) / 60, 1)
    out = Path(args.output)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2))
    training = Path(args.adapter) / "training.json"
    if out.parent.resolve() == Path(args.adapter).resolve() and training.exists():
        from rrr_ray.training.cards import default_model_card

        (Path(args.adapter) / "README.md").write_text(default_model_card(json.loads(training.read_text()), report))
    c, q = report["compliance"], report["coherence_vs_seed"]
    print_summary(f"default model report -> {out}", {
        **{f"compliance_{k}": v["strict"] for k, v in c.items()},
        "tuned_by_category": c["tuned"]["by_category"],
        **{f"perplexity_{k}": v["median_perplexity"] for k, v in coh.items()},
        **{f"distinct_bigrams_{k}": v["distinct_bigram_ratio"] for k, v in coh.items()},
        "tuned_perplexity_vs_seed": q["tuned"]["perplexity_ratio"],
        "tuned_bigrams_vs_seed": q["tuned"]["distinct_bigram_ratio_vs_seed"],
        **({f"speed_{k}": v for k, v in report["speed"].items()} if args.speed else {}),
        "minutes": report["minutes"],
    })
    return 0


if __name__ == "__main__":
    sys.exit(main())
