"""Model cards (README.md) for the shipped demo models, from the measured report."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from rrr_ray.format.chatml import IM_END, IM_START
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
`make model` (= `{report['command'].strip()}`) rebuilds base, fine-tunes, merge, measurements and
these cards from scratch on CPU.

The reply text of a model this small is not coherent; the format is what it learns.
"""
    arch = (f"MistralForCausalLM, {base.get('parameters', 0) / 1e6:.2f}M parameters (hidden 256, 4 layers, "
            f"4 heads, 2 KV heads, intermediate 768), byte-level BPE of {base.get('vocab_size')} tokens with "
            f"ChatML special tokens (`{IM_START}`, `{IM_END}` = EOS, `{PAD_TOKEN}`) and a ChatML chat template; "
            "bf16 safetensors, context 1024.")
    cards = {
        "rrr-tiny": f"""# rrr-tiny (the default served model)

Fine-tuned RRR demo model: {arch}
Variant: `{report['default_variant']}` (`full` = full fine-tune of rrr-tiny-base through
`jobs.train_lora --method full`; `lora_mts_merged` = LoRA r=16 on the seven projections with
embed_tokens and lm_head trained in full (modules_to_save), merged; `lora_merged` = rrr-tiny-lora
merged), checkpoint picked by format compliance on validation prompts (Ray Train + TRL SFTTrainer,
2 CPU workers).

Serve: `vllm serve models/rrr-tiny --max-model-len 1024` or `make serve` (serve_config.yaml).
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
