"""Keep the template's accepted Prefect range up with Prefect's releases.

copier.yml accepts the exact releases from PREFECT_LOWEST to PREFECT_HIGHEST
(includes/validators.jinja); the top of the range is also the default answer, the release the
template's own tools run (pyproject.toml) and what README.md states. This script reports
whether a Prefect release has been out for more than a week without the range accepting it
(tests/test_prefect_releases.py fails then, so the template's CI goes red a week after a
release at the latest), and moves the top of the range to a release in every place at once:

    .venv/bin/python -m scripts.follow_prefect          # report; exit 1 if a release is overdue
    .venv/bin/python -m scripts.follow_prefect 3.9.2    # move the range's top to 3.9.2

After a move, `make test` installs the new end and runs its `ops validate`
(tests/test_prefect_versions.py), and the runtime matrix runs the default answers' own tests
on it; the CHANGELOG entry says which releases an updated repository may now pin.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import urllib.error
import urllib.request
from datetime import UTC, datetime, timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PYPI = "https://pypi.org/pypi/prefect/json"
# How long a release may stay outside the range: the "within a week".
GRACE = timedelta(days=7)
RELEASE = re.compile(r"^(0|[1-9][0-9]*)\.(0|[1-9][0-9]*)\.(0|[1-9][0-9]*)$")
BOUND = re.compile(r"set PREFECT_(LOWEST|HIGHEST) = \[(\d+), (\d+), (\d+)\]")

Version = tuple[int, int, int]


def parse(text: str) -> Version | None:
    """The release `text` names, or None for a pre-release, a dev build or anything else."""
    match = RELEASE.match(text)
    return (int(match[1]), int(match[2]), int(match[3])) if match else None


def shown(version: Version) -> str:
    return ".".join(map(str, version))


def accepted_range(root: Path = ROOT) -> tuple[Version, Version]:
    """PREFECT_LOWEST and PREFECT_HIGHEST as includes/validators.jinja sets them."""
    text = (root / "includes" / "validators.jinja").read_text(encoding="utf-8")
    bounds = {m[1]: (int(m[2]), int(m[3]), int(m[4])) for m in BOUND.finditer(text)}
    return bounds["LOWEST"], bounds["HIGHEST"]


def published(timeout: float = 30.0) -> dict[Version, datetime]:
    """Every final Prefect 3 release on PyPI that is not yanked, with its first upload time."""
    try:
        with urllib.request.urlopen(PYPI, timeout=timeout) as response:
            releases = json.load(response)["releases"]
    except (urllib.error.URLError, TimeoutError) as error:
        msg = f"could not read Prefect's releases from {PYPI} within {timeout:.0f} s: {error}"
        raise SystemExit(msg) from error
    found: dict[Version, datetime] = {}
    for text, files in releases.items():
        version = parse(text)
        live = [f for f in files if not f.get("yanked")]
        if version and version[0] == 3 and live:
            found[version] = min(datetime.fromisoformat(f["upload_time_iso_8601"]) for f in live)
    return found


def overdue(
    releases: dict[Version, datetime], highest: Version, now: datetime
) -> list[tuple[Version, datetime]]:
    """The releases above the range that have been out longer than GRACE, oldest first."""
    late = [(v, at) for v, at in releases.items() if v > highest and now - at > GRACE]
    return sorted(late)


def lines_in_range(
    releases: dict[Version, datetime], lowest: Version, highest: Version
) -> list[Version]:
    """The newest release of each minor line the range spans: one install test per line."""
    newest: dict[tuple[int, int], Version] = {}
    for version in releases:
        if lowest <= version <= highest:
            line = version[:2]
            newest[line] = max(newest.get(line, version), version)
    return sorted(newest.values())


def move_top(version: Version, root: Path = ROOT) -> list[Path]:
    """Make `version` the top of the range and the default answer everywhere it is stated."""
    lowest, highest = accepted_range(root)
    if version <= highest:
        msg = f"{shown(version)} is not above the range's top {shown(highest)}: nothing to move"
        raise SystemExit(msg)
    old, new, low = shown(highest), shown(version), shown(lowest)
    edits = [
        (
            "includes/validators.jinja",
            f"set PREFECT_HIGHEST = [{', '.join(map(str, highest))}]",
            f"set PREFECT_HIGHEST = [{', '.join(map(str, version))}]",
        ),
        ("copier.yml", f"{low} to {old}", f"{low} to {new}"),
        ("copier.yml", f'default: "{old}"', f'default: "{new}"'),
        (
            "README.md",
            f"| `prefect_version` | {old} | an exact release from {low} to {old},",
            f"| `prefect_version` | {new} | an exact release from {low} to {new},",
        ),
        ("pyproject.toml", f'"prefect=={old}"', f'"prefect=={new}"'),
    ]
    # Check every place before writing any, so a moved place changes nothing.
    for name, before, _ in edits:
        count = (root / name).read_text(encoding="utf-8").count(before)
        if count != 1:
            msg = f"{name}: expected '{before.splitlines()[0]}' exactly once, found {count}"
            raise SystemExit(msg)
    for name, before, after in edits:
        path = root / name
        path.write_text(path.read_text(encoding="utf-8").replace(before, after), encoding="utf-8")
    return sorted({root / name for name, _, _ in edits})


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("version", nargs="?", help="move the range's top to this release")
    args = parser.parse_args(argv)
    if args.version:
        version = parse(args.version)
        if version is None:
            parser.error(f"'{args.version}' is not a final release such as 3.9.2")
        for path in move_top(version):
            print(f"updated {path.relative_to(ROOT)}")
        print("Next: make test (installs and validates the new end), and a CHANGELOG line.")
        return 0
    lowest, highest = accepted_range()
    releases = published()
    late = overdue(releases, highest, datetime.now(UTC))
    print(f"accepted: {shown(lowest)} to {shown(highest)}; newest on PyPI: {shown(max(releases))}")
    for version, at in late:
        print(f"overdue: {shown(version)}, released {at:%Y-%m-%d}, is not accepted")
    if late:
        print(f"run: .venv/bin/python -m scripts.follow_prefect {shown(late[-1][0])}")
    return 1 if late else 0


if __name__ == "__main__":
    sys.exit(main())
