"""Where a process worker's flow runs clone the code from: the `repository` of prefect.yaml's
`git_clone` pull step, read as `{{ $GIT_REPOSITORY }}` when `prefect deploy` runs.

GIT_REPOSITORY when set (an SSH URL, a mirror), else the URL the CI platform gives every job,
else this checkout's path (a local path source: a developer's worker clones it, with no
credential). A URL with a user name or password in it is refused or, for the user name CI puts
there itself (Azure), dropped: the worker side holds the credential, never the deployment.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

from .._internal.config import ConfigError

REPOSITORY_VAR = "GIT_REPOSITORY"


def without_user(url: str) -> str:
    parts = urlsplit(url)
    if not parts.username and not parts.password:
        return url
    return urlunsplit(
        parts._replace(netloc=parts.hostname + (f":{parts.port}" if parts.port else ""))
    )


def ci_repository(environ: Mapping[str, str]) -> str:
    """The repository's URL from the CI platform's own variables, or ''."""
    if environ.get("GITHUB_REPOSITORY"):
        server = environ.get("GITHUB_SERVER_URL") or "https://github.com"
        return f"{server.rstrip('/')}/{environ['GITHUB_REPOSITORY']}.git"
    if environ.get("CI_PROJECT_URL"):  # GitLab; CI_REPOSITORY_URL carries the job token
        return environ["CI_PROJECT_URL"].rstrip("/") + ".git"
    if environ.get("BITBUCKET_GIT_HTTP_ORIGIN"):  # given as http://bitbucket.org/...
        origin = environ["BITBUCKET_GIT_HTTP_ORIGIN"].rstrip("/")
        return "https://" + origin.split("://", 1)[-1] + ".git"
    if environ.get("BUILD_REPOSITORY_URI"):  # Azure Repos: https://org@dev.azure.com/...
        return without_user(environ["BUILD_REPOSITORY_URI"])
    return ""


def repository_url(root: Path, environ: Mapping[str, str]) -> str:
    """GIT_REPOSITORY, else CI's repository, else the checkout at root."""
    explicit = environ.get(REPOSITORY_VAR, "").strip()
    if explicit:
        if urlsplit(explicit).password:
            raise ConfigError(
                f"{REPOSITORY_VAR} holds a password or token: it would be stored on every "
                "deployment. Give the URL alone; the worker's git credential authenticates."
            )
        return explicit
    return ci_repository(environ) or str(root.resolve())
