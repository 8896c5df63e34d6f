"""Idempotent migration steps that copier runs from `_migrations` on `copier update`.

Usage, from a `_migrations` entry (copier runs it in the repository being updated):

    rename-answer OLD NEW    rename a question's key in .copier-answers.yml (stage: before)
    move-file SRC DST        move a file the template renamed, keeping the team's edits
                             (stage: before, so copier merges the new template into it)
    add-missing --template SRC --ref REF PATH...
                             render the template at REF with this repository's answers and
                             copy each PATH that the repository lacks (stage: after): how a
                             seed file that update never touches reaches older repositories

Each step checks what is there first: running it twice, or on a repository that never had the
old name, changes nothing. Only the standard library and PyYAML (a dependency of copier) are
used, since this runs under copier's own interpreter (add-missing also uses copier itself).
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from pathlib import Path

import yaml

ANSWERS_FILE = ".copier-answers.yml"
HEADER = "# Changes here will be overwritten by Copier; NEVER EDIT MANUALLY\n"


def rename_answer(root: Path, old: str, new: str) -> str:
    path = root / ANSWERS_FILE
    answers = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    if old not in answers:
        return f"{ANSWERS_FILE}: no '{old}', nothing to rename"
    if new in answers:
        raise SystemExit(f"{ANSWERS_FILE}: both '{old}' and '{new}' are set; keep one by hand")
    renamed = {(new if key == old else key): value for key, value in answers.items()}
    path.write_text(HEADER + yaml.safe_dump(renamed, sort_keys=False), encoding="utf-8")
    return f"{ANSWERS_FILE}: renamed '{old}' to '{new}'"


def move_file(root: Path, source: str, destination: str) -> str:
    src, dst = root / source, root / destination
    if not src.exists():
        return f"{source}: absent, nothing to move"
    if dst.exists():
        raise SystemExit(f"both {source} and {destination} exist; merge them by hand")
    dst.parent.mkdir(parents=True, exist_ok=True)
    shutil.move(src, dst)
    return f"moved {source} to {destination}"


def add_missing(root: Path, template: str, ref: str, paths: list[str]) -> str:
    missing = [path for path in paths if not (root / path).exists()]
    if not missing:
        return "nothing missing"
    import copier  # only this step needs it; the others run without copier importable

    answers = yaml.safe_load((root / ANSWERS_FILE).read_text(encoding="utf-8")) or {}
    data = {key: value for key, value in answers.items() if not key.startswith("_")}
    with tempfile.TemporaryDirectory() as scratch:
        rendered = Path(scratch) / "render"
        copier.run_copy(template, rendered, data=data, vcs_ref=ref, defaults=True, quiet=True)
        for path in missing:
            (root / path).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(rendered / path, root / path)
    return f"added {', '.join(missing)}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="migrate", description=__doc__.splitlines()[0])
    steps = parser.add_subparsers(dest="step", required=True)
    rename = steps.add_parser("rename-answer")
    rename.add_argument("old")
    rename.add_argument("new")
    move = steps.add_parser("move-file")
    move.add_argument("source")
    move.add_argument("destination")
    add = steps.add_parser("add-missing")
    add.add_argument("--template", required=True, help="the template's path or URL")
    add.add_argument("--ref", required=True, help="the template version being updated to")
    add.add_argument("paths", nargs="+")
    parser.add_argument("--root", type=Path, default=Path.cwd())
    args = parser.parse_args(argv)
    if args.step == "rename-answer":
        message = rename_answer(args.root, args.old, args.new)
    elif args.step == "move-file":
        message = move_file(args.root, args.source, args.destination)
    else:
        message = add_missing(args.root, args.template, args.ref, args.paths)
    print(f"migrate: {message}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
