"""Each environment's notification target: one Prefect notification block, made from a secret.

config/orchestration.yaml's `notifications:` names the block type (slack-webhook,
ms-teams-webhook, pager-duty-webhook, sendgrid-email or custom-webhook) and, as `target`, the
secret that holds it (a webhook URL, an integration key, an API key). Reconcile reads the secret
from this repository's secret backend with PIPELINE_ENV set to the environment, and saves the
block <project>-<env>-alerts; the automations' send-notification actions send through it. The
value goes from the backend into the block (which the server keeps encrypted), never into a
file, a plan line or a log.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from prefect.blocks.core import Block
from prefect.client.orchestration import SyncPrefectClient
from prefect.exceptions import ObjectNotFound
from pydantic import ValidationError

from .._internal.config import ENVIRONMENT_VAR, ConfigError

# The field each block type's secret fills when the secret is a plain string. A type that needs
# several secret fields (pager-duty-webhook: integration_key and api_key) takes a JSON object.
SECRET_FIELD = {
    "slack-webhook": "url",
    "ms-teams-webhook": "url",
    "custom-webhook": "url",
    "pager-duty-webhook": "integration_key",
    "sendgrid-email": "api_key",
}


@dataclass(frozen=True)
class Notifications:
    """Where one environment's alerts go."""

    block_type: str
    secret: str
    block_name: str
    # Fields that are no secret (sendgrid-email's sender_email and to_emails, say).
    fields: dict[str, Any] = field(default_factory=dict)

    @property
    def reference(self) -> str:
        return f"{self.block_type}/{self.block_name}"


def read_notifications(
    environment: str, project: str, orchestration: dict[str, Any]
) -> Notifications | None:
    """config/orchestration.yaml's `notifications:`, with the environment's overrides applied."""
    declared = orchestration.get("notifications")
    if not declared:
        return None
    overrides = (declared.get("by_environment") or {}).get(environment) or {}
    spec = {**declared, **overrides}
    block_type = str(spec.get("block_type") or "")
    if block_type not in SECRET_FIELD:
        raise ConfigError(
            f"config/orchestration.yaml: notifications block_type '{block_type}' for "
            f"'{environment}' is not one of {', '.join(SECRET_FIELD)}."
        )
    return Notifications(
        block_type=block_type,
        # `target`, not `secret`: the name of the secret in config/secrets.yaml, never a value.
        secret=str(spec.get("target") or "alerts-target"),
        block_name=f"{project}-{environment}-alerts",
        fields=dict(spec.get("fields") or {}),
    )


@contextmanager
def environment_of(environment: str) -> Iterator[None]:
    """PIPELINE_ENV=environment while the target is read: the backends key secrets by it."""
    before = os.environ.get(ENVIRONMENT_VAR)
    os.environ[ENVIRONMENT_VAR] = environment
    try:
        yield
    finally:
        if before is None:
            os.environ.pop(ENVIRONMENT_VAR, None)
        else:
            os.environ[ENVIRONMENT_VAR] = before


def read_target(notifications: Notifications, environment: str) -> str:
    """The secret's value; SecretError (naming the secret and backend, never a value) if absent."""
    from ..secrets import get_secret

    with environment_of(environment):
        return get_secret(notifications.secret)


def secret_fields(notifications: Notifications, value: str) -> dict[str, Any]:
    if value.lstrip().startswith("{"):
        try:
            parsed = json.loads(value)
        except json.JSONDecodeError:
            raise ConfigError(
                f"secret '{notifications.secret}' starts with a brace but is not a JSON object."
            ) from None
        if isinstance(parsed, dict):
            return parsed
    return {SECRET_FIELD[notifications.block_type]: value}


def target_block(notifications: Notifications, value: str) -> Block:
    """The notification block for a target value, not yet saved."""
    import prefect.blocks.notifications  # noqa: F401  (registers the block types)

    cls = Block.get_block_class_from_key(notifications.block_type)
    data = {**notifications.fields, **secret_fields(notifications, value)}
    if notifications.block_type == "custom-webhook":
        # The URL stays in the block's secrets (shown masked in the UI), not its plain url field.
        data = {
            "name": notifications.block_name,
            "json_data": {"subject": "{{subject}}", "body": "{{body}}"},
            **data,
            "url": "{{url}}",
            "secrets": {"url": data["url"]},
        }
    try:
        return cls.model_validate(data)
    except (ValidationError, ValueError, KeyError) as error:
        # The field names are worth showing; pydantic's input values would be the secret.
        names = sorted(data)
        raise ConfigError(
            f"secret '{notifications.secret}' does not make a valid {notifications.block_type} "
            f"block (fields given: {', '.join(names)}): {type(error).__name__}."
        ) from None


def block_data(block: Block) -> dict[str, Any]:
    """What reconcile compares: the fields, secrets included, not the ids a save assigns."""
    dumped = block.model_dump(mode="json", context={"include_secrets": True})
    return {key: value for key, value in dumped.items() if not key.startswith("_")}


def current_block(client: SyncPrefectClient, notifications: Notifications) -> Block | None:
    try:
        document = client.read_block_document_by_name(
            name=notifications.block_name,
            block_type_slug=notifications.block_type,
            include_secrets=True,
        )
    except ObjectNotFound:
        return None
    return Block._from_block_document(document)
