"""``dtype: auto``: chosen from the CPU's flags at start-up, passed to vLLM, shown in /v1/models."""

from __future__ import annotations

import asyncio

import httpx
import pytest

from rrr_ray.serving import hardware
from rrr_ray.serving.api import create_app
from rrr_ray.serving.config import ModelArgs
from rrr_ray.serving.config import EngineConfig
from rrr_ray.serving.hardware import cpu_dtype, parse_cpu_flags, resolve_dtype
from rrr_ray.serving.service import RRRService, ServedModel

SAPPHIRE_RAPIDS = "fpu sse2 avx2 avx512f avx512bw avx512_bf16 amx_bf16 amx_tile amx_int8"
ICE_LAKE = "fpu sse2 avx2 avx512f avx512bw avx512_vnni"
ZEN2 = "fpu sse2 avx avx2 fma"


def cpuinfo(*flag_lines: str) -> str:
    return "\n\n".join(f"processor\t: {i}\nmodel name\t: cpu\nflags\t\t: {f}\n" for i, f in enumerate(flag_lines))


@pytest.mark.parametrize("flags, expected", [
    (SAPPHIRE_RAPIDS, "bfloat16"),   # AMX and AVX-512 BF16
    ("avx512f avx512_bf16", "bfloat16"),  # AVX-512 BF16 alone (Cooper Lake, Zen 4)
    ("avx512f amx_bf16 amx_tile", "bfloat16"),  # AMX alone
    (ICE_LAKE, "float32"),          # AVX-512 without bfloat16: emulated bfloat16 is slower
    (ZEN2, "float32"),
    ("", "float32"),
])
def test_cpu_dtype_is_bfloat16_only_with_native_bfloat16(flags, expected):
    assert cpu_dtype(parse_cpu_flags(cpuinfo(flags, flags))) == expected


def test_cpu_flags_are_those_every_cpu_has():
    """A flag one CPU lacks is not used (a kernel may run on any of them)."""
    flags = parse_cpu_flags(cpuinfo(SAPPHIRE_RAPIDS, ICE_LAKE))
    assert "avx512f" in flags and "avx512_bf16" not in flags
    assert cpu_dtype(flags) == "float32"
    assert parse_cpu_flags("Features\t: fp asimd bf16\n") == {"fp", "asimd", "bf16"}  # aarch64's key
    assert parse_cpu_flags("garbage without flags") == frozenset()


def test_auto_resolves_by_flags_explicit_wins_and_cuda_keeps_auto():
    assert resolve_dtype("auto", flags=SAPPHIRE_RAPIDS.split(), cuda=False) == "bfloat16"
    assert resolve_dtype("auto", flags=ZEN2.split(), cuda=False) == "float32"
    assert resolve_dtype("float32", flags=SAPPHIRE_RAPIDS.split(), cuda=False) == "float32"
    assert resolve_dtype("bfloat16", flags=ZEN2.split(), cuda=False) == "bfloat16"
    assert resolve_dtype("auto", flags=SAPPHIRE_RAPIDS.split(), cuda=True) == "auto"


def test_this_machine_is_detected_from_proc_cpuinfo(monkeypatch, tmp_path):
    """The machine's flags come from /proc/cpuinfo, read at run time (here a file in its place)."""
    fake = tmp_path / "cpuinfo"
    for text, expected in ((cpuinfo(SAPPHIRE_RAPIDS), "bfloat16"), (cpuinfo(ZEN2), "float32")):
        fake.write_text(text)
        monkeypatch.setattr(hardware, "CPUINFO", fake)
        hardware.machine_cpu_flags.cache_clear()
        try:
            assert resolve_dtype("auto", cuda=False) == expected
        finally:
            hardware.machine_cpu_flags.cache_clear()


def test_engine_args_and_model_card_carry_the_resolved_dtype(monkeypatch):
    """The engine config hands vLLM the resolved dtype, and /v1/models shows the same one on the
    model and on its LoRA adapters; an explicit dtype is shown as given."""
    from deployments.app import served_model_entries

    monkeypatch.setattr(hardware, "machine_cpu_flags", lambda: frozenset(SAPPHIRE_RAPIDS.split()))
    monkeypatch.setattr(hardware, "_cuda_visible", lambda: False)
    assert EngineConfig(name="m", path="p").vllm_engine_args()["dtype"] == "bfloat16"
    assert EngineConfig(name="m", path="p", dtype="float32").vllm_engine_args()["dtype"] == "float32"

    entries = (served_model_entries(ModelArgs(name="auto", path="p", lora_modules={"auto-lora": "a"}))
               + served_model_entries(ModelArgs(name="f32", path="q", dtype="float32")))
    assert [e.dtype for e in entries] == ["bfloat16", "bfloat16", "float32"]
    service = RRRService(None, None, entries)

    async def models():
        transport = httpx.ASGITransport(app=create_app(service))
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as c:
            return (await c.get("/v1/models")).json()

    listed = {m["id"]: m for m in asyncio.run(models())["data"]}
    assert {k: m["dtype"] for k, m in listed.items()} == {"auto": "bfloat16", "auto-lora": "bfloat16",
                                                          "f32": "float32"}
    assert listed["auto-lora"]["parent"] == "auto"
