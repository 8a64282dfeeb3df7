"""Merge a LoRA adapter into its base model and write a plain model folder that vLLM serves.
The unmerged adapter stays servable through vLLM's LoRA support (when it has no modules_to_save).

    python -m jobs.merge_lora --base-model models/rrr-tiny-base --adapter out/lora/adapter \\
        --output-dir out/lora/merged
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path

from jobs._common import die, env_defaults, print_summary


def parse_args(argv=None):
    p = argparse.ArgumentParser(prog="python -m jobs.merge_lora", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--base-model", required=True, help="base model folder")
    p.add_argument("--adapter", required=True, help="peft adapter folder (adapter_config.json)")
    p.add_argument("--output-dir", required=True, help="merged model folder to write")
    p.add_argument("--dtype", choices=["bfloat16", "float16", "float32"], default="bfloat16")
    return p.parse_args(argv)


def main(argv=None) -> int:
    env_defaults()
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    base, adapter = Path(args.base_model), Path(args.adapter)
    if not (base / "config.json").exists():
        die(f"--base-model {base}: not a model folder (no config.json)")
    if not (adapter / "adapter_config.json").exists():
        die(f"--adapter {adapter}: not a peft adapter folder (no adapter_config.json)")
    from rrr_ray.training.merge import merge_adapter
    from rrr_ray.training.modeling import folder_size

    t = time.monotonic()
    out = merge_adapter(base, adapter, args.output_dir, args.dtype)
    cfg = json.loads((adapter / "adapter_config.json").read_text())
    print_summary("adapter merged", {
        "base": str(base), "adapter": str(adapter), "output": str(out), "dtype": args.dtype,
        "lora_r": cfg.get("r"), "modules_to_save": cfg.get("modules_to_save"),
        "size_mb": round(folder_size(out) / 1e6, 2), "seconds": round(time.monotonic() - t, 1),
    })
    return 0


if __name__ == "__main__":
    sys.exit(main())
