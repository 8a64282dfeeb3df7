"""The shipped configs parse and build: serve_config.yaml (CPU default, three deployments),
serve_config.single.yaml (the same models in one replica), the rrr-tiny variant of the tests and
benchmarks, and the GPU variant."""

from __future__ import annotations

import pytest
import yaml

from deployments.app import build_app
from rrr_ray.serving.config import AppArgs, EngineConfig
from rrr_ray.serving.config import load_app_args
from tests.helpers import REPO


CPU_CONFIGS = ["serve_config.yaml", "serve_config.single.yaml", "serve_config.tiny.yaml"]


@pytest.mark.parametrize("name", [*CPU_CONFIGS, "serve_config.gpu.yaml"])
def test_serve_configs_validate_and_build_a_graph(name):
    args = AppArgs.model_validate(load_app_args(REPO / name))
    assert args.models and args.default_model in [n for m in args.models for n in m.served_names()]
    app = build_app(load_app_args(REPO / name))
    assert app is not None


@pytest.mark.parametrize("name,default", [("serve_config.yaml", "rrr-smollm2"),
                                          ("serve_config.single.yaml", "rrr-smollm2"),
                                          ("serve_config.tiny.yaml", "rrr-tiny")])
def test_cpu_configs_serve_the_fine_tuned_model_on_loopback_with_fractional_cpus(name, default):
    from rrr_ray.model_names import MERGED_NAME
    from rrr_ray.training.pretrained import SMOLLM2_135M

    config = yaml.safe_load((REPO / name).read_text())
    assert config["http_options"]["host"] == "127.0.0.1"
    args = AppArgs.model_validate(load_app_args(REPO / name))
    assert args.default_model == default and args.models[0].path == f"models/{default}"
    if default == "rrr-smollm2":  # the folders jobs.prepare_models builds
        assert [m.path for m in args.models] == [f"models/{MERGED_NAME}", f"models/{SMOLLM2_135M.name}"]
        assert all(m.enforce_eager for m in args.models)  # start-up within 90 s
    cpus = [args.ingress.num_cpus, args.postprocessor.num_cpus] + [m.deployment.num_cpus for m in args.models]
    assert all(0 < c < 1 for c in cpus) and sum(cpus) <= 2
    assert all(m.deployment.num_gpus == 0 for m in args.models)


@pytest.mark.parametrize("name", CPU_CONFIGS)
def test_cpu_only_engine_settings_stay_out_of_the_gpu_variant(name):
    cpu = AppArgs.model_validate(load_app_args(REPO / name))
    gpu = AppArgs.model_validate(load_app_args(REPO / "serve_config.gpu.yaml"))
    assert all(m.engine_niceness == 0 for m in cpu.models)
    assert all(m.engine_niceness is None for m in gpu.models)
    assert all(m.engine_cpus == [0] for m in cpu.models)
    assert all(m.engine_cpus is None for m in gpu.models)
    gpu_env = (yaml.safe_load((REPO / "serve_config.gpu.yaml").read_text())["applications"][0].get("runtime_env") or {})
    assert "RRR_VLLM_BUSY_LOOP_S" not in (gpu_env.get("env_vars") or {})


def test_the_default_is_three_deployments_with_autoscaled_models_and_single_keeps_one_replica():
    default = load_app_args(REPO / "serve_config.yaml")
    assert _deployment_names(build_app(default)) == {"RRRIngress", "RRRPostProcessor", "RRRModel:rrr-smollm2",
                                                     "RRRModel:smollm2-135m-instruct"}
    assert all(m.deployment.autoscaling_config for m in AppArgs.model_validate(default).models)
    assert _deployment_names(build_app(load_app_args(REPO / "serve_config.single.yaml"))) == {"RRRIngress"}
    single = load_app_args(REPO / "serve_config.single.yaml")

    def engine(model: dict) -> dict:
        return {k: v for k, v in model.items() if k not in ("placement", "deployment")}

    assert [engine(m) for m in single["models"]] == [engine(m) for m in default["models"]]  # placed apart only


@pytest.mark.parametrize("name", ["serve_config.single.yaml", "serve_config.tiny.yaml"])
def test_stages_run_in_the_ingress_on_one_small_node_and_in_deployments_of_their_own_on_gpu(name):
    from ray.serve import Application

    cpu = AppArgs.model_validate(load_app_args(REPO / name))
    gpu = AppArgs.model_validate(load_app_args(REPO / "serve_config.gpu.yaml"))
    assert cpu.postprocessor.placement == "ingress" and gpu.postprocessor.placement == "deployment"
    assert {m.placement for m in cpu.models} == {"ingress"} and {m.placement for m in gpu.models} == {"deployment"}
    assert "placement" not in gpu.postprocessor.serve_options("RRRPostProcessor")
    with pytest.raises(ValueError, match="placement"):
        AppArgs.model_validate({"models": [{"name": "a", "path": "x"}], "postprocessor": {"placement": "model"}})
    with pytest.raises(ValueError, match="postprocessor.placement: ingress"):
        AppArgs.model_validate({"models": [{"name": "a", "path": "x", "placement": "ingress"}],
                                "postprocessor": {"placement": "deployment"}})
    one = {"name": "a", "path": "x"}
    for args, deployments in [
            ({"postprocessor": {"placement": "ingress"}}, {"RRRIngress", "RRRModel:a"}),
            ({"postprocessor": {"placement": "deployment"}}, {"RRRIngress", "RRRPostProcessor", "RRRModel:a"}),
            ({"postprocessor": {"placement": "ingress"}, "models": [dict(one, placement="ingress")]}, {"RRRIngress"}),
            ({"postprocessor": {"placement": "ingress"},
              "models": [dict(one, placement="ingress"), {"name": "b", "path": "y"}]}, {"RRRIngress", "RRRModel:b"})]:
        app: Application = build_app({"models": [one], **args})
        assert _deployment_names(app) == deployments


def test_a_model_in_the_ingress_adds_its_resources_to_the_ingress():
    app = build_app({"models": [{"name": "a", "path": "x", "placement": "ingress",
                                 "deployment": {"num_cpus": 0.4, "num_gpus": 1}},
                                {"name": "b", "path": "y", "placement": "ingress", "deployment": {"num_cpus": 0.2}}],
                     "ingress": {"num_cpus": 0.1}, "postprocessor": {"placement": "ingress"}})
    ingress = app._bound_deployment
    assert ingress.ray_actor_options["num_cpus"] == 0.7 and ingress.ray_actor_options["num_gpus"] == 1
    assert [e.name for e in ingress.init_kwargs["engines"]] == ["a", "b"]
    assert type(ingress.init_kwargs["engines"][0]) is EngineConfig and ingress.init_kwargs["models"] == {}


def _deployments(app) -> dict:
    """The deployments an application binds, by name (walks the bound arguments)."""
    found: dict = {}

    def walk(value) -> None:
        deployment = getattr(value, "_bound_deployment", None)
        if deployment is not None:
            found[deployment.name] = deployment
            walk([*deployment.init_args, *deployment.init_kwargs.values()])
        elif isinstance(value, dict):
            for v in value.values():
                walk(v)
        elif isinstance(value, (list, tuple)):
            for v in value:
                walk(v)

    walk(app)
    return found


def _deployment_names(app) -> set[str]:
    return set(_deployments(app))


def test_each_deployments_resources_come_from_the_config_alone():
    """The deployment classes declare no resources: ``build_app`` gives each replica those of its
    entry in the config, through ``.options()``."""
    raw = load_app_args(REPO / "serve_config.yaml")
    args = AppArgs.model_validate(raw)
    options = {"RRRIngress": args.ingress, "RRRPostProcessor": args.postprocessor,
               **{f"RRRModel:{m.name}": m.deployment for m in args.models}}
    assert {name: d.ray_actor_options for name, d in _deployments(build_app(raw)).items()} == {
        name: {"num_cpus": o.num_cpus, "num_gpus": o.num_gpus} for name, o in options.items()}


def test_access_log_can_be_turned_off_per_deployment():
    from rrr_ray.serving.config import DeploymentOptions

    assert "logging_config" not in DeploymentOptions().serve_options("x")
    assert DeploymentOptions(access_log=False).serve_options("x")["logging_config"] == {"enable_access_log": False}


def test_gpu_variant_autoscales_gpu_replicas_and_serves_a_lora_adapter():
    args = AppArgs.model_validate(load_app_args(REPO / "serve_config.gpu.yaml"))
    main = args.models[0]
    assert main.deployment.num_gpus == 1 and main.deployment.autoscaling_config["max_replicas"] > 1
    assert any(m.lora_modules for m in args.models)


def test_bad_app_args_are_rejected_with_a_clear_message():
    with pytest.raises(ValueError, match="default_model"):
        AppArgs.model_validate({"models": [{"name": "a", "path": "x"}], "default_model": "b"})
    with pytest.raises(ValueError, match="unique"):
        AppArgs.model_validate({"models": [{"name": "a", "path": "x"}, {"name": "a", "path": "y"}]})


def test_cluster_yaml_has_a_head_and_an_autoscaled_gpu_group():
    cluster = yaml.safe_load((REPO / "cluster.yaml").read_text())
    nodes = cluster["available_node_types"]
    gpu = [n for n in nodes.values() if n["resources"].get("GPU")]
    assert cluster["head_node_type"] in nodes and gpu and gpu[0]["max_workers"] > gpu[0]["min_workers"]


def test_cluster_yaml_starts_every_node_with_ray_token_auth_and_a_loopback_dashboard():
    cluster = yaml.safe_load((REPO / "cluster.yaml").read_text())
    starts = cluster["head_start_ray_commands"] + cluster["worker_start_ray_commands"]
    ray_starts = [c for c in starts if "ray start" in c]
    assert len(ray_starts) == 2 and all("RAY_AUTH_MODE=token ray start" in c for c in ray_starts)
    assert not any("dashboard-host" in c for c in starts)  # the job API stays on the head's loopback
    assert "~/.ray/auth_token" in cluster["file_mounts"]


def test_the_haproxy_wrapper_binds_only_the_stats_and_metrics_frontends_to_loopback(tmp_path):
    import subprocess

    config = tmp_path / "haproxy.cfg"
    config.write_text("global\n  maxconn 10\nfrontend prometheus\n    bind :9101\n    mode http\n"
                      "frontend http_frontend\n    bind *:8000\nlisten stats\n  bind *:8404\n  stats enable\n")
    out = subprocess.run([str(REPO / "scripts" / "haproxy-loopback"), "-db", "-f", str(config), "-sf", "12"],
                         env={"RRR_HAPROXY_BINARY": "/bin/echo", "PATH": "/usr/bin:/bin"},
                         capture_output=True, text=True, check=True).stdout
    assert out.split() == ["-db", "-f", str(config), "-sf", "12"]  # the real binary gets the same arguments
    binds = [line.strip() for line in config.read_text().splitlines() if "bind" in line]
    assert binds == ["bind 127.0.0.1:9101", "bind *:8000", "bind 127.0.0.1:8404"]  # HTTP: as configured


def test_make_serve_checks_its_ports_first():
    serve = (REPO / "Makefile").read_text().split("\nserve:")[1].split("\n\n")[0]
    assert serve.index("rrr_ray.serving.ports serve_config.yaml") < serve.index("serve run serve_config.yaml")
