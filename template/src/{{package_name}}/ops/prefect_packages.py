"""The packages `make upgrade-prefect` moves with Prefect: prefect and every Prefect integration
(prefect-aws, prefect-docker, prefect-kubernetes, prefect-dask, prefect-ray, ...) that
pyproject.toml depends on, in its dependencies, optional dependencies or dependency groups.

An integration is released for a range of Prefect versions: a lock that moves Prefect alone
keeps the integrations it had, which may predate the new Prefect. Run as a script (standard
library only, before the environment matches the new pins), it prints uv's arguments:

    uv lock $(uv run --no-project python src/<package>/ops/prefect_packages.py)
"""

from __future__ import annotations

import re
import sys
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

NAME = re.compile(r"^\s*([A-Za-z0-9][A-Za-z0-9._-]*)")
PYPROJECT = Path("pyproject.toml")


def normalized(name: str) -> str:
    """A distribution name as PyPI compares them (PEP 503)."""
    return re.sub(r"[-_.]+", "-", name).lower()


def requirements(project: dict[str, Any]) -> Iterator[str]:
    """Every requirement string pyproject.toml declares (an include-group is not one)."""
    table = project.get("project", {})
    yield from table.get("dependencies", [])
    for extra in table.get("optional-dependencies", {}).values():
        yield from extra
    for group in project.get("dependency-groups", {}).values():
        yield from (item for item in group if isinstance(item, str))


def prefect_packages(pyproject: Path = PYPROJECT) -> list[str]:
    """prefect and the prefect-* packages pyproject.toml depends on, sorted, each once."""
    project = tomllib.loads(pyproject.read_text(encoding="utf-8"))
    names = {normalized(m.group(1)) for r in requirements(project) if (m := NAME.match(r))}
    return sorted(n for n in names if n == "prefect" or n.startswith("prefect-"))


def upgrade_arguments(pyproject: Path = PYPROJECT) -> list[str]:
    """`uv lock`'s arguments that let it move exactly those packages."""
    return [arg for name in prefect_packages(pyproject) for arg in ("--upgrade-package", name)]


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    pyproject = Path(args[0]) if args else PYPROJECT
    arguments = upgrade_arguments(pyproject)
    if not arguments:
        print(f"{pyproject} depends on no prefect package", file=sys.stderr)
        return 1
    print(" ".join(arguments))
    return 0


if __name__ == "__main__":
    sys.exit(main())
