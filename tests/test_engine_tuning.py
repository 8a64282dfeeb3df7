"""The CPU-node engine settings: the vLLM wait plugin, engine niceness, the config's environment."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from rrr_ray.serving import vllm_plugin
from rrr_ray.serving.engine import EngineConfig, set_child_niceness
from rrr_ray.serving.launch import load_app_env

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("raw, expected", [("", None), ("0.001", 0.001), ("0", 0.0), ("-1", None), ("soon", None)])
def test_busy_loop_setting_reads_the_environment(monkeypatch, raw, expected):
    monkeypatch.setenv(vllm_plugin.ENV_BUSY_LOOP, raw)
    assert vllm_plugin.busy_loop_seconds() == expected


def test_plugin_is_registered_for_vllm():
    from importlib.metadata import entry_points

    names = {ep.value for ep in entry_points(group="vllm.general_plugins")}
    assert "rrr_ray.serving.vllm_plugin:register" in names


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
    monkeypatch.setenv(vllm_plugin.ENV_BUSY_LOOP, "0.002")
    monkeypatch.setenv(vllm_plugin.ENV_RECHECK, "3")
    monkeypatch.setattr(vllm_plugin, "owns_a_cpu", lambda: False)
    vllm_plugin.register()
    vllm_plugin.register()  # loaded once per process, but twice must not wrap twice
    FakeSpinCondition().wait(5000)
    assert calls == [(0.002, 3)]

    monkeypatch.setattr(vllm_plugin, "owns_a_cpu", lambda: True)  # a worker bound to its own core spins on
    FakeSpinCondition().wait(5000)
    assert calls[-1] == (1.0, 5000)


def test_plugin_without_the_setting_changes_nothing(monkeypatch):
    from vllm.distributed.device_communicators import shm_broadcast

    monkeypatch.delenv(vllm_plugin.ENV_BUSY_LOOP, raising=False)
    before = shm_broadcast.SpinCondition.wait
    vllm_plugin.register()
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


def test_serve_config_environment_is_loaded_for_graphs_started_from_python():
    env = load_app_env(REPO / "serve_config.yaml")
    assert env["VLLM_CPU_KVCACHE_SPACE"] == "1"
    assert float(env[vllm_plugin.ENV_BUSY_LOOP]) >= 0
    with pytest.raises(ValueError, match="no application"):
        load_app_env(REPO / "serve_config.yaml", "nope")


def test_engine_cpus_select_the_pinned_single_process_executor():
    from rrr_ray.serving.engine import ENGINE_CPUS_KEY, PINNED_EXECUTOR

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

    from rrr_ray.serving.engine import PINNED_EXECUTOR

    args = EngineConfig(name="m", path=str(REPO / "models" / "rrr-tiny"), dtype="float32",
                        engine_cpus=[0]).vllm_engine_args()
    config = AsyncEngineArgs(**args).create_engine_config()
    assert config.parallel_config.distributed_executor_backend == PINNED_EXECUTOR
    assert config.additional_config == {"rrr_engine_cpus": [0]}
    assert issubclass(resolve_obj_by_qualname(PINNED_EXECUTOR), UniProcExecutor)


def test_engine_cpus_are_checked_against_the_cpus_this_process_may_use():
    from rrr_ray.serving.cpu_executor import engine_cpus

    allowed = os.sched_getaffinity(0)
    assert engine_cpus({}) == {min(allowed)}
    assert engine_cpus({"rrr_engine_cpus": [max(allowed)]}) == {max(allowed)}
    with pytest.raises(ValueError, match="not all among"):
        engine_cpus({"rrr_engine_cpus": [max(allowed) + 64]})


def test_bind_process_binds_every_thread_including_later_ones():
    from rrr_ray.serving.cpu_executor import bind_process

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
