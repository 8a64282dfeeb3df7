"""The docs' commands against the code: every ``python -m X`` and ``make T`` that README.md, docs/
and the loadtest READMEs show exists, ``python -m X --help`` works, and every option a documented
command line passes is one that ``--help`` lists."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from functools import lru_cache
from pathlib import Path

import pytest

from rrr_ray.paths import REPO

DOCS = [REPO / "README.md", *sorted((REPO / "docs").rglob("*.md")), REPO / "loadtest" / "README.md",
        REPO / "loadtest" / "investigations" / "README.md"]
MODULE = re.compile(r"python -m ([a-z_][a-z0-9_]*(?:\.[a-z_][a-z0-9_]*)*)\b(?![.\w])")
MAKE = re.compile(r"(?:^|[\s`(=])make ([a-z][a-z-]*)")
OPTION = re.compile(r"(?<![\w-])--[a-z][a-z0-9-]*")
NO_HELP = {"rrr_ray.env": []}
"""Modules whose documented use takes no ``--help`` (``rrr_ray.env`` runs what follows it): run as shown."""


def code_lines(text: str) -> list[str]:
    """Every command-like line: the lines of fenced blocks (backslash continuations joined, shell
    comments dropped; JSON output lines skipped) and every inline code span."""
    out: list[str] = []
    fenced = False
    pending = ""
    prose: list[str] = []
    for line in text.splitlines():
        if line.startswith("```"):
            fenced = not fenced
            continue
        if fenced and line.lstrip().startswith(("{", "[")):  # output shown, such as a reply's NDJSON
            continue
        if fenced:
            line = re.sub(r"\s#.*$", "", line) if not line.lstrip().startswith("#") else ""
            if line.rstrip().endswith("\\"):
                pending += line.rstrip()[:-1] + " "
                continue
            out.append(pending + line)
            pending = ""
        else:
            prose.append(line)
    out.extend(re.findall(r"`([^`]+)`", " ".join(prose)))  # a span may run over a line break
    return out


def documented() -> tuple[dict[str, set[str]], dict[str, list[str]]]:
    """``{module: options used}`` and ``{make target: files}`` over the docs."""
    modules: dict[str, set[str]] = {}
    targets: dict[str, list[str]] = {}
    for doc in DOCS:
        for line in code_lines(doc.read_text(encoding="utf-8")):
            for m in MODULE.finditer(line):
                rest = line[m.end():]
                rest = re.split(r"\s(?:&&|\||;|python -m|ray |curl )", rest)[0]
                modules.setdefault(m.group(1), set()).update(OPTION.findall(rest))
            for t in MAKE.findall(line):
                targets.setdefault(t, []).append(doc.relative_to(REPO).as_posix())
    return modules, targets


@lru_cache(maxsize=None)
def help_texts() -> dict[str, tuple[int, str]]:
    """``python -m X --help`` of every documented module, one subprocess each, run in parallel."""
    modules, _ = documented()
    env = {**os.environ, "PYTHONPATH": str(REPO)}

    def run(module: str) -> tuple[str, tuple[int, str]]:
        args = NO_HELP.get(module, ["--help"])
        try:
            p = subprocess.run([sys.executable, "-m", module, *args], cwd=REPO, env=env, capture_output=True,
                               text=True, timeout=60)
        except subprocess.TimeoutExpired:
            return module, (-1, "timed out after 60 s")
        return module, (p.returncode, p.stdout + p.stderr)

    with ThreadPoolExecutor(max_workers=4) as pool:
        return dict(pool.map(run, sorted(modules)))


def test_the_docs_name_commands():
    modules, targets = documented()
    assert {"loadtest.compare", "jobs.benchmark", "rrr_ray.client"} <= set(modules)
    assert {"serve", "test"} <= set(targets)


def test_every_documented_make_target_exists():
    makefile = (REPO / "Makefile").read_text()
    defined = set(re.findall(r"^([a-z][a-z-]*):", makefile, re.MULTILINE))
    _, targets = documented()
    missing = {t: files for t, files in targets.items() if t not in defined}
    assert not missing, f"make targets the docs name but the Makefile lacks: {missing}"


def test_every_documented_module_runs_its_help_and_takes_the_documented_options():
    modules, _ = documented()
    helps = help_texts()
    failed = {m: out[-400:] for m, (rc, out) in helps.items() if rc != 0}
    assert not failed, f"python -m X --help failed: {failed}"
    unknown = {m: sorted(o for o in opts if o not in helps[m][1]) for m, opts in modules.items()
               if m not in NO_HELP}
    unknown = {m: o for m, o in unknown.items() if o}
    assert not unknown, f"options the docs pass that --help does not list: {unknown}"


@pytest.mark.parametrize("text,expected", [
    ("```bash\npython -m loadtest.run --host H \\\n    --users 1   # Locust\n```", {"loadtest.run": {"--host", "--users"}}),
    ("Run `python -m jobs.benchmark --endpoint E\n--models M` then `make serve`.",
     {"jobs.benchmark": {"--endpoint", "--models"}}),
    ("`python -m jobs.X` is a placeholder", {}),
])
def test_commands_are_read_from_code_only(tmp_path, monkeypatch, text, expected):
    doc = tmp_path / "d.md"
    doc.write_text(text + "\nprose that says python -m jobs.nothing --x and make nothing\n")
    monkeypatch.setattr(sys.modules[__name__], "DOCS", [doc])
    monkeypatch.setattr(sys.modules[__name__], "REPO", tmp_path)
    modules, _ = documented()
    assert modules == expected
