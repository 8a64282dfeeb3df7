"""The deployment files, checked offline: KubeRay's RayService manifests against KubeRay's own CRD
schema (pinned, deploy/kuberay/crd/) with unknown fields refused, their serveConfigV2 rendered from
the Serve configs (no drift) and valid for Ray Serve's ServeDeploySchema and the application's
args; the image's serve config; the Dockerfile and compose.yaml's promises."""

from __future__ import annotations

import copy
import re

import pytest
import yaml

from rrr_ray import deploy_render
from rrr_ray.deploy_render import KUBERAY_MANIFESTS, render_kuberay, validate_kuberay, validate_manifest
from tests.helpers import REPO


def _manifest(name: str) -> dict:
    return yaml.safe_load((REPO / name).read_text())


def test_the_manifests_validate_against_kuberay_and_ray_serve_schemas():
    assert validate_kuberay() == {m: [] for m in KUBERAY_MANIFESTS}


def test_serve_config_v2_is_rendered_from_the_serve_configs():
    assert render_kuberay(check=True) == [], "run `python -m rrr_ray.deploy_render kuberay`"
    for manifest, source in KUBERAY_MANIFESTS.items():
        rendered = yaml.safe_load(_manifest(manifest)["spec"]["serveConfigV2"])
        config = yaml.safe_load((REPO / source).read_text())
        assert rendered["applications"][0]["import_path"] == config["applications"][0]["import_path"]
        assert rendered["http_options"] == {**config["http_options"], "host": "0.0.0.0"}
        models = rendered["applications"][0]["args"]["models"]
        assert all(not m["path"].startswith("models/") for m in models)  # the image's /app/models


def test_a_changed_serve_config_is_drift(tmp_path, monkeypatch):
    config = yaml.safe_load((REPO / "serve_config.yaml").read_text())
    config["applications"][0]["args"]["stream_interval_ms"] = 35
    changed = tmp_path / "serve_config.yaml"
    changed.write_text(yaml.safe_dump(config))
    manifest = tmp_path / "rayservice.cpu.yaml"
    manifest.write_text((REPO / "deploy/kuberay/rayservice.cpu.yaml").read_text())
    monkeypatch.setattr(deploy_render, "REPO", tmp_path)
    monkeypatch.setattr(deploy_render, "KUBERAY_MANIFESTS", {manifest.name: changed.name})
    assert render_kuberay(check=True) == [manifest.name]
    assert render_kuberay() == [manifest.name]
    assert "stream_interval_ms: 35" in manifest.read_text() and render_kuberay(check=True) == []
    assert manifest.read_text().startswith("# rrr-ray on Kubernetes")  # comments kept


@pytest.mark.parametrize("where,mutate,expected", [
    ("CRD", lambda d: d["spec"]["rayClusterConfig"]["workerGroupSpecs"][0].update(maxReplica=3), "maxReplica"),
    ("CRD", lambda d: d["spec"]["rayClusterConfig"].update(enableInTreeAutoScaling=True), "enableInTreeAutoScaling"),
    ("CRD", lambda d: d["spec"]["rayClusterConfig"]["workerGroupSpecs"][0].update(minReplicas="one"), "minReplicas"),
    ("Serve", lambda d: d["spec"].update(serveConfigV2=d["spec"]["serveConfigV2"].replace(
        "route_prefix:", "route_prefx:")), "route_prefx"),
    ("Serve", lambda d: d["spec"].update(serveConfigV2=d["spec"]["serveConfigV2"].replace(
        "proxy_location:", "proxy_locaton:")), "proxy_locaton"),
    ("args", lambda d: d["spec"].update(serveConfigV2=d["spec"]["serveConfigV2"].replace(
        "max_ongoing_requests:", "max_ongoing_request:", 1)), "max_ongoing_request"),
    ("args", lambda d: d["spec"].update(serveConfigV2=re.sub(
        r"max_model_len: \d+", "max_model_len: lots", d["spec"]["serveConfigV2"], count=1)), "max_model_len"),
])
@pytest.mark.parametrize("manifest", list(KUBERAY_MANIFESTS))
def test_a_misspelled_or_wrong_field_fails_validation(manifest, where, mutate, expected):
    doc = copy.deepcopy(_manifest(manifest))
    assert validate_manifest(doc) == []
    before = copy.deepcopy(doc)
    mutate(doc)
    assert doc != before, f"the {where} mutation changed nothing in {manifest}"
    problems = validate_manifest(doc)
    assert problems and any(expected in p for p in problems), problems


def test_the_cli_reports_problems_and_exits_non_zero(capsys):
    assert deploy_render.main(["validate"]) == 0
    assert "valid" in capsys.readouterr().out
    assert deploy_render.main(["kuberay", "--check"]) == 0
    assert deploy_render.main(["container", str(REPO / "nope.yaml")]) == 2
    assert "nope.yaml" in capsys.readouterr().err


def test_the_container_config_listens_on_every_interface_and_changes_nothing_else():
    config = yaml.safe_load((REPO / "serve_config.yaml").read_text())
    rendered = deploy_render.with_host(config)
    assert rendered["http_options"]["host"] == "0.0.0.0" and config["http_options"]["host"] == "127.0.0.1"
    assert {k: v for k, v in rendered.items() if k != "http_options"} == \
        {k: v for k, v in config.items() if k != "http_options"}


def test_the_gpu_rayservice_has_a_cpu_head_an_autoscaled_gpu_group_and_token_auth():
    cluster = _manifest("deploy/kuberay/rayservice.gpu.yaml")["spec"]["rayClusterConfig"]
    assert cluster["enableInTreeAutoscaling"] is True
    assert cluster["authOptions"] == {"mode": "token", "secretName": "rrr-ray-token"}
    head = cluster["headGroupSpec"]["template"]["spec"]["containers"][0]["resources"]["limits"]
    assert "nvidia.com/gpu" not in head
    (group,) = cluster["workerGroupSpecs"]
    assert group["minReplicas"] < group["maxReplicas"]
    assert group["template"]["spec"]["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == "1"


def test_dockerfile_and_compose_keep_their_promises():
    dockerfile = (REPO / "Dockerfile").read_text()
    assert "ARG BASE=python:3.11-slim-bookworm" in dockerfile and "EXPOSE 8000" in dockerfile
    assert "HEALTHCHECK" in dockerfile and "USER rrr" in dockerfile
    assert "pip.conf" not in dockerfile  # the build machine's pip configuration is mounted, never copied
    # the wheels are installed before the code is copied, by the install script make install runs
    cpu = dockerfile[dockerfile.index("AS cpu"):]
    assert cpu.index("install.sh --runtime debian packages") < cpu.index("COPY . .") < cpu.index("project models")
    compose = yaml.safe_load((REPO / "compose.yaml").read_text())
    for name, service in compose["services"].items():
        assert all(p.startswith("127.0.0.1:") for p in service["ports"]), name
        assert "RRR_API_KEY" in service["environment"]  # from the environment, no value in the file
    assert compose["services"]["rrr-gpu"]["profiles"] == ["gpu"]
    devices = compose["services"]["rrr-gpu"]["deploy"]["resources"]["reservations"]["devices"]
    assert devices[0]["driver"] == "nvidia"
