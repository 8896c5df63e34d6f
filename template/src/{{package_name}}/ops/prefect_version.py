"""`python -m <package>.ops.prefect_version [--set RELEASE]`: where this repository pins
Prefect, and one command that moves every pin at once (`make prefect-bump VERSION=...`).

The pins: the dependency in pyproject.toml (uv.lock and the flow-run image follow it),
prefect_version in .copier-answers.yml (what the next `copier update` renders from, so a bump
recorded there is kept, not reverted), and a Kubernetes worker's image tag in
deploy/worker-<env>.yaml. tests/test_prefect_version.py fails while any of them differ;
Renovate moves them together in one request (README.md, "Upgrading Prefect").
"""

from __future__ import annotations

import argparse
import re
import subprocess
import tomllib
from importlib.metadata import version as installed_version
from pathlib import Path

import yaml

RELEASE = re.compile(r"^\d+\.\d+\.\d+$")
# Each pin as it is written, with the release as its one group.
PYPROJECT_PIN = re.compile(r'(?m)^(\s*"prefect==)([^"]+)(",?)$')
ANSWER_PIN = re.compile(r"(?m)^(prefect_version: )['\"]?([0-9.]+)['\"]?$")
WORKER_TAG_PIN = re.compile(r"(?m)^(\s*prefectTag: ['\"]?)([0-9.]+)(-python)")


def worker_values(root: Path) -> list[Path]:
    return sorted((root / "deploy").glob("worker-*.yaml"))


def pins(root: Path) -> dict[str, str | None]:
    """Each place and the release it pins (None where that file pins none it should)."""
    found: dict[str, str | None] = {}
    pyproject = PYPROJECT_PIN.search((root / "pyproject.toml").read_text(encoding="utf-8"))
    found["pyproject.toml"] = pyproject[2] if pyproject else None
    answers = root / ".copier-answers.yml"
    if answers.exists():
        found[".copier-answers.yml"] = (yaml.safe_load(answers.read_text()) or {}).get(
            "prefect_version"
        )
    lock = root / "uv.lock"
    if lock.exists():
        packages = tomllib.loads(lock.read_text(encoding="utf-8")).get("package", [])
        found["uv.lock"] = next((p["version"] for p in packages if p["name"] == "prefect"), None)
    for path in worker_values(root):
        tag = WORKER_TAG_PIN.search(path.read_text(encoding="utf-8"))
        found[str(path.relative_to(root))] = tag[2] if tag else None
    return found


def mismatches(root: Path) -> list[str]:
    """What differs from pyproject.toml's pin, the one uv installs; empty when all agree."""
    found = {**pins(root), "installed (uv sync)": installed_version("prefect")}
    want = found["pyproject.toml"]
    if want is None:
        return ['pyproject.toml has no "prefect==<release>" dependency: pin one']
    return [
        f"{place} has Prefect {have or 'nowhere'}, pyproject.toml {want}: run "
        f"`make prefect-bump VERSION={want}` (then `uv sync`), or see README, 'Upgrading Prefect'"
        for place, have in found.items()
        if have != want
    ]


def bump(root: Path, release: str, *, lock: bool = True) -> list[str]:
    """Set every pin to release and (unless lock is False) lock it; returns the files
    changed. Nothing is written when release is not an exact version."""
    if not RELEASE.match(release):
        raise SystemExit(f"prefect_version: {release!r} is not an exact release such as 3.9.1.")
    files = [(root / "pyproject.toml", PYPROJECT_PIN), (root / ".copier-answers.yml", ANSWER_PIN)]
    files += [(path, WORKER_TAG_PIN) for path in worker_values(root)]
    changed = []
    for path, pin in files:
        if not path.exists():
            continue
        text = path.read_text(encoding="utf-8")
        new = pin.sub(lambda m: m[1] + release + (m[3] if m.lastindex == 3 else ""), text)
        if new != text:
            path.write_text(new, encoding="utf-8")
            changed.append(str(path.relative_to(root)))
    if lock:
        subprocess.run(["uv", "lock"], cwd=root, check=True)  # noqa: S607 - uv, from PATH
    return changed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="prefect_version", description=__doc__)
    parser.add_argument("--set", metavar="RELEASE", help="move every pin to this release")
    parser.add_argument("--root", type=Path, default=Path.cwd(), help="the repository root")
    args = parser.parse_args(argv)
    if args.set:
        changed = bump(args.root, args.set)
        print(f"Prefect {args.set}: {', '.join(changed) or 'already pinned'}; uv.lock locked.")
        return 0
    for place, release in pins(args.root).items():
        print(f"{place}: {release}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
