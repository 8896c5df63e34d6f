"""Which Prefect API a command talks to, with which credential, and one authenticated call
that says what is wrong with them, naming the setting to fix and never its value.

This process's own API is the one its Prefect settings name (PREFECT_API_URL,
PREFECT_API_KEY, PREFECT_API_AUTH_STRING, PREFECT_API_SSL_CERT_FILE). Another environment's
API, read by a promotion whose environments each have their own (README.md, "Topologies"),
is named by the same settings with the environment as a suffix: PREFECT_API_URL_STAGING, ...

The check reads one flow through Prefect's own client: `GET /health` answers without a
credential (the server exempts it from auth), so only an authenticated read tells a wrong
key or auth string from a right one.
"""

from __future__ import annotations

import os
import ssl
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import httpx
from prefect.client.orchestration import SyncPrefectClient
from prefect.exceptions import PrefectHTTPStatusError
from prefect.settings import PREFECT_CLIENT_MAX_RETRIES, get_current_settings, temporary_settings

from .._internal.config import ConfigError
from .unexpanded import unexpanded

URL, KEY, AUTH_STRING, CERT_FILE = (
    "PREFECT_API_URL",
    "PREFECT_API_KEY",
    "PREFECT_API_AUTH_STRING",
    "PREFECT_API_SSL_CERT_FILE",
)


def secret_value(secret: Any) -> str | None:
    value = secret.get_secret_value() if secret is not None else None
    return value or None


@dataclass(frozen=True)
class ApiAccess:
    """An API and the credential to use on it; `suffix` makes each setting's name."""

    url: str | None
    api_key: str | None = field(default=None, repr=False)
    auth_string: str | None = field(default=None, repr=False)
    ssl_cert_file: str | None = None
    suffix: str = ""
    # Whose API it is, for messages: "this environment's" or "'staging''s".
    owner: str = "the"

    def setting(self, name: str) -> str:
        return name + self.suffix

    @property
    def shown_url(self) -> str:
        """The URL without any user:password@ part, fit for a message."""
        parts = urlsplit(self.url or "")
        host = parts.hostname or ""
        if parts.port:
            host += f":{parts.port}"
        return urlunsplit(parts._replace(netloc=host)) if parts.netloc else (self.url or "")

    def credential_setting(self) -> str:
        """The setting the credential sent comes from (auth string wins, as in Prefect)."""
        if self.auth_string:
            return self.setting(AUTH_STRING)
        return self.setting(KEY)

    def client(self, timeout: float = 30.0) -> SyncPrefectClient:
        settings: dict[str, Any] = {"timeout": timeout}
        if self.ssl_cert_file:
            settings["verify"] = ssl.create_default_context(cafile=self.ssl_cert_file)
        return SyncPrefectClient(
            api=self.url or "",
            api_key=self.api_key,
            auth_string=self.auth_string,
            httpx_settings=settings,
        )


def current_access() -> ApiAccess:
    """This process's API, as its Prefect settings (environment, profile) name it."""
    api = get_current_settings().api
    return ApiAccess(
        url=api.url,
        api_key=secret_value(api.key),
        auth_string=secret_value(api.auth_string),
        ssl_cert_file=api.ssl_cert_file or None,
        owner="this environment's",
    )


def environment_access(environment: str, environ: Mapping[str, str] | None = None) -> ApiAccess:
    """Another environment's API, from PREFECT_API_URL_<ENV> and its credential settings."""
    environ = os.environ if environ is None else environ
    suffix = "_" + environment.upper().replace("-", "_")
    return ApiAccess(
        url=environ.get(URL + suffix, "").strip() or None,
        api_key=environ.get(KEY + suffix) or None,
        auth_string=environ.get(AUTH_STRING + suffix) or None,
        ssl_cert_file=environ.get(CERT_FILE + suffix) or None,
        suffix=suffix,
        owner=f"'{environment}''s",
    )


def http_problem(access: ApiAccess, status: int) -> str:
    where = f"{access.owner} Prefect API at {access.shown_url}"
    if status == 401:
        if access.auth_string or access.api_key:
            return (
                f"{where} refused the credential in {access.credential_setting()} (401 "
                "Unauthorized): it is wrong or expired; set the right one"
            )
        return (
            f"{where} requires a credential (401 Unauthorized) and none is set: set "
            f"{access.setting(AUTH_STRING)} for a self-hosted server with basic auth, or "
            f"{access.setting(KEY)} for Prefect Cloud"
        )
    if status == 403:
        return (
            f"{where} accepted the credential in {access.credential_setting()} but forbids it "
            "this workspace (403 Forbidden): give its user or service account access to the "
            f"workspace, or check that {access.setting(URL)} names the right workspace"
        )
    if status == 404:
        return (
            f"{where} has no such route (404 Not Found): {access.setting(URL)} must be the "
            "API's URL, ending in /api (Cloud: .../accounts/<id>/workspaces/<id>)"
        )
    return f"{where} answered {status}: check {access.setting(URL)} and that the server is up"


def transport_problem(access: ApiAccess, error: Exception) -> str:
    where = f"{access.owner} Prefect API at {access.shown_url}"
    cause: BaseException | None = error
    while cause is not None and not isinstance(cause, ssl.SSLError):
        cause = cause.__cause__ or cause.__context__
    if isinstance(cause, ssl.SSLError) or "CERTIFICATE_VERIFY_FAILED" in str(error):
        return (
            f"{where}: TLS failed ({type(cause or error).__name__}): set "
            f"{access.setting(CERT_FILE)} to a CA bundle that signs the server's certificate"
        )
    return (
        f"{where} is unreachable ({type(error).__name__}): check {access.setting(URL)} and "
        "that the server is up and reachable from here"
    )


def access_problem(access: ApiAccess, *, timeout: float = 15.0) -> str | None:
    """What stops an authenticated read on access's API, or None when it works."""
    name = access.setting(URL)
    if not (access.url or "").strip():
        return f"{name} is empty: set it to {access.owner} Prefect API" + (
            ". Without it Prefect deploys to a temporary local server that disappears"
            if not access.suffix
            else ""
        )
    for setting, value in (
        (name, access.url),
        (access.setting(KEY), access.api_key),
        (access.setting(AUTH_STRING), access.auth_string),
    ):
        if value and (problem := unexpanded(setting, value)):
            return problem
    if access.ssl_cert_file and not Path(access.ssl_cert_file).is_file():
        return f"{access.setting(CERT_FILE)} names no readable file: set it to a CA bundle"
    # One try: a preflight says what is wrong now, rather than retrying with backoff.
    with temporary_settings(updates={PREFECT_CLIENT_MAX_RETRIES: 0}):
        try:
            with access.client(timeout) as client:
                client.read_flows(limit=1)
        except PrefectHTTPStatusError as error:
            return http_problem(access, error.response.status_code)
        except (httpx.HTTPError, ssl.SSLError, OSError) as error:
            return transport_problem(access, error)
    return None


def check_access(access: ApiAccess, *, timeout: float = 15.0) -> None:
    if problem := access_problem(access, timeout=timeout):
        raise ConfigError(f"{problem}; nothing was changed.")


@contextmanager
def named_api_errors(access: ApiAccess | None = None) -> Iterator[None]:
    """A 401 or 403 met after the preflight (a credential revoked meanwhile) as a ConfigError
    naming the setting, not a traceback."""
    try:
        yield
    except PrefectHTTPStatusError as error:
        status = error.response.status_code
        if status not in (401, 403):
            raise
        raise ConfigError(http_problem(access or current_access(), status)) from None
