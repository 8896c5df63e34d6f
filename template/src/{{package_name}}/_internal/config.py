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
    """The server's name for a limit of config/orchestration.yaml in one environment: each
    environment has its own, so a run of one never takes a slot of another."""
    return f"{name}-{environment}"


def environment_value(value: Any, environment: str, where: str) -> int:
    """A limit's value in one environment: one number for all, or a number per environment."""
    if isinstance(value, dict):
        if environment not in value:
            raise ConfigError(
                f"config/orchestration.yaml: {where} has no value for '{environment}' "
                f"(it names {', '.join(map(str, value)) or 'none'}): add one."
            )
        value = value[environment]
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(
            f"config/orchestration.yaml: {where} is {value!r} in '{environment}'; "
            "it must be a positive whole number."
        )
    return value


def tag_limit(
    tag: str, directory: Path | None = None, *, environment: str | None = None
) -> int | None:
    """The task tag limit config/orchestration.yaml declares for `tag` in `environment`
    (PIPELINE_ENV by default), if it declares one; the server names it limit_name(tag, env)."""
    limits = read_yaml((directory or config_dir()) / "orchestration.yaml").get("tag_limits") or {}
    if tag not in limits:
        return None
    environment = environment or os.environ.get(ENVIRONMENT_VAR, "")
    value = limits[tag]
    if not environment and isinstance(value, dict) and value:
        # No environment named (a flow written before limits were per environment, run
        # locally): the lowest value, which exceeds no environment's limit.
        return min(environment_value(value, env, f"tag_limits.{tag}") for env in value)
    return environment_value(value, environment, f"tag_limits.{tag}")
