"""The storage block of an environment's results, as config/<env>.yaml declares it.

`result_storage: {block_type: s3-bucket, bucket_name: ..., bucket_folder: ...}` becomes the
block `<project>-<env>-results` of that type (its package, prefect-aws, prefect-gcp or
prefect-azure, must be a dependency). A field may read the deploying environment as ${NAME}
(CI keeps such values with each environment's variables). Credentials never go here: leave the
block's credentials to the flow run host's own identity (an IAM role, workload identity),
which the storage blocks use when none are given.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from typing import Any

from prefect.blocks.core import Block, UnknownBlockType
from pydantic import ValidationError

from .._internal.config import ConfigError
from .._internal.results import results_block_name

VARIABLE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")


def expanded(value: Any, where: str, environ: Mapping[str, str]) -> Any:
    """value with each ${NAME} replaced by the deploying environment's NAME."""
    if isinstance(value, dict):
        return {k: expanded(v, f"{where}.{k}", environ) for k, v in value.items()}
    if not isinstance(value, str):
        return value

    def fill(match: re.Match[str]) -> str:
        name = match.group(1)
        if not environ.get(name):
            raise ConfigError(f"{where} reads ${{{name}}}, and {name} is not set: set it first.")
        return environ[name]

    return VARIABLE.sub(fill, value)


def desired_block(
    project: str,
    environment: str,
    declared: Mapping[str, Any],
    environ: Mapping[str, str] | None = None,
) -> tuple[str, Block]:
    """The block's `<type>/<name>` slug and the block config/<env>.yaml declares."""
    where = f"config/{environment}.yaml result_storage"
    fields = dict(declared)
    block_type = str(fields.pop("block_type", "") or "")
    if not block_type:
        raise ConfigError(f"{where} needs a block_type, e.g. s3-bucket or gcs-bucket.")
    try:
        block_class = Block.get_block_class_from_key(block_type)
    except UnknownBlockType as error:
        raise ConfigError(f"{where}: {error}") from None
    values = expanded(fields, where, os.environ if environ is None else environ)
    try:
        block = block_class(**values)
    except ValidationError as error:
        # Field names and what is wrong, never the values: the input is not echoed.
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in error.errors())
        raise ConfigError(f"{where} is not a valid {block_type} block: {problems}") from None
    except (TypeError, ValueError) as error:  # a block's own validator
        raise ConfigError(
            f"{where} is not a valid {block_type} block ({type(error).__name__})"
        ) from None
    return f"{block_type}/{results_block_name(project, environment)}", block


def fields_of(block: Block, *, secrets: bool = False) -> dict[str, Any]:
    """A block's fields, nested blocks' too, without the ids and names saving gives them. With
    secrets, their values too: to compare a block whose point is a secret (an alerts target's
    URL), never to print."""

    def public(value: Any) -> Any:
        if isinstance(value, dict):
            return {k: public(v) for k, v in value.items() if not k.startswith("_")}
        return value

    return public(block.model_dump(mode="json", context={"include_secrets": secrets}))


def saved_fields(slug: str, *, secrets: bool = False) -> dict[str, Any] | None:
    """The fields of the block saved under slug (fields_of), or None when there is none."""
    try:
        return fields_of(Block.load(slug), secrets=secrets)
    except ValueError:
        return None
