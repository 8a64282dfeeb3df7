"""Publish a trained LoRA adapter into a folder that the serving graph watches (a model's
``adapters.folders``): the next request for ``<model>:<name>`` loads it, without a restart.

The adapter is copied to a hidden temporary folder beside its destination, then renamed into place,
so the server never reads a half-written adapter. A new version under a name in use replaces the
old folder (renamed aside, then deleted); a replica that holds the old version keeps serving it
until it is unloaded (``POST /v1/unload_lora_adapter``) or evicted.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import tempfile
from pathlib import Path

logger = logging.getLogger(__name__)

ADAPTER_FILES = ("adapter_config.json", "adapter_model.safetensors", "adapter_model.bin")
NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
"""An adapter's name in a served folder: one path component, no ':' (which separates it from its model)."""


def publish_adapter(adapter_dir: str | Path, folder: str | Path, name: str) -> Path:
    """Copy ``adapter_dir`` (a peft adapter folder) to ``folder/name``, atomically; returns the path."""
    source, folder = Path(adapter_dir), Path(folder)
    if not NAME.match(name):
        raise ValueError(f"adapter name {name!r}: letters, digits, '.', '_' and '-' only (at most 128), no ':' or '/'")
    if not (source / "adapter_config.json").is_file():
        raise FileNotFoundError(f"{source}: no adapter_config.json (not a LoRA adapter folder)")
    folder.mkdir(parents=True, exist_ok=True)
    dest = folder / name
    staging = Path(tempfile.mkdtemp(dir=folder, prefix=f".{name}.partial-"))
    try:
        for item in source.iterdir():  # the adapter and its tokenizer files; no checkpoints
            if item.is_file():
                shutil.copy2(item, staging / item.name)
        os.chmod(staging, 0o755)
        old = None
        if dest.exists():
            old = Path(tempfile.mkdtemp(dir=folder, prefix=f".{name}.old-"))
            os.replace(dest, old / name)
        os.replace(staging, dest)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
    logger.info("adapter published to %s", dest)
    return dest
