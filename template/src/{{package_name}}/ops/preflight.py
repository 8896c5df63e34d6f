"""What a deploy checks before it changes anything, so that it can never silently do nothing.

- PREFECT_API_URL must be set and answer an authenticated read with this environment's
  credential (PREFECT_API_KEY or PREFECT_API_AUTH_STRING). With it empty, Prefect falls back to
  a temporary local API: a CI job whose variable is missing would go green having deployed
  nowhere. A refused credential is named here, not met as a 401 traceback mid-deploy.
- Every `{{ $NAME }}` prefect.yaml reads for the environment must be set and not empty: an
  unset one deploys as '' (an ECS `cluster: ""`, an image `repo:`).
- Azure Pipelines leaves `$(NAME)` as literal text when NAME is not defined: such a value is
  refused rather than deployed, stored as a secret or sent as an API key.
- Free text (a description) must hold no placeholder: `prefect deploy` would fill it from
  the deploying machine's environment.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any

from .._internal.config import ConfigError
from .api_access import check_access, current_access
from .state import DesiredState
from .unexpanded import unexpanded
from .versions import dirty_files

# `prefect deploy` fills these from the deploying environment (prefect/utilities/templating.py).
DEPLOY_PLACEHOLDER = re.compile(r"\{\{\s*\$([\w.-]+)\s*\}\}")
ANY_PLACEHOLDER = re.compile(r"\{\{.*?\}\}")
# Fields that are prose, never configuration.
FREE_TEXT = ("description",)
# Variables every deploy sends, whether or not prefect.yaml names them.
API_VARIABLES = ("PREFECT_API_URL", "PREFECT_API_KEY", "PREFECT_API_AUTH_STRING")


def placeholders(value: Any) -> set[str]:
    """The `{{ $NAME }}` names anywhere in a prefect.yaml value."""
    if isinstance(value, str):
        return set(DEPLOY_PLACEHOLDER.findall(value))
    if isinstance(value, Mapping):
        return set().union(*(placeholders(v) for v in value.values()))
    if isinstance(value, list):
        return set().union(*(placeholders(v) for v in value))
    return set()


def deploy_variables(state: DesiredState, *, prebuilt_image: bool) -> set[str]:
    """What `prefect deploy` reads from the environment for this environment's deployments."""
    steps = ["pull"] if prebuilt_image else ["build", "push", "pull"]
    names = placeholders([state.project_file.get(step) for step in steps])
    for deployment in state.deployments:
        names |= placeholders(deployment.spec)
    return names


def free_text_problems(state: DesiredState) -> list[str]:
    problems = []
    for deployment in state.deployments:
        for field in FREE_TEXT:
            text = deployment.spec.get(field)
            if isinstance(text, str) and (found := ANY_PLACEHOLDER.search(text)):
                problems.append(
                    f"deployment {deployment.full_name}: its {field} holds '{found.group()}', "
                    "which prefect deploy would fill from this machine's environment: "
                    "write it as plain text in prefect.yaml"
                )
    return problems


def variable_problems(names: Iterable[str], environ: Mapping[str, str]) -> list[str]:
    problems = []
    for name in sorted(names):
        value = environ.get(name, "")
        if not value.strip():
            problems.append(
                f"{name} is {'empty' if name in environ else 'unset'}: prefect.yaml reads it "
                "for this environment, and an empty value would be deployed as ''"
            )
        elif problem := unexpanded(name, value):
            problems.append(problem)
    return problems


def check_api(url: str | None, *, timeout: float = 15.0) -> None:
    """Refuse an empty, unexpanded or unreachable Prefect API URL, and a credential the API
    refuses: one authenticated read with this process's credential (ops/api_access.py)."""
    check_access(replace(current_access(), url=url), timeout=timeout)


def build_problems(state: DesiredState, root: Path) -> list[str]:
    """An image built now must be its commit's: prefect deploy would build the working tree."""
    if not state.project_file.get("build"):
        return []
    if dirty := dirty_files(root):
        return [
            f"the working tree differs from HEAD ({', '.join(dirty[:5])}), and prefect deploy "
            "would build the image from it under HEAD's tag: commit or stash first"
        ]
    return []


def preflight(
    state: DesiredState,
    api_url: str | None,
    *,
    prebuilt_image: bool,
    root: Path | None = None,
    environ: Mapping[str, str] | None = None,
) -> None:
    """Raise ConfigError naming every problem; return when the deploy may go ahead."""
    environ = os.environ if environ is None else environ
    check_api(api_url)
    problems = free_text_problems(state)
    if root is not None and not prebuilt_image:
        problems += build_problems(state, root)
    problems += variable_problems(deploy_variables(state, prebuilt_image=prebuilt_image), environ)
    for name in API_VARIABLES:
        if problem := unexpanded(name, environ.get(name, "")):
            problems.append(problem)
    if problems:
        raise ConfigError(
            f"refusing to deploy '{state.environment}'; nothing was changed:\n  "
            + "\n  ".join(problems)
        )
