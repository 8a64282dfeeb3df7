"""LoRA adapters on demand without Ray or vLLM: folder checks, names, the catalog, the per-replica
LRU, and the HTTP routes over the real post-processing with a fake engine (one replica, in-process)."""

from __future__ import annotations

import asyncio
import json
import shutil
from pathlib import Path

import httpx
import pytest

from rrr_ray.serving.adapter_options import AdapterOptions
from rrr_ray.serving.adapters import (
    AdapterCatalog, AdapterError, AdapterLRU, AdapterNotFound, BrokenAdapter, ServedBase, list_folder, read_adapter)
from rrr_ray.serving.api import create_app
from rrr_ray.serving.config import EngineConfig
from rrr_ray.serving.errors import ModelNotServedError
from rrr_ray.serving.guard import ApiKeys
from rrr_ray.serving.healing import Healing
from rrr_ray.serving.model_server import ModelServer
from rrr_ray.serving.postprocessing import PostProcessing
from rrr_ray.serving.messages import EngineRequest
from rrr_ray.serving.sampling import SamplingOptions
from rrr_ray.serving.service import RRRService, ServedModel
from tests.helpers import REPO

TINY_LORA = REPO / "models" / "rrr-tiny-lora"  # trained on models/rrr-tiny-base, rank 16


def base(name: str = "rrr-tiny-base", rank: int = 16, folders: list[str] | None = None) -> ServedBase:
    return ServedBase(name=name, path=str(REPO / "models" / name), options=AdapterOptions(folders=folders or []),
                      max_lora_rank=rank, lora_modules={})


def adapter_copy(root: Path, name: str, **config_changes) -> Path:
    """A copy of rrr-tiny-lora under ``root/name`` with ``adapter_config.json`` changed."""
    dest = root / name
    shutil.copytree(TINY_LORA, dest)
    config = json.loads((dest / "adapter_config.json").read_text())
    config.update(config_changes)
    (dest / "adapter_config.json").write_text(json.dumps(config))
    return dest


# -- the checks of a folder ---------------------------------------------------------------------------

def test_a_good_adapter_is_read_with_its_rank_and_base():
    info = read_adapter("rrr-tiny-base:coach", str(TINY_LORA), base())
    assert (info.rank, info.base, info.path) == (16, "rrr-tiny-base", str(TINY_LORA))


def test_each_bad_adapter_gets_a_4xx_naming_its_problem(tmp_path):
    cases = {
        "missing": (tmp_path / "nothing", 404, "no folder"),
        "rank": (adapter_copy(tmp_path, "rank", r=64), 400, "rank 64, above the max_lora_rank 16"),
        "other base": (TINY_LORA, 400, "trained on 'models/rrr-tiny-base', not on model 'rrr-tiny'"),
        "modules_to_save": (adapter_copy(tmp_path, "mts", modules_to_save=["lm_head"]), 400, "modules_to_save"),
        "not lora": (adapter_copy(tmp_path, "ia3", peft_type="IA3"), 400, "only LoRA"),
    }
    no_config = tmp_path / "no_config"
    no_config.mkdir()
    cases["no config"] = (no_config, 400, "no adapter_config.json")
    bad_json = adapter_copy(tmp_path, "bad_json")
    (bad_json / "adapter_config.json").write_text("{not json")
    cases["bad json"] = (bad_json, 400, "not valid JSON")
    no_weights = adapter_copy(tmp_path, "no_weights")
    (no_weights / "adapter_model.safetensors").unlink()
    cases["no weights"] = (no_weights, 400, "no weights")
    for case, (path, status, message) in cases.items():
        served = base("rrr-tiny") if case == "other base" else base()
        with pytest.raises(AdapterError) as err:
            read_adapter("x", str(path), served)
        assert err.value.status == status and message in str(err.value), (case, str(err.value))


def test_base_aliases_accept_an_adapter_trained_on_another_name_of_the_model():
    aliased = ServedBase(name="rrr-tiny", path=str(REPO / "models/rrr-tiny"), max_lora_rank=16, lora_modules={},
                         options=AdapterOptions(base_aliases=["rrr-tiny-base"]))
    assert read_adapter("rrr-tiny:x", str(TINY_LORA), aliased).base == "rrr-tiny"


# -- names ------------------------------------------------------------------------------------------

def test_names_resolve_as_base_colon_adapter_and_as_a_plain_unambiguous_name(tmp_path):
    shutil.copytree(TINY_LORA, tmp_path / "a" / "coach")
    shutil.copytree(TINY_LORA, tmp_path / "a" / "support")
    shutil.copytree(TINY_LORA, tmp_path / "b" / "support")
    other = ServedBase(name="tiny-twin", path=str(REPO / "models/rrr-tiny-base"), max_lora_rank=16, lora_modules={},
                       options=AdapterOptions(folders=[str(tmp_path / "b")]))
    catalog = AdapterCatalog([base(folders=[str(tmp_path / "a")]), other])
    assert catalog.resolve("rrr-tiny-base:coach").path == str(tmp_path / "a" / "coach")
    assert catalog.resolve("coach").name == "rrr-tiny-base:coach"  # only one model has it
    assert catalog.resolve("tiny-twin:support").base == "tiny-twin"
    with pytest.raises(AdapterError, match="served on several models") as err:
        catalog.resolve("support")
    assert err.value.status == 400
    with pytest.raises(ModelNotServedError):
        catalog.resolve("nobody")
    with pytest.raises(AdapterNotFound, match="not in its adapter folders"):
        catalog.resolve("rrr-tiny-base:nobody")
    with pytest.raises(ModelNotServedError):
        catalog.resolve("no-such-model:coach")


def test_the_listing_shows_loaded_adapters_and_what_is_available(tmp_path):
    for name in ("coach", "support"):
        shutil.copytree(TINY_LORA, tmp_path / name)
    (tmp_path / "not-an-adapter").mkdir()
    assert list_folder(str(tmp_path)) == ["coach", "support"]
    catalog = AdapterCatalog([base(folders=[str(tmp_path)])])
    catalog.resolve("coach")
    assert [(i.name, loaded) for i, loaded in catalog.listing()] == [
        ("rrr-tiny-base:coach", True), ("rrr-tiny-base:support", False)]


def test_an_object_store_uri_folder_is_read_through_pyarrow(tmp_path):
    shutil.copytree(TINY_LORA, tmp_path / "coach")
    catalog = AdapterCatalog([base(folders=[f"file://{tmp_path}"])])
    assert catalog.resolve("coach").path == f"file://{tmp_path}/coach"
    assert [i.name for i, _ in catalog.listing()] == ["rrr-tiny-base:coach"]


def test_run_time_loading_follows_the_switch():
    for mode, keys, allowed in (("on", False, True), ("off", True, False), ("with_api_keys", False, False),
                                ("with_api_keys", True, True)):
        catalog = AdapterCatalog([base()], runtime_loading=mode)
        if allowed:
            catalog.check_runtime(keys)
        else:
            with pytest.raises(AdapterError) as err:
                catalog.check_runtime(keys)
            assert err.value.status == 403 and "runtime_adapters" in str(err.value)


# -- the per-replica LRU --------------------------------------------------------------------------------

class Recorder:
    def __init__(self) -> None:
        self.calls: list[tuple] = []

    async def add_adapter(self, name, path, adapter_id):
        self.calls.append(("add", name, adapter_id))

    async def remove_adapter(self, name):
        self.calls.append(("remove", name))


def test_the_lru_keeps_the_most_recent_adapters_with_stable_ids_and_spares_those_in_use():
    async def run():
        engine, lru = Recorder(), AdapterLRU(2, static={"configured": "x"})
        async with lru.use(engine, "a", "/a") as cold:
            assert cold >= 0
        async with lru.use(engine, "b", "/b"):
            pass
        async with lru.use(engine, "a", "/a") as warm:
            assert warm == 0.0
        async with lru.use(engine, "c", "/c"):  # evicts b, the least recently used
            pass
        assert list(lru.loaded) == ["a", "c"]
        async with lru.use(engine, "a", "/a"), lru.use(engine, "c", "/c"):
            async with lru.use(engine, "d", "/d"):  # a and c are in use: none is evicted meanwhile
                assert set(lru.loaded) == {"a", "c", "d"}
        assert list(lru.loaded) == ["a", "c"]  # back within capacity once d is not in use
        async with lru.use(engine, "b", "/b"):
            pass
        assert lru.ids == {"configured": 1, "a": 2, "b": 3, "c": 4, "d": 5}  # b kept its id
        assert ("remove", "b") in engine.calls and ("remove", "d") in engine.calls and lru.stats()["warm_hits"] == 3
        assert await lru.release(engine, "b") and not await lru.release(engine, "b")

    asyncio.run(run())


# -- the HTTP routes over the post-processing and a fake engine (the one-replica shape) ------------------

def fake_stack(tmp_path: Path, runtime: str = "on", capacity: int = 2, keys: ApiKeys | None = None):
    server = ModelServer(EngineConfig(**{"name": "rrr-tiny-base", "path": str(REPO / "models/rrr-tiny-base"),
                          "engine_class": "rrr_ray.serving.fake_engine:FakeEngine", "max_model_len": 4096,
                          "engine_kwargs": {"token_interval_s": 0.0, "adapter_load_s": 0.01},
                          "adapters": {"folders": [str(tmp_path / "served")], "max_cpu_loras": capacity,
                                       "max_loras": 1}}))
    asyncio.run(server.start())
    postprocessing = PostProcessing({"rrr-tiny-base": server})
    catalog = AdapterCatalog.from_models([server.config], runtime)
    catalog.stages = postprocessing
    service = RRRService(postprocessing.stream, postprocessing.health,
                         [ServedModel(name="rrr-tiny-base", root="-", heal=False)], adapters=catalog)
    return server, create_app(service, api_keys=keys or ApiKeys())


def call(app, method: str, path: str, **kwargs) -> httpx.Response:
    async def go():
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as client:
            return await client.request(method, path, **kwargs)

    return asyncio.run(go())


def chat(app, model: str) -> httpx.Response:
    return call(app, "POST", "/generate", json={"prompt": "hi", "model": model, "max_new_tokens": 64})


def test_load_serve_unload_through_the_routes(tmp_path):
    server, app = fake_stack(tmp_path)
    loaded = call(app, "POST", "/v1/load_lora_adapter", json={"lora_name": "coach", "lora_path": str(TINY_LORA)})
    assert loaded.status_code == 200, loaded.text
    assert loaded.json()["lora_name"] == "rrr-tiny-base:coach"
    for name, cold in (("rrr-tiny-base:coach", False), ("coach", False)):  # loaded into the replica by the route
        reply = chat(app, name)
        assert reply.status_code == 200 and reply.json()["validation"]["valid"], reply.text
        assert reply.json()["metadata"]["model"] == "rrr-tiny-base:coach"
        assert (reply.json()["metadata"]["adapter_load_seconds"] > 0) is cold
    listed = {m["id"]: m for m in call(app, "GET", "/v1/models").json()["data"]}
    assert listed["rrr-tiny-base:coach"]["parent"] == "rrr-tiny-base"
    assert listed["rrr-tiny-base:coach"]["status"] == "loaded"
    assert call(app, "POST", "/v1/unload_lora_adapter", json={"lora_name": "coach"}).status_code == 200
    assert server.engine.loaded_adapters() == []  # freed in the engine
    gone = chat(app, "coach")
    assert gone.status_code == 404 and "not served" in gone.json()["error"]
    assert call(app, "POST", "/v1/unload_lora_adapter", json={"lora_name": "coach"}).status_code == 404


def test_a_published_folder_is_served_by_name_on_first_use(tmp_path):
    server, app = fake_stack(tmp_path)
    assert chat(app, "rrr-tiny-base:coach").status_code == 404
    shutil.copytree(TINY_LORA, tmp_path / "served" / "coach")  # published while serving
    listed = {m["id"]: m["status"] for m in call(app, "GET", "/v1/models").json()["data"]}
    assert listed["rrr-tiny-base:coach"] == "available"
    first, second = chat(app, "coach"), chat(app, "coach")
    assert first.json()["metadata"]["adapter_load_seconds"] > 0
    assert second.json()["metadata"]["adapter_load_seconds"] == 0
    assert server.adapter_stats() == {"loaded": ["rrr-tiny-base:coach"], "cold_loads": 1, "warm_hits": 1}


def test_bad_adapters_get_clear_4xx_and_the_engine_serves_on(tmp_path):
    server, app = fake_stack(tmp_path)
    cases = [
        ({"lora_name": "x", "lora_path": str(tmp_path / "nothing")}, 404, "no folder"),
        ({"lora_name": "x", "lora_path": str(adapter_copy(tmp_path, "big", r=64))}, 400, "max_lora_rank"),
        ({"lora_name": "x", "lora_path": str(REPO / "models/rrr-smollm2-lora")}, 400, "trained on"),
        ({"lora_name": "rrr-tiny:x", "lora_path": str(TINY_LORA)}, 404, "takes no adapters"),
        ({"lora_name": "x"}, 404, "not in its adapter folders"),
        ({"lora_path": str(TINY_LORA)}, 400, "lora_name"),
    ]
    for body, status, message in cases:
        answer = call(app, "POST", "/v1/load_lora_adapter", json=body)
        assert answer.status_code == status and message in answer.json()["error"]["message"], (body, answer.text)
    # weights vLLM (here: the fake engine) refuses: a 400 from the replica, the name is not kept
    no_weights = adapter_copy(tmp_path, "no_weights")
    for f in no_weights.glob("adapter_model.*"):
        f.unlink()
    (no_weights / "adapter_model.bin").write_bytes(b"")
    answer = call(app, "POST", "/v1/load_lora_adapter", json={"lora_name": "broken", "lora_path": str(no_weights)})
    assert answer.status_code == 400 and "cannot be loaded" in answer.json()["error"]["message"], answer.text
    assert chat(app, "broken").status_code == 404
    assert chat(app, "rrr-tiny-base").status_code == 200  # the engine serves on
    asyncio.run(server.check_health())


def test_the_routes_are_off_or_behind_the_api_key_as_configured(tmp_path):
    body = {"lora_name": "coach", "lora_path": str(TINY_LORA)}
    _, off = fake_stack(tmp_path, runtime="off")
    refused = call(off, "POST", "/v1/load_lora_adapter", json=body)
    assert refused.status_code == 403 and "runtime_adapters: off" in refused.json()["error"]["message"]
    _, keyed = fake_stack(tmp_path, runtime="with_api_keys", keys=ApiKeys(["k1"]))
    assert call(keyed, "POST", "/v1/load_lora_adapter", json=body).status_code == 401
    assert call(keyed, "POST", "/v1/load_lora_adapter", json=body,
                headers={"Authorization": "Bearer k1"}).status_code == 200


def test_a_healed_continuation_names_the_same_adapter():
    request = EngineRequest(request_id="r", model="rrr-tiny-base:coach", messages=[{"role": "user", "content": "hi"}],
                            sampling=SamplingOptions(max_new_tokens=32), heal=True, adapter_path="/x/coach")
    continuation = Healing(request, lambda r: None).continuation("<react>", ".*", 8)  # type: ignore[arg-type]
    assert (continuation.model, continuation.adapter_path) == ("rrr-tiny-base:coach", "/x/coach")


def test_engine_args_take_slots_and_lru_from_the_config_beside_lora_modules():
    config = EngineConfig(name="m", path="p", lora_modules={"a": "/a"},
                          adapters=AdapterOptions(max_loras=2, max_cpu_loras=6))
    args = config.vllm_engine_args()
    assert (args["enable_lora"], args["max_loras"], args["max_cpu_loras"]) == (True, 2, 6)
    assert "enable_lora" not in EngineConfig(name="m", path="p").vllm_engine_args()
    with pytest.raises(ValueError, match="max_cpu_loras"):
        AdapterOptions(max_loras=4, max_cpu_loras=2)


def test_broken_adapter_is_a_bad_request_subclass():
    assert issubclass(BrokenAdapter, AdapterError) and BrokenAdapter("x").status == 400


# -- publishing -----------------------------------------------------------------------------------------

def test_publishing_replaces_a_version_atomically_and_refuses_bad_names(tmp_path):
    from rrr_ray.training.publish import publish_adapter

    folder = tmp_path / "served"
    first = publish_adapter(TINY_LORA, folder, "coach")
    assert (first / "adapter_model.safetensors").exists() and list_folder(str(folder)) == ["coach"]
    second = adapter_copy(tmp_path, "v2", r=8)
    assert publish_adapter(second, folder, "coach") == first
    assert json.loads((first / "adapter_config.json").read_text())["r"] == 8
    assert [p.name for p in folder.iterdir()] == ["coach"]  # no staging or old folder left
    for bad in ("a:b", "../x", "", ".hidden"):
        with pytest.raises(ValueError, match="adapter name"):
            publish_adapter(TINY_LORA, folder, bad)
    with pytest.raises(FileNotFoundError, match="adapter_config.json"):
        publish_adapter(tmp_path, folder, "empty")


def test_the_publish_job_and_train_lora_refuse_bad_input(tmp_path):
    import subprocess
    import sys

    bad_name = subprocess.run([sys.executable, "-m", "jobs.train_lora", "--base-model", "models/rrr-tiny",
                               "--output-dir", str(tmp_path / "o"), "--publish-to", str(tmp_path), "--adapter-name",
                               "a:b"], cwd=REPO, capture_output=True, text=True)
    assert bad_name.returncode == 2 and "--adapter-name 'a:b'" in bad_name.stderr
    missing = subprocess.run([sys.executable, "-m", "jobs.publish_adapter", str(tmp_path / "nope"), str(tmp_path),
                              "--name", "x"], cwd=REPO, capture_output=True, text=True)
    assert missing.returncode == 2 and "no adapter_config.json" in missing.stderr
    ok = subprocess.run([sys.executable, "-m", "jobs.publish_adapter", str(TINY_LORA), str(tmp_path / "s"),
                         "--name", "coach"], cwd=REPO, capture_output=True, text=True)
    assert ok.returncode == 0 and (tmp_path / "s" / "coach" / "adapter_config.json").exists()
