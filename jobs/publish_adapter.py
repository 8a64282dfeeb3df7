"""Publish a LoRA adapter folder into a served adapter folder, atomically (``make model
PUBLISH_TO=...``; ``jobs.train_lora --publish-to`` does the same when training ends).

    python -m jobs.publish_adapter models/rrr-smollm2-lora models/adapters/smollm2-135m-instruct --name rrr

With the folder among a served model's ``adapters.folders`` (serve_config.yaml), the running graph
serves it as ``<model>:<name>`` on the next request.
"""

from __future__ import annotations

import argparse
import logging
import sys

from jobs._common import die, print_summary
from rrr_ray.training.publish import publish_adapter


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m jobs.publish_adapter", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("adapter", help="a peft LoRA adapter folder")
    p.add_argument("folder", help="the served adapter folder it is copied into")
    p.add_argument("--name", required=True, help="its name there: served as <model>:<name>")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        dest = publish_adapter(args.adapter, args.folder, args.name)
    except (FileNotFoundError, ValueError, OSError) as exc:
        die(str(exc))
    print_summary("adapter published", {"adapter": args.adapter, "published": str(dest)})
    return 0


if __name__ == "__main__":
    sys.exit(main())
