"""Locate and read the repository's config/ files.

Flow runs start in the repository root (the deployment's pull step or the image's WORKDIR), so
config/ is found relative to the working directory unless PIPELINE_CONFIG_DIR says otherwise.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import yaml

CONFIG_DIR_VAR = "PIPELINE_CONFIG_DIR"
ENVIRONMENT_VAR = "PIPELINE_ENV"
# How a `prefect deploy` placeholder starts (the braces are doubled in prefect.yaml).
UNFILLED = "{" * 2


class ConfigError(RuntimeError):
    """A config file is missing or malformed."""


def required_setting(name: str) -> str:
    """A non-secret setting from the environment, such as a secret backend's address.

    On a container runtime the flow run's environment is its deployment's job_variables.env,
    filled from the deploying environment's variables: `prefect deploy` leaves its placeholder
    for NAME in place when NAME was unset there, so that counts as unset too.
    """
    value = os.environ.get(name, "").strip()
    if not value or value.startswith(UNFILLED):
        raise ConfigError(
            f"{name} is not set in the flow run's environment: set it where the worker runs, "
            f"or in the deploying environment's variables before `make reconcile` (README.md)."
        )
    return value


def config_dir() -> Path:
    return Path(os.environ.get(CONFIG_DIR_VAR) or Path.cwd() / "config")


def read_yaml(path: Path) -> dict[str, Any]:
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(
            f"{path} does not exist. Run from the repository root or set {CONFIG_DIR_VAR}."
        ) from None
    except yaml.YAMLError as error:
        raise ConfigError(f"{path} is not valid YAML: {error}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path} must hold a mapping at the top level.")
    return data


def environment_names(directory: Path | None = None) -> list[str]:
    """The environments that have a config/<env>.yaml file."""
    directory = directory or config_dir()
    reserved = {"secrets", "orchestration"}
    return sorted(p.stem for p in directory.glob("*.yaml") if p.stem not in reserved)


def read_environment(environment: str, directory: Path | None = None) -> dict[str, Any]:
    directory = directory or config_dir()
    known = environment_names(directory)
    if environment not in known:
        raise ConfigError(
            f"unknown environment '{environment}' (set {ENVIRONMENT_VAR}); "
            f"config/ defines: {', '.join(known) or 'none'}."
        )
    return {"environment": environment, **read_yaml(directory / f"{environment}.yaml")}


def tag_limit(tag: str, directory: Path | None = None) -> int | None:
    """The task tag limit config/orchestration.yaml declares for `tag`, if it declares one."""
    limits = read_yaml((directory or config_dir()) / "orchestration.yaml").get("tag_limits") or {}
    return int(limits[tag]) if tag in limits else None
