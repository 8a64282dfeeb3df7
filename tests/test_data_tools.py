"""The ``rrr`` data tools (validate, convert, curate) and the safe-write helpers, on copies of the seed."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from rrr_ray.cli import main
from rrr_ray.data.io import atomic_write_text, backup_files
from rrr_ray.data.records import read_dialogues
from tests.helpers import REPO, SEED_DIR


@pytest.fixture
def seed(tmp_path: Path) -> Path:
    shutil.copytree(SEED_DIR / "curated_seed_dialogues", tmp_path / "curated")
    shutil.copy(SEED_DIR / "seed_dialogues.json", tmp_path / "seed_dialogues.json")
    return tmp_path


def run(capsys, *argv: str) -> tuple[int, str, str]:
    rc = main([str(a) for a in argv])
    out = capsys.readouterr()
    return rc, out.out, out.err


# -- io ---------------------------------------------------------------------------------------

def test_atomic_write_replaces_whole_or_not_at_all(tmp_path, monkeypatch):
    target = tmp_path / "f.txt"
    atomic_write_text(target, "old")

    def boom(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", boom)
    with pytest.raises(OSError):
        atomic_write_text(target, "new")
    monkeypatch.undo()
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["f.txt"]  # no temp file left behind


def test_backups_are_timestamped_and_never_overwritten(tmp_path):
    f = tmp_path / "a.txt"
    f.write_text("v1")
    b1 = backup_files([f, tmp_path / "missing.txt"], tmp_path / "bk", "edit")
    f.write_text("v2")
    b2 = backup_files([f], tmp_path / "bk", "edit")
    assert b1 != b2 and b1.name < b2.name and b1.name.endswith("-edit")
    assert (b1 / "a.txt").read_text() == "v1" and (b2 / "a.txt").read_text() == "v2"


# -- validate ---------------------------------------------------------------------------------

def test_validate_reports_per_dialogue_and_per_rule(seed, capsys):
    rc, out, _ = run(capsys, "validate", seed / "curated")
    assert rc == 0 and "10 dialogues in 10 files: 10 valid, 0 invalid" in out
    rc, out, _ = run(capsys, "validate", seed / "curated", seed / "seed_dialogues.json")
    assert rc == 1
    assert "unclosed_tag" in out and "every opened section must be closed" in out
    assert "INVALID" in out and "turn 1:" in out
    rc, out, _ = run(capsys, "validate", "--json", seed / "seed_dialogues.json")
    report = json.loads(out)
    assert report["totals"]["invalid"] == 23 and report["per_rule"]["unclosed_tag"] == 108 and not report["ok"]


def test_validate_fix_dry_run_writes_nothing_then_fix_repairs_with_backup(seed, capsys):
    path = seed / "seed_dialogues.json"
    before = path.read_bytes()
    rc, out, _ = run(capsys, "validate", "--fix", "--dry-run", path)
    assert rc == 1 and "50 valid after repair" in out and "dry run" in out
    assert path.read_bytes() == before and not (seed / ".backups").exists()
    rc, out, _ = run(capsys, "validate", "--fix", path)
    assert rc == 0 and "repaired file written" in out
    backups = list((seed / ".backups").glob("*/seed_dialogues.json"))
    assert len(backups) == 1 and backups[0].read_bytes() == before
    rc, out, _ = run(capsys, "validate", path)
    assert rc == 0 and "50 valid, 0 invalid" in out
    assert len(read_dialogues(path)) == 50


def test_validate_fix_keeps_curated_txt_structure(seed, capsys):
    f = seed / "curated" / "dialog_003.txt"
    f.write_text(f.read_text().replace("</reflect>", "", 1))
    rc, _, _ = run(capsys, "validate", "--fix", f)
    assert rc == 0
    text = f.read_text()
    assert text.startswith("Dialog 3 of 10\n" + "=" * 50 + "\n\nUser:")
    assert [r.messages for r in read_dialogues(f)] == [r.messages for r in read_dialogues(SEED_DIR / "curated_seed_dialogues" / "dialog_003.txt")]


def test_validate_bad_input_is_one_line(seed, capsys):
    rc, _, err = run(capsys, "validate", seed / "nope.txt")
    assert rc == 2 and err.strip() == f"rrr: error: {seed / 'nope.txt'}: no such file or folder"
    (seed / "broken.jsonl").write_text('{"conversation_id": "x"}\n')
    rc, out, _ = run(capsys, "validate", seed / "broken.jsonl")
    assert rc == 1 and "broken.jsonl: ERROR" in out


# -- convert ----------------------------------------------------------------------------------

def test_convert_saves_a_dataset_with_statistics(seed, capsys):
    import datasets

    rc, out, _ = run(capsys, "convert", seed / "curated", seed / "seed_dialogues.json", "--output", seed / "ds")
    assert rc == 0
    assert "dialogues: 60" in out and "react chars" in out and "valid replies" in out
    ds = datasets.load_from_disk(str(seed / "ds"))
    assert ds.column_names == ["conversation_id", "messages", "num_turns"] and len(ds) == 60
    row = ds[0]
    assert row["messages"][0]["role"] == "user" and row["num_turns"] == sum(m["role"] == "assistant" for m in row["messages"])
    rc, _, err = run(capsys, "convert", seed / "curated", "--output", seed / "ds")
    assert rc == 2 and "already exists" in err
    rc, out, _ = run(capsys, "convert", seed / "seed_dialogues.json", "--output", seed / "ds", "--overwrite",
                     "--only-valid", "--json")
    assert rc == 0 and json.loads(out)["stats"]["dialogues"] == 27
    assert len(datasets.load_from_disk(str(seed / "ds"))) == 27
    assert sorted(p.name for p in seed.iterdir() if p.name.startswith(".")) == []  # no temp folders left


def test_convert_push_to_hub_without_token_is_a_clear_error(seed, capsys, monkeypatch):
    monkeypatch.delenv("HF_TOKEN", raising=False)
    rc, _, err = run(capsys, "convert", seed / "curated", "--output", seed / "ds", "--push-to-hub", "me/rrr")
    assert rc == 2 and "HF_TOKEN" in err and len(err.strip().splitlines()) == 1
    assert not (seed / "ds").exists()  # nothing half-written


def test_convert_rejects_duplicate_ids(seed, capsys):
    rc, _, err = run(capsys, "convert", seed / "curated", seed / "curated" / "dialog_001.txt", "-o", seed / "ds")
    assert rc == 2 and "duplicated conversation ids: dialog_001" in err and not (seed / "ds").exists()


# -- curate -----------------------------------------------------------------------------------

@pytest.fixture
def candidates(seed) -> Path:
    """Three candidates in a JSONL shard: two valid, one invalid."""
    from rrr_ray.data.records import DialogueRecord, records_to_jsonl

    recs = read_dialogues(seed / "seed_dialogues.json")
    valid = [r for r in recs if all(__import__("rrr_ray").validate(t).valid for t in r.assistant_replies())][:2]
    invalid = [r for r in recs if not all(__import__("rrr_ray").validate(t).valid for t in r.assistant_replies())][:1]
    out = seed / "gen" / "shard-00000.jsonl"
    out.parent.mkdir()
    out.write_text(records_to_jsonl([DialogueRecord.from_messages(f"cand-{i}", r.messages)
                                     for i, r in enumerate(valid + invalid)]))
    return out.parent


def test_curate_list_accept_reject(seed, candidates, capsys):
    cur = seed / "curated"
    original_005 = (cur / "dialog_005.txt").read_text()
    rc, out, _ = run(capsys, "curate", "list", "-c", cur, "-s", candidates)
    assert rc == 0 and "3 candidates: 3 pending" in out and "INVALID" in out
    rc, _, err = run(capsys, "curate", "accept", "-c", cur, "-s", candidates, "cand-2")
    assert rc == 2 and "not valid" in err
    rc, out, _ = run(capsys, "curate", "accept", "-c", cur, "-s", candidates, "--all-valid")
    assert rc == 0 and "2 accepted" in out
    files = sorted(p.name for p in cur.glob("dialog_*.txt"))
    assert files[-2:] == ["dialog_011.txt", "dialog_012.txt"] and len(files) == 12
    assert (cur / "dialog_012.txt").read_text().startswith("Dialog 12 of 12\n=====")
    # existing files keep their structure: only the header's total changes
    assert (cur / "dialog_005.txt").read_text() == original_005.replace("Dialog 5 of 10", "Dialog 5 of 12", 1)
    assert len(read_dialogues(cur)) == 12  # the curated set is still readable as before
    backup = next((cur / ".curation" / "backups").glob("*-accept"))
    assert (backup / "dialog_005.txt").read_text() == original_005
    rc, out, _ = run(capsys, "curate", "reject", "-c", cur, "-s", candidates, "cand-2", "--reason", "unclosed")
    assert rc == 0
    rc, out, _ = run(capsys, "curate", "list", "-c", cur, "-s", candidates)
    assert "0 pending, 2 accepted, 1 rejected" in out
    rc, _, err = run(capsys, "curate", "accept", "-c", cur, "-s", candidates, "cand-0")
    assert rc == 2 and "already accepted as dialog_011.txt" in err
    rc, out, _ = run(capsys, "curate", "show", "-c", cur, "cand-1")
    assert rc == 0 and out.startswith("Dialog 12 of 12")
    rc, _, err = run(capsys, "curate", "show", "-c", cur, "cand-9", "-s", candidates)
    assert rc == 2 and "no candidate with id cand-9" in err


def test_curate_edit_from_file_and_editor_with_backups(seed, capsys, monkeypatch):
    cur = seed / "curated"
    f = cur / "dialog_002.txt"
    original = f.read_text()
    new = seed / "new.txt"
    new.write_text(original.replace("User:", "User:  Well,", 1))
    rc, out, _ = run(capsys, "curate", "edit", "-c", cur, "dialog_002", "--from-file", new)
    assert rc == 0 and "saved" in out
    assert "User: Well," in f.read_text() and f.read_text().startswith("Dialog 2 of 10")
    assert next((cur / ".curation" / "backups").glob("*-edit/dialog_002.txt")).read_text() == original
    # an invalid edit is refused and changes nothing
    edited = f.read_text()
    new.write_text(edited.replace("</respond>", "", 1))
    rc, _, err = run(capsys, "curate", "edit", "-c", cur, "2", "--from-file", new)
    assert rc == 2 and "not saved" in err and f.read_text() == edited
    # through $EDITOR (a non-interactive one here)
    monkeypatch.setenv("EDITOR", f"{sys.executable} -c \"import sys,pathlib; p=pathlib.Path(sys.argv[1]); "
                                 f"p.write_text(p.read_text().replace('Well,', 'Hmm,'))\"")
    rc, out, _ = run(capsys, "curate", "edit", "-c", cur, "dialog_002.txt")
    assert rc == 0 and "User: Hmm," in f.read_text()
    assert len(list((cur / ".curation" / "backups").glob("*-edit"))) == 2
    monkeypatch.setenv("EDITOR", "true")
    rc, out, _ = run(capsys, "curate", "edit", "-c", cur, "dialog_002")
    assert rc == 0 and "unchanged" in out


def test_every_command_has_help_and_no_tracebacks(tmp_path):
    rrr = [sys.executable, "-m", "rrr_ray.cli"]
    for cmd in (["--help"], ["validate", "--help"], ["convert", "--help"], ["curate", "--help"],
                ["curate", "edit", "--help"], ["generate", "--help"]):
        proc = subprocess.run(rrr + cmd, cwd=REPO, capture_output=True, text=True, timeout=60)
        assert proc.returncode == 0 and "usage:" in proc.stdout, cmd
    proc = subprocess.run(rrr + ["curate", "list", "-c", str(tmp_path / "x"), "-s", str(tmp_path / "none")],
                          cwd=REPO, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr and proc.stderr.startswith("rrr: error:")
