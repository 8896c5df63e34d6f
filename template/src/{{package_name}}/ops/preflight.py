"""What a deploy checks before it changes anything, so that it can never silently do nothing.

- PREFECT_API_URL must be set and answer. With it empty, Prefect falls back to a temporary
  local API: a CI job whose variable is missing would go green having deployed nowhere.
- The API must accept this machine's credential for a read. The server exempts `/health` from
  auth, so only an authenticated call, through Prefect's own client (its TLS settings and
  headers), shows a missing or wrong PREFECT_API_AUTH_STRING or PREFECT_API_KEY before
  anything starts.
- Every `{{ $NAME }}` prefect.yaml reads for the environment must be set and not empty: an
  unset one deploys as '' (an ECS `cluster: ""`, an image `repo:`). A secret reference of a
  Prefect API credential may be empty only where the deploying environment has no such
  credential: the ECS worker puts an API key without its secret's ARN into the task's
  containerOverrides in plain text.
- Azure Pipelines leaves `$(NAME)` as literal text when NAME is not defined: such a value is
  refused rather than deployed, stored as a secret or sent as an API key.
- An environment that requires alerts (the last one unless config/<env>.yaml says otherwise)
  must have its alerts target's secret: a production deploy nobody hears from is refused.
- Free text (a description) must hold no placeholder: `prefect deploy` would fill it from
  the deploying machine's environment.
- The results block config/<env>.yaml declares must be one this repository can save: its
  package installed, every ${NAME} it reads set (ops/results.py).
"""

from __future__ import annotations

import os
import re
import ssl
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import httpx
from prefect.client.orchestration import SyncPrefectClient
from prefect.settings import PREFECT_CLIENT_MAX_RETRIES, get_current_settings, temporary_settings

from .._internal.config import ConfigError
from .alerts import missing_required_target
from .results import storage_problems
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
# A reference to the secret holding a Prefect API credential, which flow runs read instead of
# the value (the ECS worker's prefect_api_key_secret_arn, prefect_api_auth_string_secret_arn):
# empty where the API takes no such credential.
CREDENTIAL_SECRETS = {
    f"ECS_{credential}_SECRET_ARN": credential
    for credential in ("PREFECT_API_KEY", "PREFECT_API_AUTH_STRING")
}


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
        credential = CREDENTIAL_SECRETS.get(name)
        if credential and not value.strip():
            if environ.get(credential, "").strip():
                problems.append(
                    f"{name} is {'empty' if name in environ else 'unset'} while {credential} "
                    f"is set: flow runs would get {credential} in plain text; set {name} to "
                    "the ARN of the Secrets Manager secret that holds it"
                )
            continue
        if not value.strip():
            problems.append(
                f"{name} is {'empty' if name in environ else 'unset'}: prefect.yaml reads it "
                "for this environment, and an empty value would be deployed as ''"
            )
        elif problem := unexpanded(name, value):
            problems.append(problem)
    return problems


def _is_cloud(url: str) -> bool:
    """Prefect's own test for a Prefect Cloud URL (prefect/client/orchestration)."""
    return url.startswith(get_current_settings().cloud.api_url)


def credential_refused(
    url: str,
    status: int,
    *,
    prefix: str = "",
    given: tuple[str, str] | None = None,
    needs: str = "manages work pools, deployments and concurrency limits",
) -> str:
    """Which setting to fix when the API at url answers 401 or 403; never its value. prefix
    names the settings ('PREVIOUS_' for the previous environment's API, ops/topology.py), and
    given holds their (key, auth string) when they are not Prefect's own settings."""
    settings = get_current_settings().api
    if given is None:
        key, auth = settings.key, settings.auth_string
        given = (key.get_secret_value() if key else "", auth.get_secret_value() if auth else "")
    if _is_cloud(url):
        name, value = f"{prefix}PREFECT_API_KEY", given[0]
        wanted = "an API key of a user or service account with a role in this workspace"
    else:
        name, value = f"{prefix}PREFECT_API_AUTH_STRING", given[1]
        wanted = "the 'user:password' the server's PREFECT_SERVER_API_AUTH_STRING holds"
    if status == 403:
        return (
            f"the Prefect API at {url} forbids this request (403 Forbidden): {name} is "
            f"accepted but may not do this; give its account a role that {needs} "
            "(or check the proxy in front of the server)"
        )
    return (
        f"the Prefect API at {url} refused the request (401 Unauthorized): {name} "
        f"{'was not accepted' if value.strip() else 'is unset'}; set it to {wanted}"
    )


def api_refusal(error: BaseException) -> str | None:
    """credential_refused() for a 401 or 403 from the configured Prefect API anywhere in
    error's chain, so an entry point can print one line instead of a traceback; None for any
    other error (a secret backend's or a registry's 401 is not Prefect's)."""
    url = get_current_settings().api.url
    seen: set[int] = set()
    cause: BaseException | None = error
    while cause is not None and id(cause) not in seen:
        seen.add(id(cause))
        if (
            url
            and isinstance(cause, httpx.HTTPStatusError)
            and cause.response.status_code in (401, 403)
            and str(cause.request.url).startswith(url.rstrip("/"))
        ):
            return credential_refused(url, cause.response.status_code)
        cause = cause.__cause__ or cause.__context__
    return None


def _unreachable(url: str, error: BaseException, prefix: str = "") -> ConfigError:
    if isinstance(error, ssl.SSLError) or "CERTIFICATE_VERIFY_FAILED" in str(error):
        return ConfigError(
            f"the Prefect API at {url} failed TLS verification ({type(error).__name__}): set "
            f"{prefix}PREFECT_API_SSL_CERT_FILE to the CA bundle that signed the server's "
            "certificate; nothing was changed."
        )
    fix = f"; check {prefix}PREFECT_API_URL" if prefix else ""
    return ConfigError(
        f"the Prefect API at {url} does not answer ({type(error).__name__}: {error}){fix}; "
        "nothing was changed."
    )


def check_api(url: str | None, *, timeout: float = 15.0) -> None:
    """Refuse an empty, unexpanded or unreachable Prefect API URL, and a credential it refuses."""
    if not url or not url.strip():
        raise ConfigError(
            "PREFECT_API_URL is empty: set it to the environment's Prefect API. Without it "
            "Prefect deploys to a temporary local server that disappears; nothing was changed."
        )
    if problem := unexpanded("PREFECT_API_URL", url):
        raise ConfigError(f"{problem}; nothing was changed.")
    settings = get_current_settings().api
    auth_string = settings.auth_string.get_secret_value() if settings.auth_string else ""
    key = settings.key.get_secret_value() if settings.key else ""
    check_credentials(url, key=key, auth_string=auth_string, timeout=timeout)


def check_credentials(
    url: str,
    *,
    key: str,
    auth_string: str,
    prefix: str = "",
    httpx_settings: Mapping[str, Any] | None = None,
    needs: str = "manages work pools, deployments and concurrency limits",
    timeout: float = 15.0,
) -> None:
    """Refuse an API at url that does not answer an authenticated read with these credentials,
    naming the `{prefix}PREFECT_API_*` setting to fix (never a value)."""
    # Sent as they are, an Azure `$(NAME)` would be refused as a wrong credential.
    for name, value in (("PREFECT_API_AUTH_STRING", auth_string), ("PREFECT_API_KEY", key)):
        if problem := unexpanded(prefix + name, value):
            raise ConfigError(f"{problem}; nothing was changed.")
    client = SyncPrefectClient(
        url,
        auth_string=auth_string or None,
        api_key=key or None,
        httpx_settings={**(httpx_settings or {}), "timeout": timeout},
    )
    # One attempt each: Prefect's client retries a timeout five times with growing pauses.
    with temporary_settings(updates={PREFECT_CLIENT_MAX_RETRIES: 0}), client:
        if (error := client.api_healthcheck()) is not None:
            raise _unreachable(url, error, prefix) from None
        try:
            # What reconcile reads first; /health proves nothing about the credential.
            client.read_work_pools(limit=1)
        except httpx.HTTPStatusError as error:
            status = error.response.status_code
            if status in (401, 403):
                given = (key, auth_string)
                refused = credential_refused(url, status, prefix=prefix, given=given, needs=needs)
                raise ConfigError(f"{refused}; nothing was changed.") from None
            raise ConfigError(
                f"the Prefect API at {url} answered {status} to a read of its work pools; "
                "nothing was changed."
            ) from None
        except httpx.HTTPError as error:
            raise _unreachable(url, error, prefix) from None


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
    if problem := missing_required_target(state):
        problems.append(problem)
    problems += storage_problems(state.environment, state.result_storage, environ)
    if problems:
        raise ConfigError(
            f"refusing to deploy '{state.environment}'; nothing was changed:\n  "
            + "\n  ".join(problems)
        )
