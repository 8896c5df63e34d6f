"""The pre-commit hooks run the tools the dev group pins, at the same versions: an update of
one (Dependabot or Renovate) fails here until the other follows."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
PIN = re.compile(r"^(?P<name>[A-Za-z0-9_.-]+)(?:\[[^]]*\])?==(?P<version>\S+)$")


def pins(requirements: list[str]) -> dict[str, str]:
    found = {}
    for requirement in requirements:
        if match := PIN.match(requirement.strip()):
            found[match["name"].lower()] = match["version"]
    return found


def hook_pins() -> dict[str, str]:
    config = yaml.safe_load((ROOT / ".pre-commit-config.yaml").read_text(encoding="utf-8"))
    requirements = [
        requirement
        for repo in config["repos"]
        for hook in repo["hooks"]
        for requirement in hook.get("additional_dependencies", [])
    ]
    return pins(requirements)


def test_hooks_and_dev_group_pin_the_same_versions() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    dev = project["dependency-groups"]["dev"]
    dev_pins = pins(dev)
    hooks = hook_pins()
    shared = sorted(set(hooks) & {re.split(r"[=<>~\[ ]", r, maxsplit=1)[0].lower() for r in dev})
    assert shared, "no tool is both a hook and in the dev group: nothing to keep in step"
    for name in shared:
        assert dev_pins.get(name) == hooks[name], (
            f"{name}: the dev group pins {dev_pins.get(name)}, the pre-commit hook {hooks[name]}"
        )
