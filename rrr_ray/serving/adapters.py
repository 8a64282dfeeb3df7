"""LoRA adapters on demand: found by name, checked before any engine sees them, loaded per replica.

    client "model": "<base>:<adapter>" (or "<adapter>" where one base has it)
      -> AdapterCatalog (front: ingress)   name -> AdapterInfo (base, folder, rank), or a clear 4xx
      -> EngineRequest.adapter_path        the request carries the folder
      -> AdapterLRU (model stage)          loads it into that replica's engine on first use, keeps
                                           at most ``max_cpu_loras``, evicts the least recently used

An adapter is a peft LoRA folder (``adapter_config.json`` + ``adapter_model.safetensors``). Where
they come from, per model (``adapters:`` in a model's config):
- ``folders``: ``<folder>/<adapter>/`` is served as ``<base>:<adapter>``, found on first use (a local
  path, relative to the repository, or an object-store URI that ``pyarrow.fs`` reaches: ``s3://``,
  ``gs://``, ``hdfs://``, ``file://``; remote adapters are copied to a local cache on the replica);
- ``lora_modules``: adapters named in the config, served by their plain name like models (not here);
- ``POST /v1/load_lora_adapter`` ``{"lora_name", "lora_path"}`` at run time (``runtime_loading``).

With several replicas of a model deployment, requests carry the adapter's name as Ray Serve's
``multiplexed_model_id``, so Serve routes them to a replica that holds it already
(``deployments.model.RRRModel``); a healed reply's continuation names the same adapter.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import os
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, AsyncIterator, Literal, Optional, Protocol

from pydantic import BaseModel, Field

from rrr_ray.paths import REPO
from rrr_ray.serving.adapter_options import AdapterOptions, RuntimeLoading
from rrr_ray.serving.config import EngineConfig
from rrr_ray.serving.errors import BadRequestError, ModelNotServedError

logger = logging.getLogger(__name__)

SEPARATOR = ":"
"""Between a base model's name and an adapter's: ``rrr-tiny:coach``."""
CONFIG_FILE = "adapter_config.json"
WEIGHT_FILES = ("adapter_model.safetensors", "adapter_model.bin")
CACHE_ENV = "RRR_ADAPTER_CACHE"
"""Local folder for adapters copied from an object store (default: the system's temp folder)."""

# -- errors: each a 4xx that names the problem -------------------------------------------------------

class AdapterError(BadRequestError):
    """An adapter cannot be served as asked."""


class AdapterNotFound(AdapterError):
    def __init__(self, message: str) -> None:
        super().__init__(message, 404)


class BrokenAdapter(AdapterError):
    """The folder is not a LoRA adapter vLLM can serve."""


class AdapterConflict(AdapterError):
    def __init__(self, message: str) -> None:
        super().__init__(message, 409)


class RuntimeLoadingOff(AdapterError):
    def __init__(self, message: str) -> None:
        super().__init__(message, 403)


# -- reading an adapter folder ---------------------------------------------------------------------

def is_uri(location: str) -> bool:
    return "://" in location


def _filesystem(location: str) -> tuple[Any, str]:
    """``pyarrow.fs`` file system and path of a local path or URI."""
    from pyarrow import fs

    if not is_uri(location):
        return fs.LocalFileSystem(), str(Path(location).resolve())
    try:
        return fs.FileSystem.from_uri(location)
    except Exception as exc:  # unknown scheme, unreachable store, no credentials
        raise AdapterNotFound(f"{location}: cannot be reached ({type(exc).__name__}: {exc})") from None


def _read_text(filesystem: Any, path: str) -> Optional[str]:
    try:
        with filesystem.open_input_stream(path) as f:
            return f.read().decode("utf-8")
    except FileNotFoundError:
        return None
    except OSError as exc:
        if "not found" in str(exc).lower() or "does not exist" in str(exc).lower():
            return None
        raise


def _exists(filesystem: Any, path: str, kind: str = "any") -> bool:
    from pyarrow import fs

    try:
        info = filesystem.get_file_info(path)
    except OSError:
        return False
    if kind == "dir":
        return info.type == fs.FileType.Directory
    if kind == "file":
        return info.type == fs.FileType.File
    return info.type != fs.FileType.NotFound


def _same_model(name: str, candidates: list[str]) -> bool:
    """``base_model_name_or_path`` names one of ``candidates``: equal, or the same last path
    component (``models/rrr-tiny`` and ``/srv/rrr/models/rrr-tiny``; a hub id and its local copy)."""
    def last(s: str) -> str:
        return s.rstrip("/").rsplit("/", 1)[-1].lower()

    return any(name == c or last(name) == last(c) for c in candidates if c)


@dataclass(frozen=True)
class ServedBase:
    """What the catalog knows of a model that takes adapters."""

    name: str
    path: str
    options: AdapterOptions
    max_lora_rank: int
    lora_modules: dict[str, str]
    dynamic: bool = True  # has ``adapters:``: folders and run-time loading (else lora_modules only)

    def names(self) -> list[str]:
        return [self.name, self.path, *self.options.base_aliases]


@dataclass(frozen=True)
class AdapterInfo:
    """An adapter checked against the model that serves it."""

    name: str  # the name requests carry: "<base>:<adapter>", or a lora_modules name
    base: str
    path: str  # local folder or URI
    rank: int
    source: Literal["folder", "runtime"]


def read_adapter(name: str, location: str, base: ServedBase, source: str = "folder") -> AdapterInfo:
    """Check that ``location`` holds a LoRA adapter that ``base`` can serve; raise an ``AdapterError``
    naming the problem (missing or broken folder, rank above ``max_lora_rank``, another base)."""
    filesystem, path = _filesystem(location)
    if not _exists(filesystem, path, "dir"):
        raise AdapterNotFound(f"adapter {name!r}: no folder at {location}")
    text = _read_text(filesystem, f"{path}/{CONFIG_FILE}")
    if text is None:
        raise BrokenAdapter(f"adapter {name!r}: {location} has no {CONFIG_FILE} (not a peft adapter folder)")
    try:
        config = json.loads(text)
        if not isinstance(config, dict):
            raise ValueError("not a JSON object")
    except ValueError as exc:
        raise BrokenAdapter(f"adapter {name!r}: {location}/{CONFIG_FILE} is not valid JSON ({exc})") from None
    if str(config.get("peft_type", "LORA")).upper() != "LORA":
        raise BrokenAdapter(f"adapter {name!r}: peft_type is {config.get('peft_type')!r}; only LoRA is served")
    ranks = [config.get("r"), *(config.get("rank_pattern") or {}).values()]
    if not all(isinstance(r, int) and not isinstance(r, bool) and r > 0 for r in ranks):
        raise BrokenAdapter(f"adapter {name!r}: {CONFIG_FILE} has no valid rank 'r' ({config.get('r')!r})")
    rank = max(ranks)
    if rank > base.max_lora_rank:
        raise AdapterError(f"adapter {name!r} has rank {rank}, above the max_lora_rank {base.max_lora_rank} of "
                           f"model {base.name!r} (raise max_lora_rank in its config, or train a lower rank)")
    if config.get("modules_to_save"):
        raise BrokenAdapter(f"adapter {name!r} trains {config['modules_to_save']} in full (modules_to_save), which "
                            "vLLM cannot serve unmerged; merge it into its base (jobs.merge_lora)")
    if not any(_exists(filesystem, f"{path}/{w}", "file") for w in WEIGHT_FILES):
        raise BrokenAdapter(f"adapter {name!r}: {location} has no weights ({' or '.join(WEIGHT_FILES)})")
    trained_on = config.get("base_model_name_or_path")
    if trained_on and not _same_model(str(trained_on), base.names()):
        raise AdapterError(f"adapter {name!r} was trained on {trained_on!r}, not on model {base.name!r} "
                           f"({base.path}); name it on its own base, or add the name to adapters.base_aliases")
    return AdapterInfo(name=name, base=base.name, path=location, rank=rank, source=source)  # type: ignore[arg-type]


def list_folder(location: str) -> list[str]:
    """The adapter names in a served folder: its subfolders that hold an adapter_config.json
    (an unreachable folder lists nothing, with a warning)."""
    from pyarrow import fs

    try:
        filesystem, path = _filesystem(location)
        entries = filesystem.get_file_info(fs.FileSelector(path, allow_not_found=True))
    except (AdapterError, OSError) as exc:
        logger.warning("adapter folder %s cannot be listed: %s", location, exc)
        return []
    names = []
    for entry in entries:
        if entry.type == fs.FileType.Directory and not entry.base_name.startswith("."):
            if _exists(filesystem, f"{entry.path}/{CONFIG_FILE}", "file"):
                names.append(entry.base_name)
    return sorted(names)


def local_copy(location: str, cache_root: Optional[str] = None) -> str:
    """A local folder holding the adapter at ``location`` (vLLM reads local folders): the folder
    itself, or a copy of a remote one in the cache (written to a temporary folder, then renamed)."""
    if not is_uri(location) or location.startswith("file://"):
        return location[len("file://"):] if location.startswith("file://") else location
    from pyarrow import fs

    root = Path(cache_root or os.environ.get(CACHE_ENV) or Path(tempfile.gettempdir()) / "rrr-adapters")
    dest = root / hashlib.sha256(location.encode()).hexdigest()[:16] / location.rstrip("/").rsplit("/", 1)[-1]
    if dest.exists():
        return str(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=dest.parent, prefix=".partial-"))
    try:
        filesystem, path = _filesystem(location)
        fs.copy_files(path, str(tmp), source_filesystem=filesystem, destination_filesystem=fs.LocalFileSystem())
        os.replace(tmp, dest)
    except FileExistsError:  # copied meanwhile by another request
        shutil.rmtree(tmp, ignore_errors=True)
    except OSError as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        if not dest.exists():
            raise AdapterNotFound(f"adapter at {location} cannot be copied: {exc}") from None
    return str(dest)


# -- the front: names -> adapters ------------------------------------------------------------------

class AdapterServing(BaseModel):
    """The front's part of adapters on demand (bound to the ingress): the models that take adapters,
    the run-time routes' switch, and the models whose deployments route adapters by Serve model
    multiplexing."""

    models: list[EngineConfig] = Field(default_factory=list, description="Models with 'adapters:' or lora_modules.")
    runtime_loading: RuntimeLoading = "off"
    multiplexed: list[str] = Field(default_factory=list, description="Served names routed by multiplexing.")


class AdapterStages(Protocol):
    """The model stages, as the catalog reaches them (``PostProcessing`` or its deployment)."""

    async def load_adapter(self, base: str, name: str, path: str) -> dict[str, Any]: ...

    async def free_adapter(self, base: str, name: str) -> bool: ...


class AdapterCatalog:
    """Every adapter loaded on demand, by name: those in the models' folders and those loaded at run
    time. Knows nothing of replicas: ``stages`` loads an adapter into one (``load``, so that vLLM's
    own check runs then) and frees it (``unload``)."""

    def __init__(self, bases: list[ServedBase], runtime_loading: RuntimeLoading = "off",
                 root: Optional[str] = None, stages: Optional[AdapterStages] = None) -> None:
        self.bases = {b.name: b for b in bases}
        self.runtime_loading = runtime_loading
        self.root = Path(root) if root else REPO  # relative local paths are relative to it
        self.stages = stages
        self.known: dict[str, AdapterInfo] = {}  # checked: used once, or loaded at run time
        self.runtime: set[str] = set()

    @classmethod
    def from_models(cls, models: list[EngineConfig], runtime_loading: RuntimeLoading = "off",
                    root: Optional[str] = None) -> "AdapterCatalog":
        """From the models' configs: every model with ``adapters`` or ``lora_modules``."""
        bases = [ServedBase(name=m.name, path=m.path, options=m.adapters or AdapterOptions(),
                            max_lora_rank=m.max_lora_rank, lora_modules=dict(m.lora_modules),
                            dynamic=m.adapters is not None)
                 for m in models if m.adapters is not None or m.lora_modules]
        return cls(bases, runtime_loading, root)

    # -- names --------------------------------------------------------------------------------

    def _local(self, location: str) -> str:
        if is_uri(location) or Path(location).is_absolute() or self.root is None:
            return location
        return str(self.root / location)

    def _in_folders(self, base: ServedBase, adapter: str) -> Optional[str]:
        if "/" in adapter or adapter in (".", "..") or not adapter:
            return None
        for folder in base.options.folders:
            location = f"{self._local(folder).rstrip('/')}/{adapter}"
            try:
                filesystem, path = _filesystem(location)
            except AdapterError as exc:
                logger.warning("adapter folder %s: %s", folder, exc)
                continue
            if _exists(filesystem, path, "dir"):
                return location
        return None

    def resolve(self, model: str) -> AdapterInfo:
        """The adapter a request's ``model`` names: ``<base>:<adapter>``, or a plain adapter name that
        one base has (``lora_modules`` names are served models of their own, not resolved here).
        Raises a 404 when none has it, a 400 when several do or it cannot be served (checked on
        first use)."""
        if model in self.known:
            return self.known[model]
        base_name, sep, adapter = model.partition(SEPARATOR)
        if sep:
            base = self.bases.get(base_name)
            if base is None or not base.dynamic:
                raise ModelNotServedError(model, self.names())
            return self._check(model, base, adapter)
        found = [b for b in self.bases.values() if b.dynamic and (f"{b.name}{SEPARATOR}{model}" in self.known
                                                                 or self._in_folders(b, model) is not None)]
        if len(found) > 1:
            raise AdapterError(f"adapter {model!r} is served on several models ({', '.join(b.name for b in found)}); "
                               f"name one as '<model>{SEPARATOR}{model}'", 400)
        if not found:
            raise ModelNotServedError(model, self.names())
        return self._check(f"{found[0].name}{SEPARATOR}{model}", found[0], model)

    def _check(self, name: str, base: ServedBase, adapter: str) -> AdapterInfo:
        if name in self.known:
            return self.known[name]
        location = self._in_folders(base, adapter)
        if location is None:
            where = ", ".join(base.options.folders) or "none"
            raise AdapterNotFound(f"adapter {adapter!r} is not loaded on model {base.name!r} and not in its adapter "
                                  f"folders ({where})")
        info = read_adapter(name, location, base, "folder")
        self.known[name] = info
        return info

    def names(self) -> list[str]:
        """The adapter names loaded now (for error messages)."""
        return sorted(self.known)

    # -- /v1/models -----------------------------------------------------------------------------

    def listing(self) -> list[tuple[AdapterInfo, bool]]:
        """Every adapter loaded on demand, with whether it is loaded (used, or loaded at run time) or
        only available (in a folder, loaded on first use)."""
        out: dict[str, tuple[AdapterInfo, bool]] = {n: (i, True) for n, i in self.known.items()}
        for base in self.bases.values():
            for folder in base.options.folders:
                for adapter in list_folder(self._local(folder)):
                    name = f"{base.name}{SEPARATOR}{adapter}"
                    out.setdefault(name, (AdapterInfo(name, base.name, f"{folder.rstrip('/')}/{adapter}", 0,
                                                      "folder"), False))
        return [out[n] for n in sorted(out)]

    # -- run-time loading -----------------------------------------------------------------------

    def check_runtime(self, api_keys_on: bool) -> None:
        if self.runtime_loading == "on" or (self.runtime_loading == "with_api_keys" and api_keys_on):
            return
        why = ("off in this server's config (runtime_adapters: off)" if self.runtime_loading == "off" else
               "allowed only with API keys on (runtime_adapters: with_api_keys; set RRR_API_KEY)")
        raise RuntimeLoadingOff(f"loading and unloading adapters at run time is {why}")

    async def load(self, lora_name: str, lora_path: Optional[str], replace: bool = False) -> AdapterInfo:
        """``POST /v1/load_lora_adapter``: check the folder and serve it under ``lora_name`` (``<base>:
        <adapter>``, or a plain name where one model takes adapters or the adapter's own base names
        one). Without ``lora_path``: the adapter of that name in the base's folders. ``replace``: an
        adapter loaded under that name is unloaded first (vLLM's ``load_inplace``)."""
        base_name, sep, adapter = lora_name.partition(SEPARATOR)
        if not adapter or not base_name or "/" in adapter:
            if sep:
                raise AdapterError(f"lora_name {lora_name!r}: give '<model>{SEPARATOR}<adapter>' or a plain name", 400)
            base = self._base_for(lora_name, lora_path)
            adapter, name = lora_name, f"{base.name}{SEPARATOR}{lora_name}"
        else:
            base, name = self.bases.get(base_name), lora_name
            if base is None or not base.dynamic:
                dynamic = [b.name for b in self.bases.values() if b.dynamic]
                raise AdapterError(f"lora_name {lora_name!r}: model {base_name!r} is not served or takes no adapters "
                                   f"at run time (no 'adapters:' in its config; models that do: "
                                   f"{', '.join(dynamic) or 'none'})", 404)
        if adapter in base.lora_modules or adapter in self.bases or name in self.bases:
            raise AdapterConflict(f"{lora_name!r} is the name of a served model or configured adapter")
        if lora_path is None:
            info = self._check(name, base, adapter)
        else:
            info = read_adapter(name, self._local(lora_path), base, "runtime")
        previous = self.known.get(name)
        if previous is not None and replace:
            await self.unload(name)
            previous = None
        if previous is not None and previous.path != info.path:
            raise AdapterConflict(f"adapter {name!r} is loaded from {previous.path}; unload it first to load "
                                  f"{info.path}")
        if self.stages is not None:  # into one replica now: vLLM's own check of the weights runs here
            answer = await self.stages.load_adapter(info.base, name, info.path)
            if answer.get("error"):
                if previous is None:
                    self.known.pop(name, None)
                raise AdapterError(answer["error"], answer.get("status") or 400)
        self.known[name] = info
        self.runtime.add(name)
        logger.info("adapter %s loaded from %s (rank %d)", name, info.path, info.rank)
        return info

    def _base_for(self, adapter: str, lora_path: Optional[str]) -> ServedBase:
        """The one model a plain adapter name goes on: the only model with adapters, or the one the
        adapter's adapter_config.json names."""
        bases = [b for b in self.bases.values() if b.dynamic]
        if not bases:
            raise AdapterError("no served model takes adapters at run time (no 'adapters:' in any model's config)", 400)
        if len(bases) == 1:
            return bases[0]
        if lora_path is not None:
            text = None
            with contextlib.suppress(Exception):
                filesystem, path = _filesystem(self._local(lora_path))
                text = _read_text(filesystem, f"{path}/{CONFIG_FILE}")
            trained_on = (json.loads(text).get("base_model_name_or_path") if text else None) or ""
            matches = [b for b in bases if trained_on and _same_model(trained_on, b.names())]
            if len(matches) == 1:
                return matches[0]
        raise AdapterError(f"lora_name {adapter!r}: several models take adapters ({', '.join(b.name for b in bases)}); "
                           f"name it '<model>{SEPARATOR}{adapter}'", 400)

    async def unload(self, lora_name: str) -> AdapterInfo:
        """``POST /v1/unload_lora_adapter``: forget the adapter and free it in the model stages. One
        found in a folder stays available: a later request loads it again."""
        name = lora_name
        if name not in self.known:
            found = [n for n in self.known if n.partition(SEPARATOR)[2] == lora_name]
            if len(found) == 1:
                name = found[0]
        info = self.known.get(name)
        if info is None:
            raise AdapterNotFound(f"adapter {lora_name!r} is not loaded (loaded: {', '.join(self.known) or 'none'})")
        del self.known[name]
        self.runtime.discard(name)
        if self.stages is not None:
            await self.stages.free_adapter(info.base, name)
        logger.info("adapter %s unloaded", name)
        return info


# -- the model stage: a replica's loaded adapters ----------------------------------------------------

class AdapterLRU:
    """The adapters loaded in one replica's engine: at most ``capacity`` (those in use by a request
    are never evicted: the engine may then hold more for a while), each with a LoRA id that is
    stable for as long as the replica runs. ``cold_loads``/``warm_hits`` count first uses and
    reuses."""

    def __init__(self, capacity: int, static: Optional[dict[str, str]] = None) -> None:
        """``static``: the model's lora_modules, whose LoRA ids 1..n the engine gave them."""
        self.capacity = capacity
        self.loaded: dict[str, str] = {}  # name -> local folder, least recently used first
        self.in_use: dict[str, int] = {}
        self.ids = {name: i + 1 for i, name in enumerate(static or {})}  # lora_modules keep the engine's ids
        self._locks: dict[str, asyncio.Lock] = {}
        self._engine: Any = None
        self.cold_loads = 0
        self.warm_hits = 0

    def adapter_id(self, name: str) -> int:
        if name not in self.ids:
            self.ids[name] = max(self.ids.values(), default=0) + 1
        return self.ids[name]

    @contextlib.asynccontextmanager
    async def use(self, engine: Any, name: str, location: str) -> AsyncIterator[float]:
        """Hold ``name`` loaded in ``engine`` while the block runs; yields the seconds spent loading
        it (0.0 when it was loaded already)."""
        if engine is not self._engine:  # a new engine (restarted in place) holds none
            self._engine, self.loaded = engine, {}
        self.in_use[name] = self.in_use.get(name, 0) + 1
        try:
            seconds = await self._acquire(engine, name, location)
            yield seconds
        finally:
            self.in_use[name] -= 1
            if not self.in_use[name]:
                del self.in_use[name]
                if len(self.loaded) > self.capacity:  # held beyond capacity while in use: back within it
                    await self._evict(engine, keep=self.capacity)

    async def _acquire(self, engine: Any, name: str, location: str) -> float:
        if name in self.loaded:
            self.loaded[name] = self.loaded.pop(name)  # most recently used
            self.warm_hits += 1
            return 0.0
        lock = self._locks.setdefault(name, asyncio.Lock())
        async with lock:
            if name in self.loaded:
                self.loaded[name] = self.loaded.pop(name)
                self.warm_hits += 1
                return 0.0
            started = time.perf_counter()
            folder = await asyncio.to_thread(local_copy, location)
            await self._evict(engine, keep=self.capacity - 1)
            await engine.add_adapter(name, folder, self.adapter_id(name))
            self.loaded[name] = folder
            self.cold_loads += 1
            seconds = time.perf_counter() - started
            logger.info("adapter %s loaded in %.2f s (%d loaded)", name, seconds, len(self.loaded))
            return seconds

    async def _evict(self, engine: Any, keep: int) -> None:
        for name in [n for n in self.loaded if n not in self.in_use][:max(0, len(self.loaded) - keep)]:
            await self.release(engine, name)

    async def release(self, engine: Any, name: str) -> bool:
        """Drop ``name`` from the engine; False when it was not loaded here."""
        if self.loaded.pop(name, None) is None:
            return False
        with contextlib.suppress(Exception):  # best-effort: the engine may be restarting
            await engine.remove_adapter(name)
        logger.info("adapter %s unloaded from this replica", name)
        return True

    def stats(self) -> dict[str, Any]:
        return {"loaded": list(self.loaded), "cold_loads": self.cold_loads, "warm_hits": self.warm_hits}
