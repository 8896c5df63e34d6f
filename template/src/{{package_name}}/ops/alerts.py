"""Where an environment's alerts go: a Prefect notification block made from a secret.

config/orchestration.yaml's `alerts: {target: alerts-target, kind: auto}` names the secret, read
with get_secret in the environment being reconciled; reconcile saves it as the notification
block <project>-<env>-alerts, and an automation action `block_document: alerts` sends to it.
The kind follows the value unless `kind:` says it:

- slack: https://hooks.slack.com/services/...
- ms-teams: a Teams workflow URL (https://...logic.azure.com/..., ...powerplatform.com/...)
- pagerduty: pagerduty://<integration key>@<api key>
- sendgrid (email): sendgrid://<api key>:<from address>/<to address>[,<to address>...]
- webhook: any other http(s) URL, sent a JSON POST {"text", "subject", "body"}

The last environment (production) requires a target unless its config/<env>.yaml says
`alerts_required: false`, and any other may require one with `alerts_required: true`: a deploy
of an environment that requires one and has none is refused before it changes anything
(ops/preflight.py); elsewhere reconcile warns and the automations only record their firings.

The value lives in the secret backend and in the block's secret fields on the server only: it
is never printed, never put in an error message, a deployment or this repository.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from prefect.blocks.core import Block
from prefect.blocks.notifications import (
    CustomWebhookNotificationBlock,
    MicrosoftTeamsWebhook,
    PagerDutyWebHook,
    SendgridEmail,
    SlackWebhook,
)

from .._internal.config import ENVIRONMENT_VAR, ConfigError
from ..secrets import SecretError, declared_secrets, get_secret
from .state import DesiredState

# What an automation action writes as `block_document:` to mean this environment's target.
TARGET_REFERENCE = "alerts"
# The name config/secrets.yaml declares the target under, unless alerts.target names another.
TARGET_DECLARED_AS = "alerts-target"
TEAMS_HOSTS = ("logic.azure.com", "powerplatform.com", "powerautomate.com", "webhook.office.com")


@dataclass(frozen=True)
class Target:
    """The environment's notification block, as reconcile should save it."""

    block_type: str
    name: str
    block: Block = field(compare=False, repr=False)

    @property
    def slug(self) -> str:
        return f"{self.block_type}/{self.name}"


def target_name(project: str, environment: str) -> str:
    return f"{project}-{environment}-alerts"


def secret_name(state: DesiredState) -> str:
    return str(state.alerts.get("target") or TARGET_DECLARED_AS)


def kind_of(value: str) -> str:
    """The kind of a target value, from its URL."""
    parts = urlsplit(value)
    host = (parts.hostname or "").lower()
    if parts.scheme in {"pagerduty", "sendgrid"}:
        return parts.scheme
    if parts.scheme not in {"http", "https"}:
        # Not even the scheme: a value without one may start with a credential.
        raise ConfigError(
            "the alerts target is not an https, http, pagerduty or sendgrid URL "
            "(README.md, 'Alerts')."
        )
    if host == "hooks.slack.com":
        return "slack"
    if any(host == known or host.endswith("." + known) for known in TEAMS_HOSTS):
        return "ms-teams"
    return "webhook"


def slack(value: str, name: str) -> Block:
    return SlackWebhook(url=value)


def ms_teams(value: str, name: str) -> Block:
    return MicrosoftTeamsWebhook(url=value)


def pagerduty(value: str, name: str) -> Block:
    keys = value.partition("://")[2]
    integration_key, _, api_key = keys.partition("@")
    if not (integration_key and api_key):
        raise ConfigError(
            "a pagerduty alerts target reads pagerduty://<integration key>@<api key>."
        )
    return PagerDutyWebHook(integration_key=integration_key, api_key=api_key)


def sendgrid(value: str, name: str) -> Block:
    api_key, _, rest = value.partition("://")[2].partition(":")
    sender, _, recipients = rest.partition("/")
    to_emails = [address for address in recipients.split(",") if address]
    if not (api_key and sender and to_emails):
        raise ConfigError(
            "a sendgrid alerts target reads sendgrid://<api key>:<from address>/<to address>."
        )
    return SendgridEmail(api_key=api_key, sender_email=sender, to_emails=to_emails)


def placeholder(key: str) -> str:
    """A custom webhook block's own template of key, filled when it sends."""
    return "{" * 2 + key + "}" * 2


def webhook(value: str, name: str) -> Block:
    # The URL goes into the block's secret values and the url field only names it: a plain
    # url field would show in the UI and the API. "text" is what Slack-like receivers read.
    subject, body = placeholder("subject"), placeholder("body")
    return CustomWebhookNotificationBlock(
        name=name,
        url=placeholder("target"),
        json_data={"text": f"{subject}\n{body}", "subject": subject, "body": body},
        secrets={"target": value},
    )


BLOCKS: dict[str, Callable[[str, str], Block]] = {
    "slack": slack,
    "ms-teams": ms_teams,
    "pagerduty": pagerduty,
    "sendgrid": sendgrid,
    "webhook": webhook,
}


def read_value(state: DesiredState) -> tuple[str | None, str]:
    """The target's value, or None and why there is none (never the value)."""
    name = secret_name(state)
    if name not in declared_secrets():
        return None, f"the secret '{name}' is not declared in config/secrets.yaml"
    # get_secret reads the environment being reconciled, not the one this shell is set to.
    before = os.environ.get(ENVIRONMENT_VAR)
    os.environ[ENVIRONMENT_VAR] = state.environment
    try:
        return get_secret(name), ""
    except SecretError as error:
        return None, str(error)
    finally:
        if before is None:
            os.environ.pop(ENVIRONMENT_VAR, None)
        else:
            os.environ[ENVIRONMENT_VAR] = before


def missing_required_target(state: DesiredState) -> str | None:
    """Why a deploy of an environment that requires an alerts target (config/<env>.yaml's
    alerts_required, by default the last environment) must be refused; None when it has its
    target or does not require one."""
    if not state.alerts_required:
        return None
    value, why = read_value(state)
    if value is not None:
        return None
    env = state.environment
    return (
        f"the alerts of '{env}' have no target ({why}), and config/{env}.yaml requires one "
        f"(alerts_required): create the secret '{secret_name(state)}' for '{env}' so failed, "
        "late and crashed runs reach a person (README.md, 'Alerts'), or set "
        f"alerts_required: false in config/{env}.yaml to deploy it unwatched"
    )


def desired_target(state: DesiredState) -> tuple[Target | None, str]:
    """The environment's target, or None and a warning that says why and how to set one."""
    value, why = read_value(state)
    if value is None:
        return None, (
            f"alerts of '{state.environment}' have no target ({why}): the automations only "
            f"record their firings. Set the secret '{secret_name(state)}' for this environment "
            "(README.md, 'Alerts')."
        )
    kind = str(state.alerts.get("kind") or "auto")
    if kind == "auto":
        kind = kind_of(value)
    if kind not in BLOCKS:
        raise ConfigError(
            f"config/orchestration.yaml: alerts kind '{kind}' is none of auto, {', '.join(BLOCKS)}."
        )
    name = target_name(state.project, state.environment)
    try:
        block = BLOCKS[kind](value, name)
    except ValueError as error:  # pydantic's, whose message may echo the input
        raise ConfigError(
            f"the alerts target of '{state.environment}' is not a valid {kind} target "
            f"({type(error).__name__})."
        ) from None
    return Target(block.get_block_type_slug(), name, block), ""


def notification_text(action: dict[str, Any], state: DesiredState) -> dict[str, Any]:
    """A send-notification action that names the project and environment in every message."""
    label = f"{state.project} ({state.environment})"
    subject = str(action.get("subject") or "Prefect alert")
    body = str(action.get("body") or "")
    return {
        **action,
        "subject": f"[{label}] {subject}",
        "body": f"Project {state.project}, environment {state.environment}.\n{body}".rstrip(),
    }
