"""Deployment files rendered from the Serve configs, so that each setting is written once.

    python -m rrr_ray.deploy_render container serve_config.yaml   # the image's config: HTTP host 0.0.0.0
    python -m rrr_ray.deploy_render kuberay [--check]             # deploy/kuberay/*.yaml's serveConfigV2
    python -m rrr_ray.deploy_render validate                      # the manifests, offline
    python -m rrr_ray.deploy_render crd ray.io_rayservices.yaml   # vendor KubeRay's CRD schema

``kuberay`` rewrites the ``serveConfigV2`` block of each manifest in ``KUBERAY_MANIFESTS`` from
its Serve config (the HTTP host 0.0.0.0, the config's model folders under the image's
``/app``); ``--check`` changes nothing and exits 1 when a manifest has drifted. ``validate``
checks every manifest against KubeRay's RayService CRD schema (``CRD_SCHEMA``, pinned to
``KUBERAY_VERSION``) with unknown fields refused, as ``kubectl --validate=strict`` does, and
every ``serveConfigV2`` against Ray Serve's ``ServeDeploySchema``, unknown fields refused too.
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import typing
from pathlib import Path, PurePosixPath
from typing import Any, Iterator

import yaml

REPO = Path(__file__).resolve().parents[1]
IMAGE_WORKDIR = "/app"
"""The Dockerfile's WORKDIR: where the image holds the code and ``models/``."""
KUBERAY_VERSION = "v1.7.0"
CRD_SCHEMA = REPO / "deploy" / "kuberay" / "crd" / f"rayservice-{KUBERAY_VERSION}.schema.json"
"""The ``openAPIV3Schema`` of KubeRay's ``RayService`` (ray.io/v1), descriptions left out."""
KUBERAY_MANIFESTS: dict[str, str] = {
    "deploy/kuberay/rayservice.gpu.yaml": "serve_config.gpu.yaml",
    "deploy/kuberay/rayservice.cpu.yaml": "serve_config.yaml",
}
"""Each RayService manifest and the Serve config its ``serveConfigV2`` is rendered from."""
APP_ARGS = {"deployments.app:build_app": "rrr_ray.serving.config:AppArgs"}
"""The pydantic model of each application's ``args:``, by import path."""
SERVE_CONFIG_KEY = "serveConfigV2: |"
CONTAINER_HOST = "0.0.0.0"


class RenderError(Exception):
    """A config or manifest that cannot be rendered or does not validate; the message says where."""


def load_yaml(path: Path) -> dict[str, Any]:
    try:
        data = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise RenderError(f"{path}: {exc}") from None
    if not isinstance(data, dict):
        raise RenderError(f"{path}: not a YAML mapping")
    return data


def with_host(config: dict[str, Any], host: str = CONTAINER_HOST) -> dict[str, Any]:
    """The Serve config with its HTTP host replaced: 0.0.0.0 inside a container or a pod."""
    config = copy.deepcopy(config)
    config["http_options"] = {**(config.get("http_options") or {}), "host": host}
    return config


def _in_image(path: str) -> str:
    parts = PurePosixPath(path).parts
    return f"{IMAGE_WORKDIR}/{path}" if parts and parts[0] == "models" else path


def kuberay_serve_config(config: dict[str, Any]) -> dict[str, Any]:
    """``serveConfigV2`` of a Serve config: the HTTP host 0.0.0.0, and the model folders the
    config names under ``models/`` taken from the image (``/app/models/...``); hub ids and
    absolute paths unchanged."""
    config = with_host(config)
    for app in config.get("applications") or []:
        for model in (app.get("args") or {}).get("models") or []:
            if isinstance(model.get("path"), str):
                model["path"] = _in_image(model["path"])
            if isinstance(model.get("lora_modules"), dict):
                model["lora_modules"] = {k: _in_image(v) for k, v in model["lora_modules"].items()}
    return config


def render_serve_config_v2(source: Path) -> str:
    header = (f"# Rendered from {source.relative_to(REPO) if source.is_relative_to(REPO) else source} "
              "by `python -m rrr_ray.deploy_render kuberay`: edit that file, not this block.\n")
    return header + yaml.safe_dump(kuberay_serve_config(load_yaml(source)), sort_keys=False, width=100)


def replace_block(manifest: str, rendered: str) -> str:
    """The manifest text with the literal block after ``serveConfigV2: |`` replaced by ``rendered``
    (indented two spaces beyond the key); comments and the rest of the file unchanged."""
    lines = manifest.splitlines(keepends=True)
    starts = [i for i, line in enumerate(lines) if line.strip() == SERVE_CONFIG_KEY]
    if len(starts) != 1:
        raise RenderError(f"expected exactly one '{SERVE_CONFIG_KEY}' line, found {len(starts)}")
    start = starts[0]
    indent = len(lines[start]) - len(lines[start].lstrip())
    end = start + 1
    while end < len(lines) and (not lines[end].strip() or len(lines[end]) - len(lines[end].lstrip()) > indent):
        end += 1
    while end > start + 1 and not lines[end - 1].strip():  # blank lines after the block stay outside it
        end -= 1
    pad = " " * (indent + 2)
    block = [pad + line + "\n" if line else "\n" for line in rendered.rstrip("\n").split("\n")]
    return "".join(lines[:start + 1] + block + lines[end:])


def render_kuberay(check: bool = False) -> list[str]:
    """Render every manifest's serveConfigV2; returns the manifests that changed (with ``check``:
    that would change, none written)."""
    changed = []
    for manifest, source in KUBERAY_MANIFESTS.items():
        path = REPO / manifest
        text = path.read_text()
        new = replace_block(text, render_serve_config_v2(REPO / source))
        if new != text:
            changed.append(manifest)
            if not check:
                path.write_text(new)
    return changed


# ---- validation ------------------------------------------------------------------------------

def strict_schema(schema: Any) -> Any:
    """The CRD schema with unknown fields refused: every object schema that lists its properties
    and neither preserves unknown fields nor says otherwise gets ``additionalProperties: false``
    (what the API server's strict field validation does)."""
    if isinstance(schema, list):
        return [strict_schema(s) for s in schema]
    if not isinstance(schema, dict):
        return schema
    out = {k: strict_schema(v) for k, v in schema.items()}
    if ("properties" in out and "additionalProperties" not in out
            and not out.get("x-kubernetes-preserve-unknown-fields")):
        out["additionalProperties"] = False
    return out


def _load_crd_validator():
    import jsonschema

    try:
        schema = json.loads(CRD_SCHEMA.read_text())
    except (OSError, ValueError) as exc:
        raise RenderError(f"{CRD_SCHEMA}: {exc}") from None
    return jsonschema.Draft7Validator(strict_schema(schema))


def _pydantic_models(annotation: Any) -> Iterator[type]:
    from pydantic import BaseModel

    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        yield annotation
    for arg in typing.get_args(annotation):
        yield from _pydantic_models(arg)


def unknown_fields(model: type, data: Any, where: str = "") -> list[str]:
    """Keys of ``data`` (nested) that are no field of the pydantic ``model``: Ray Serve's schemas
    accept and ignore them, so a misspelled option would pass unnoticed."""
    if not isinstance(data, dict):
        return []
    fields = {}
    for name, field in model.model_fields.items():
        fields[name] = field
        if field.alias:
            fields[field.alias] = field
    found = []
    for key, value in data.items():
        if key not in fields:
            found.append(f"{where}{key}: unknown field of {model.__name__}")
            continue
        for sub in _pydantic_models(fields[key].annotation):
            items = enumerate(value) if isinstance(value, list) else [(None, value)]
            for i, item in items:
                found += unknown_fields(sub, item, f"{where}{key}{'' if i is None else f'[{i}]'}.")
    return found


def _errors(exc: Any, where: str = "") -> list[str]:
    return [f"{where}{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors()]


def validate_serve_config(config: Any) -> list[str]:
    """Problems of a Serve config against ``ray.serve.schema.ServeDeploySchema`` and of each
    application's ``args`` against its model (``APP_ARGS``), unknown fields included."""
    import importlib

    from pydantic import ValidationError
    from ray.serve.schema import ServeDeploySchema

    try:
        ServeDeploySchema.model_validate(config)
    except ValidationError as exc:
        return _errors(exc)
    problems = unknown_fields(ServeDeploySchema, config)
    for i, app in enumerate(config.get("applications") or []):
        if app.get("import_path") not in APP_ARGS:
            continue
        module, name = APP_ARGS[app["import_path"]].split(":")
        model = getattr(importlib.import_module(module), name)
        where = f"applications[{i}].args."
        try:
            model.model_validate(app.get("args") or {})
        except ValidationError as exc:
            problems += _errors(exc, where)
        problems += unknown_fields(model, app.get("args") or {}, where)
    return problems


def validate_manifest(doc: Any, validator=None) -> list[str]:
    """Problems of one manifest document: a RayService against KubeRay's CRD schema and its
    serveConfigV2 against Ray Serve's schema. Empty when it validates."""
    if not isinstance(doc, dict) or doc.get("kind") != "RayService" or doc.get("apiVersion") != "ray.io/v1":
        return ["not a ray.io/v1 RayService"]
    validator = validator or _load_crd_validator()
    problems = [f"{'.'.join(map(str, e.absolute_path)) or '(top)'}: {e.message}"
                for e in sorted(validator.iter_errors(doc), key=lambda e: list(map(str, e.absolute_path)))]
    serve_config = (doc.get("spec") or {}).get("serveConfigV2")
    if isinstance(serve_config, str):
        try:
            parsed = yaml.safe_load(serve_config)
        except yaml.YAMLError as exc:
            return problems + [f"spec.serveConfigV2: not YAML ({exc})"]
        problems += [f"spec.serveConfigV2: {p}" for p in validate_serve_config(parsed)]
    return problems


def validate_kuberay() -> dict[str, list[str]]:
    """Every manifest in ``KUBERAY_MANIFESTS``: file -> problems (empty lists when all validate)."""
    validator = _load_crd_validator()
    report = {}
    for manifest in KUBERAY_MANIFESTS:
        try:
            docs = [d for d in yaml.safe_load_all((REPO / manifest).read_text()) if d is not None]
        except (OSError, yaml.YAMLError) as exc:
            report[manifest] = [str(exc)]
            continue
        report[manifest] = [p for d in docs for p in validate_manifest(d, validator)]
    return report


def vendor_crd(crd_yaml: Path) -> Path:
    """Write the ray.io/v1 RayService ``openAPIV3Schema`` of a KubeRay CRD file to ``CRD_SCHEMA``
    (descriptions left out; validation is unchanged by them)."""
    crd = load_yaml(crd_yaml)
    versions = [v for v in (crd.get("spec") or {}).get("versions") or [] if v.get("name") == "v1"]
    if crd.get("kind") != "CustomResourceDefinition" or not versions:
        raise RenderError(f"{crd_yaml}: not a CRD with a v1 version")

    def strip(node: Any) -> Any:
        if isinstance(node, dict):
            return {k: strip(v) for k, v in node.items() if k != "description"}
        return [strip(v) for v in node] if isinstance(node, list) else node

    schema = strip(versions[0]["schema"]["openAPIV3Schema"])
    CRD_SCHEMA.parent.mkdir(parents=True, exist_ok=True)
    CRD_SCHEMA.write_text(json.dumps(schema, separators=(",", ":"), sort_keys=True) + "\n")
    return CRD_SCHEMA


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m rrr_ray.deploy_render", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)
    c = sub.add_parser("container", help="print a Serve config with its HTTP host 0.0.0.0")
    c.add_argument("config", type=Path)
    k = sub.add_parser("kuberay", help="render deploy/kuberay's serveConfigV2 blocks")
    k.add_argument("--check", action="store_true", help="write nothing; exit 1 when a manifest has drifted")
    sub.add_parser("validate", help="validate deploy/kuberay's manifests offline")
    v = sub.add_parser("crd", help=f"vendor the RayService schema of a KubeRay CRD file into {CRD_SCHEMA.name}")
    v.add_argument("crd_yaml", type=Path)
    args = p.parse_args(argv)
    try:
        if args.command == "container":
            sys.stdout.write(yaml.safe_dump(with_host(load_yaml(args.config)), sort_keys=False, width=100))
        elif args.command == "kuberay":
            changed = render_kuberay(check=args.check)
            for manifest in changed:
                print(f"{manifest}: {'out of date' if args.check else 'rendered'}", file=sys.stderr)
            return 1 if changed and args.check else 0
        elif args.command == "validate":
            report = validate_kuberay()
            for manifest, problems in report.items():
                print(f"{manifest}: {'valid' if not problems else f'{len(problems)} problem(s)'}")
                for problem in problems:
                    print(f"  {problem}")
            return 1 if any(report.values()) else 0
        else:
            print(vendor_crd(args.crd_yaml))
    except RenderError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
