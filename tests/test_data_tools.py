"""The ``rrr`` data tools (validate, convert, curate) and the safe-write helpers, on copies of the seed."""

from __future__ import annotations

import hashlib
import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

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



def test_replace_dir_swaps_folders_and_recovers_the_fallback_gap(tmp_path, monkeypatch):
    from rrr_ray.data import io

    dst, new = tmp_path / "ds", tmp_path / ".ds.new"
    for folder, text in ((dst, "old"), (new, "new")):
        folder.mkdir()
        (folder / "f").write_text(text)
    io.replace_dir(new, dst)
    assert (dst / "f").read_text() == "new" and [p.name for p in tmp_path.iterdir()] == ["ds"]
    # without renameat2: two renames, and a crash between them is mended by recover_dir
    monkeypatch.setattr(io, "_exchange", lambda a, b: False)
    os.replace(dst, tmp_path / ".ds.old")
    io.recover_dir(dst)
    assert (dst / "f").read_text() == "new" and [p.name for p in tmp_path.iterdir()] == ["ds"]
    new.mkdir()
    (new / "f").write_text("newer")
    io.replace_dir(new, dst)
    assert (dst / "f").read_text() == "newer" and [p.name for p in tmp_path.iterdir()] == ["ds"]

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
                ["curate", "edit", "--help"], ["curate", "restore", "--help"], ["generate", "--help"]):
        proc = subprocess.run(rrr + cmd, cwd=REPO, capture_output=True, text=True, timeout=60)
        assert proc.returncode == 0 and "usage:" in proc.stdout, cmd
    proc = subprocess.run(rrr + ["curate", "list", "-c", str(tmp_path / "x"), "-s", str(tmp_path / "none")],
                          cwd=REPO, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr and proc.stderr.startswith("rrr: error:")


# -- restore and kill safety ------------------------------------------------------------------

def set_files(folder: Path, mask_times: bool = False) -> dict[str, bytes]:
    """Every data file of a curated set (or dataset folder) by relative path, without backups,
    the lock, the journal of a change under way and temp files; ``mask_times``: without the times
    in the curation state (which differ from run to run)."""
    out = {}
    for p in sorted(folder.rglob("*")):
        rel = p.relative_to(folder).as_posix()
        bookkeeping = rel.startswith(".curation/backups/") or rel in (".curation/lock", ".curation/pending")
        if p.is_file() and not bookkeeping and not (p.name.startswith(".") and p.name.endswith(".tmp")):
            out[rel] = p.read_bytes()
            if mask_times and rel == ".curation/state.json":
                out[rel] = re.sub(rb'"at": "[^"]*"', b'"at": "T"', out[rel])
    return out


def digests(files: dict[str, bytes]) -> dict[str, str]:
    return {k: hashlib.sha256(v).hexdigest() for k, v in files.items()}


def test_curate_restore_is_byte_for_byte_and_undoable(seed, candidates, capsys):
    cur = seed / "curated"
    new = seed / "new.txt"
    states, backups = [digests(set_files(cur))], []

    def step(*argv: str) -> None:
        rc, out, err = run(capsys, *argv)
        assert rc == 0, err
        backups.append(out.rsplit("backup in ", 1)[1].strip())
        states.append(digests(set_files(cur)))

    step("curate", "accept", "-c", cur, "-s", candidates, "cand-0")
    new.write_text((cur / "dialog_003.txt").read_text().replace("User:", "User: Well,", 1))
    step("curate", "edit", "-c", cur, "3", "--from-file", new)
    step("curate", "reject", "-c", cur, "-s", candidates, "cand-2")
    step("curate", "accept", "-c", cur, "-s", candidates, "cand-1")
    assert len(set(map(str, states))) == 5
    rc, out, _ = run(capsys, "curate", "backups", "-c", cur, "--json")
    listed = json.loads(out)
    assert [b["action"] for b in listed] == ["accept", "edit", "reject", "accept"]
    assert not any(b["error"] for b in listed)
    assert "dialog_012.txt" in listed[3]["absent"] and ".curation/state.json" in listed[3]["files"]
    rc, out, _ = run(capsys, "curate", "backups", "-c", cur)
    assert rc == 0 and "4 backups in" in out
    assert re.search(rf"{Path(backups[3]).name} +accept +12 files, 1 absent\n", out)

    # an earlier backup, by path: its files come back as they were before its change
    rc, out, _ = run(capsys, "curate", "restore", "-c", cur, backups[1])
    assert rc == 0 and "restored backup" in out
    now = digests(set_files(cur))
    assert now["dialog_003.txt"] == states[1]["dialog_003.txt"]
    assert now[".curation/state.json"] == states[1][".curation/state.json"]
    assert now["dialog_012.txt"] == states[4]["dialog_012.txt"]  # outside that backup: untouched
    undo = out.rsplit("in backup ", 1)[1].strip()
    assert Path(undo).name.endswith("-restore") and (Path(undo) / "dialog_003.txt").exists()
    rc, _, _ = run(capsys, "curate", "restore", "-c", cur, Path(undo).name)  # the restore is undoable
    assert rc == 0 and digests(set_files(cur)) == states[4]
    # newest first, each backup takes the whole set back one step, byte for byte (new files removed)
    for i in range(len(backups) - 1, -1, -1):
        rc, _, err = run(capsys, "curate", "restore", "-c", cur, Path(backups[i]).name)
        assert rc == 0, err
        assert digests(set_files(cur)) == states[i], f"after restoring backup {i}"
    assert sorted(p.name for p in cur.glob("dialog_*.txt"))[-1] == "dialog_010.txt"
    assert len(read_dialogues(cur)) == 10
    rc, out, _ = run(capsys, "curate", "restore", "-c", cur, Path(backups[0]).name)
    assert rc == 0 and "nothing changed" in out

    # a backup made before manifests (files by name only) still restores
    legacy = cur / ".curation" / "backups" / "20200101T000000.000000Z-accept"
    legacy.mkdir()
    shutil.copy(Path(backups[0]) / "dialog_005.txt", legacy / "dialog_005.txt")
    (cur / "dialog_005.txt").write_text("changed by hand")
    rc, _, _ = run(capsys, "curate", "restore", "-c", cur, legacy.name)
    assert rc == 0 and (cur / "dialog_005.txt").read_bytes() == (legacy / "dialog_005.txt").read_bytes()
    # bad input: one line, exit 2, nothing written
    before = set_files(cur)
    (Path(backups[1]) / "dialog_003.txt").write_text("damaged")
    for ref, msg in [(backups[1], "is damaged: dialog_003.txt"), ("nope", "no backup 'nope'"), ("..", "no backup"),
                     (str(seed), "no backup")]:
        rc, _, err = run(capsys, "curate", "restore", "-c", cur, ref)
        assert rc == 2 and msg in err and len(err.strip().splitlines()) == 1, err
    assert set_files(cur) == before


# Runs the CLI with every fsync/replace/rename slowed down, so that a kill lands inside the writes;
# touches $RRR_TEST_STARTED once everything is imported.
SLOW_CLI = """
import os, sys, time
import rrr_ray.cli
if os.environ.get("RRR_TEST_IMPORT"):
    __import__(os.environ["RRR_TEST_IMPORT"])
delay = float(os.environ["RRR_TEST_IO_DELAY"])
def slowed(f):
    def g(*a, **k):
        time.sleep(delay)
        return f(*a, **k)
    return g
os.fsync, os.replace, os.rename = slowed(os.fsync), slowed(os.replace), slowed(os.rename)
open(os.environ["RRR_TEST_STARTED"], "w").close()
sys.exit(rrr_ray.cli.main(sys.argv[1:]))
"""


def run_killed(argv: list, kill_after: float | None, delay: float, import_: str = "",
               writing: Callable[[], bool] = lambda: True) -> float:
    """Run the CLI in a subprocess; SIGKILL it ``kill_after`` s after its imports are done and
    ``writing()`` holds (None: let it finish). Returns the seconds from then to the exit."""
    from rrr_ray.env import apply_cpu_node_env

    apply_cpu_node_env()
    with tempfile.TemporaryDirectory() as tmp:
        started = Path(tmp) / "started"
        env = {**os.environ, "RRR_TEST_IO_DELAY": str(delay), "RRR_TEST_STARTED": str(started),
               "RRR_TEST_IMPORT": import_}
        proc = subprocess.Popen([sys.executable, "-c", SLOW_CLI, *map(str, argv)], cwd=REPO, env=env,
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        while not (started.exists() and writing()) and proc.poll() is None:
            time.sleep(0.001)
        t0 = time.monotonic()
        if kill_after is not None:
            time.sleep(kill_after)
            proc.send_signal(signal.SIGKILL)
        err = proc.communicate(timeout=60)[1]
    if kill_after is None:
        assert proc.returncode == 0, err.decode()
    return time.monotonic() - t0


def assert_old_or_new(now: dict[str, bytes], old: dict[str, bytes], new: dict[str, bytes], what: str) -> None:
    for rel in sorted(set(now) | set(old) | set(new)):
        assert now.get(rel) in (old.get(rel), new.get(rel)), f"{what}: {rel} is neither its old nor its new version"


def test_curate_killed_mid_write_leaves_old_or_new_files(seed, candidates, tmp_path):
    from rrr_ray.data.curation import CuratedSet
    from rrr_ray.data.records import dialogue_files

    rng = random.Random(20240607)
    edited = seed / "edited.txt"
    edited.write_text((seed / "curated" / "dialog_004.txt").read_text().replace("User:", "User: So,", 1))
    for name, argv, kills in [("accept", ["curate", "accept", "-s", candidates, "cand-0", "cand-1"], 5),
                              ("edit", ["curate", "edit", "4", "--from-file", edited], 3)]:
        pristine = seed / "curated"
        old = set_files(pristine, mask_times=True)
        ref = tmp_path / f"{name}-ref"
        shutil.copytree(pristine, ref)
        window = run_killed([*argv, "-c", ref], None, delay=0.004)
        new = set_files(ref, mask_times=True)
        assert new != old
        for k in range(kills):
            cur = tmp_path / f"{name}-{k}"
            shutil.copytree(pristine, cur)
            run_killed([*argv, "-c", cur], rng.uniform(0, window), delay=0.004)
            now = set_files(cur, mask_times=True)
            assert_old_or_new(now, old, new, f"{name} kill {k}")
            # temp files are hidden .tmp files the loaders skip; the set loads as it is
            assert [p.name for p in dialogue_files(cur)] == sorted(r for r in now if "/" not in r)
            assert len(read_dialogues(cur)) == len(CuratedSet(cur).files())
            CuratedSet(cur).state()
            # the next command rolls back a change left half-done: the whole set is old or new again
            CuratedSet(cur).recover()
            after = set_files(cur, mask_times=True)
            assert after in (old, new), f"{name} kill {k}: set neither wholly old nor wholly new"
            assert not (cur / ".curation" / "pending").exists()
            left = [p.name for p in [*cur.glob(".*"), *(cur / ".curation").glob(".*"),
                                     *(cur / ".curation" / "backups").glob(".*")]]
            assert left in ([".curation"], []), left
            assert not any(b.error for b in CuratedSet(cur).backups())


def test_convert_killed_mid_write_leaves_old_or_new_dataset(seed, tmp_path):
    import datasets

    from rrr_ray.data.convert import convert

    rng = random.Random(7)
    convert([seed / "curated", seed / "seed_dialogues.json"], tmp_path / "ref-new")
    new_rows = datasets.load_from_disk(str(tmp_path / "ref-new")).to_list()
    argv = ["convert", seed / "curated", seed / "seed_dialogues.json", "--overwrite", "--output"]
    ref = tmp_path / "ref" / "ds"
    convert([seed / "curated"], ref)

    def writing(out: Path) -> Callable[[], bool]:
        return lambda: any(out.parent.glob(".ds.*"))  # a temp folder: save_to_disk has begun

    window = run_killed([*argv, ref], None, delay=0.02, import_="datasets", writing=writing(ref))
    assert datasets.load_from_disk(str(ref)).to_list() == new_rows
    for k in range(4):
        out = tmp_path / f"kill-{k}" / "ds"
        convert([seed / "curated"], out)
        old = set_files(out)
        run_killed([*argv, out], rng.uniform(0, window), delay=0.02, import_="datasets", writing=writing(out))
        assert out.is_dir(), f"kill {k}: the output folder is gone"
        if set_files(out) != old:
            assert datasets.load_from_disk(str(out)).to_list() == new_rows, f"kill {k}: partial dataset"
        # only hidden temp folders may be left beside it; the next conversion removes them
        assert [p.name for p in out.parent.iterdir() if not p.name.startswith(".")] == ["ds"]
        convert([seed / "curated"], out, overwrite=True)
        assert [p.name for p in out.parent.iterdir()] == ["ds"]
