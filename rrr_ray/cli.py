"""``rrr``: the dialogue data tools (validate, convert, curate, generate). Each has ``--help``.

The logic is in ``rrr_ray.data``; this module parses arguments and prints results. Bad input
gives a one-line ``rrr: error: ...`` on stderr and a non-zero exit status.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path


class CLIError(Exception):
    pass


def _validate(args: argparse.Namespace) -> int:
    from rrr_ray.data.checking import check_paths

    if args.dry_run and not args.fix:
        raise CLIError("--dry-run only makes sense with --fix")
    report = check_paths(args.paths, fix=args.fix, dry_run=args.dry_run)
    if args.json:
        print(json.dumps(report.to_json(), indent=2))
    else:
        print(report.text(verbose=args.verbose))
    return 0 if report.ok else 1


def _convert(args: argparse.Namespace) -> int:
    from rrr_ray.data.convert import convert

    report = convert(args.paths, args.output, push_to_hub=args.push_to_hub, overwrite=args.overwrite,
                     only_valid=args.only_valid, private=not args.public)
    if args.json:
        print(report.model_dump_json(indent=2))
    else:
        print("\n".join(report.stats.lines()))
        if report.output:
            print(f"saved to {report.output} (datasets.load_from_disk)")
        if report.pushed_to:
            print(f"pushed to https://huggingface.co/datasets/{report.pushed_to}")
    return 0


def _curate(args: argparse.Namespace) -> int:
    from rrr_ray.data.curation import CuratedSet, curated_record, edit_with_editor, find_candidates, load_candidates
    from rrr_ray.data.records import format_curated_text

    cs = CuratedSet(args.curated)
    cs.recover()  # a change killed half-way is rolled back before anything reads the set
    sources = getattr(args, "source", None) or []
    if args.action == "list":
        if sources:
            cands = load_candidates(sources, cs)
            if args.status:
                cands = [c for c in cands if c.status == args.status]
            if args.json:
                print(json.dumps([c.model_dump(mode="json") for c in cands], indent=2))
                return 0
            for c in cands:
                errs = f"  [{', '.join(c.errors)}]" if c.errors else ""
                print(f"{c.conversation_id:<28} {c.status:<9} {c.num_turns:>2} turns  {'valid' if c.valid else 'INVALID'}{errs}  {c.source}")
            counts = {s: sum(c.status == s for c in cands) for s in ("pending", "accepted", "rejected")}
            print(f"{len(cands)} candidates: " + ", ".join(f"{v} {k}" for k, v in counts.items()))
        else:
            files = cs.files()
            for p in files:
                rec = curated_record(p)
                errs = sorted({c for t in rec.assistant_replies() for c in __import__("rrr_ray").validate(t).error_codes})
                print(f"{p.name:<18} {rec.num_turns:>2} turns  {'valid' if not errs else 'INVALID ' + ', '.join(errs)}")
            print(f"{len(files)} curated dialogues in {cs.folder}")
        return 0
    if args.action == "show":
        ref = args.id
        try:
            path = cs.resolve(ref)
            print(path.read_text(encoding="utf-8"), end="")
            return 0
        except Exception:
            if not sources:
                raise
        c = find_candidates(load_candidates(sources, cs), [ref])[0]
        print(format_curated_text(f"{c.conversation_id} ({c.status}, from {c.source})", c.record), end="")
        return 0
    if args.action in ("accept", "reject"):
        if not sources:
            raise CLIError(f"curate {args.action}: give the candidates' files with --source PATH")
        cands = load_candidates(sources, cs)
        if args.action == "accept" and args.all_valid:
            chosen = [c for c in cands if c.status == "pending" and c.valid]
        elif not args.ids:
            raise CLIError(f"curate {args.action}: give candidate ids" + (" or --all-valid" if args.action == "accept" else ""))
        else:
            chosen = find_candidates(cands, args.ids)
        if args.action == "accept":
            done, backup = cs.accept(chosen, force=args.force)
            for cid, name in done:
                print(f"accepted {cid} -> {cs.folder / name}")
            print(f"{len(done)} accepted" + (f"; backup in {backup}" if backup else ""))
        else:
            backup = cs.reject(chosen, reason=args.reason)
            print(f"{len(chosen)} rejected; backup in {backup}")
        return 0
    if args.action == "edit":
        path = cs.resolve(args.id)
        if args.from_file:
            try:
                text = Path(args.from_file).read_text(encoding="utf-8")
            except OSError as exc:
                raise CLIError(f"{args.from_file}: {exc.strerror}") from None
        else:
            text = edit_with_editor(path.read_text(encoding="utf-8"), args.editor)
        backup = cs.edit(args.id, text, force=args.force)
        print(f"{path.name}: unchanged" if backup is None else f"{path.name}: saved; backup in {backup}")
        return 0
    if args.action == "backups":
        infos = cs.backups()
        if args.json:
            print(json.dumps([b.model_dump(mode="json") for b in infos], indent=2))
            return 0
        for b in infos:
            what = f"{len(b.files)} files" + (f", {len(b.absent)} absent" if b.absent else "")
            print(f"{b.name:<36} {b.action:<8} {b.error or what}")
        print(f"{len(infos)} backups in {cs.backup_root}")
        return 0
    if args.action == "restore":
        folder, backup = cs.restore(args.backup)
        if backup is None:
            print(f"the curated set already matches backup {folder.name}; nothing changed")
        else:
            print(f"restored backup {folder.name}; the versions it replaced are in backup {backup}")
        return 0
    raise CLIError(f"unknown curate action {args.action}")  # pragma: no cover


def _generate(args: argparse.Namespace) -> int:
    from rrr_ray.data.generation.cli import run

    return run(args)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="rrr", description="rrr-ray dialogue data tools")
    p.add_argument("--log-level", default="WARNING", help="logging level (DEBUG, INFO, WARNING)")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    v = sub.add_parser("validate", help="validate (and repair) RRR replies in dialogue files",
                       description="Validate every assistant reply of .txt (curated), .json (seed) and .jsonl "
                                   "dialogue files or folders; report per dialogue and per rule. Exit 1 if any is invalid.")
    v.add_argument("paths", nargs="+", type=Path, metavar="PATH")
    v.add_argument("--fix", action="store_true", help="repair what can be repaired and write files back (after a timestamped backup in .backups/)")
    v.add_argument("--dry-run", action="store_true", help="with --fix: report what would be repaired, write nothing")
    v.add_argument("--json", action="store_true", help="JSON report")
    v.add_argument("-v", "--verbose", action="store_true", help="list valid dialogues too")
    v.set_defaults(func=_validate)

    c = sub.add_parser("convert", help="convert dialogue files to a Hugging Face dataset",
                       description="Build a datasets.Dataset (conversation_id, messages, num_turns) from dialogue "
                                   "files, print statistics, save_to_disk and optionally push to the Hub.")
    c.add_argument("paths", nargs="+", type=Path, metavar="PATH")
    c.add_argument("--output", "-o", type=Path, help="folder for Dataset.save_to_disk (written atomically)")
    c.add_argument("--overwrite", action="store_true", help="replace an existing --output folder")
    c.add_argument("--only-valid", action="store_true", help="keep only dialogues whose replies are all valid")
    c.add_argument("--push-to-hub", metavar="REPO", help="also push to this Hub dataset repo (needs HF_TOKEN)")
    c.add_argument("--public", action="store_true", help="with --push-to-hub: make the repo public")
    c.add_argument("--json", action="store_true", help="JSON report")
    c.set_defaults(func=_convert)

    cu = sub.add_parser("curate", help="curation workflow: list, show, accept, reject, edit, backups, restore",
                        description="Curate candidate dialogues into a curated set (dialog_NNN.txt files). Every "
                                    "change is backed up first (<set>/.curation/backups/) and written atomically; "
                                    "curate restore puts a backup back.")
    csub = cu.add_subparsers(dest="action", required=True, metavar="ACTION")

    def common(sp: argparse.ArgumentParser, sources: bool = True) -> None:
        sp.add_argument("--curated", "-c", type=Path, required=True, help="the curated set's folder")
        if sources:
            sp.add_argument("--source", "-s", type=Path, action="append",
                            help="candidate dialogue file or folder (repeatable)")

    sp = csub.add_parser("list", help="list candidates (with --source) or the curated set")
    common(sp)
    sp.add_argument("--status", choices=["pending", "accepted", "rejected"], help="only candidates with this status")
    sp.add_argument("--json", action="store_true")
    sp = csub.add_parser("show", help="print a curated dialogue or a candidate")
    common(sp)
    sp.add_argument("id", help="dialog_NNN, NNN, or a candidate's conversation id")
    sp = csub.add_parser("accept", help="add candidates to the curated set")
    common(sp)
    sp.add_argument("ids", nargs="*", metavar="ID")
    sp.add_argument("--all-valid", action="store_true", help="accept every pending valid candidate")
    sp.add_argument("--force", action="store_true", help="accept invalid dialogues too")
    sp = csub.add_parser("reject", help="mark candidates as rejected")
    common(sp)
    sp.add_argument("ids", nargs="+", metavar="ID")
    sp.add_argument("--reason", help="why (kept in the curation state)")
    sp = csub.add_parser("edit", help="edit a curated dialogue with $EDITOR or from a file")
    common(sp, sources=False)
    sp.add_argument("id", help="dialog_NNN, NNN, or an accepted candidate's id")
    sp.add_argument("--from-file", type=Path, help="take the new text from this file instead of $EDITOR")
    sp.add_argument("--editor", help="editor command (default $VISUAL or $EDITOR)")
    sp.add_argument("--force", action="store_true", help="save even if replies are invalid")
    sp = csub.add_parser("backups", help="list the curated set's backups, oldest first")
    common(sp, sources=False)
    sp.add_argument("--json", action="store_true")
    sp = csub.add_parser("restore", help="put a backup's files back byte for byte (after backing up the current ones)",
                         description="Write every file of a backup back where it was in the curated set (the "
                                     "curation state too) and remove the files that did not exist then. The "
                                     "current versions are backed up first, so a restore can be undone in turn.")
    common(sp, sources=False)
    sp.add_argument("backup", help="a backup's name (see curate backups) or its folder")
    cu.set_defaults(func=_curate)

    from rrr_ray.data.generation.cli import add_generation_arguments

    g = sub.add_parser("generate", help="generate dialogues on Ray (same as python -m jobs.generate_dialogues)",
                       description="Generate RRR dialogues against an OpenAI-compatible endpoint, fanned out over Ray.")
    add_generation_arguments(g)
    g.set_defaults(func=_generate)
    return p


def main(argv: list[str] | None = None) -> int:
    from rrr_ray.data.convert import ConvertError
    from rrr_ray.data.curation import CurationError
    from rrr_ray.data.records import DialogueFormatError

    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=getattr(logging, str(args.log_level).upper(), logging.WARNING),
                        format="%(levelname)s %(name)s: %(message)s")
    try:
        return args.func(args)
    except (CLIError, ConvertError, CurationError, DialogueFormatError) as exc:
        print(f"rrr: error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"rrr: error: {exc.filename or ''}: {exc.strerror or exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("rrr: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
