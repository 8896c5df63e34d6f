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


def limit_name(name: str, environment: str) -> str:
    """The server's name of a limit of config/orchestration.yaml in one environment.

    Limits are server-wide, so each environment gets its own copy (shared-db-dev,
    shared-db-prod, as work pools are <project>-<env>): a dev, preview or smoke run on a shared
    server never takes a prod slot. Environment names hold no dash, so a name maps back to one
    limit and one environment.
    """
    return f"{name}-{environment}"


def environment_limits(
    environment: str, orchestration: dict[str, Any]
) -> tuple[dict[str, int], dict[str, dict[str, Any]]]:
    """The tag and global limits of config/orchestration.yaml with `environment`'s own values
    (its entry under environment_limits) over the shared ones, by their declared names."""
    tags = {str(k): int(v) for k, v in (orchestration.get("tag_limits") or {}).items()}
    declared = orchestration.get("global_limits") or {}
    globals_ = {str(name): dict(spec or {}) for name, spec in declared.items()}
    own = (orchestration.get("environment_limits") or {}).get(environment) or {}
    for tag, value in (own.get("tag_limits") or {}).items():
        if tag not in tags:
            raise ConfigError(
                f"config/orchestration.yaml: environment_limits.{environment} sets tag limit "
                f"'{tag}', which tag_limits does not declare."
            )
        tags[tag] = int(value)
    for name, spec in (own.get("global_limits") or {}).items():
        if name not in globals_ or not isinstance(spec, dict):
            raise ConfigError(
                f"config/orchestration.yaml: environment_limits.{environment} sets global limit "
                f"'{name}', which global_limits does not declare (or not as a mapping)."
            )
        globals_[name] = {**globals_[name], **spec}
    return tags, globals_


def tag_limit(
    tag: str, environment: str | None = None, directory: Path | None = None
) -> int | None:
    """The value config/orchestration.yaml gives `tag`'s limit in `environment` (the shared
    one without an environment, as flows written before per-environment limits ask), if any."""
    orchestration = read_yaml((directory or config_dir()) / "orchestration.yaml")
    return environment_limits(environment or "", orchestration)[0].get(tag)
