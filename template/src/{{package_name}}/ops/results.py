"""The storage block of an environment's results, as config/<env>.yaml declares it.

`result_storage: {block_type: s3-bucket, bucket_name: ..., bucket_folder: ...}` becomes the
block `<project>-<env>-results` of that type (its package, prefect-aws, prefect-gcp or
prefect-azure, must be a dependency). A field may read the deploying environment as ${NAME}
(CI keeps such values with each environment's variables). Credentials never go here: leave the
block's credentials to the flow run host's own identity (an IAM role, workload identity),
which the storage blocks use when none are given.

`make check` (declaration_problems) and a deploy's preflight (storage_problems) refuse a
declaration whose block type's package is missing or whose ${NAME}s are unset, before anything
changes; reconcile warns of a runtime whose flow runs' own disk goes with them (kubernetes, ecs)
when nothing is declared, as the cache would never hit there.
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
# Where undeclared results go, by work pool type, when that place is gone with the flow run.
LOST_WITH_THE_RUN = {
    "kubernetes": "the flow-run pod's emptyDir, deleted with the pod",
    "ecs": "the ECS task's own disk, deleted with the task",
}


def where(environment: str) -> str:
    return f"config/{environment}.yaml result_storage"


def variables_read(value: Any) -> set[str]:
    """The ${NAME}s anywhere in a declaration."""
    if isinstance(value, Mapping):
        return set().union(*(variables_read(v) for v in value.values()))
    return set(VARIABLE.findall(value)) if isinstance(value, str) else set()


def block_class(environment: str, declared: Mapping[str, Any]) -> type[Block]:
    """The block class the declaration names; ConfigError when none, or its package is missing."""
    block_type = str(declared.get("block_type", "") or "")
    if not block_type:
        raise ConfigError(f"{where(environment)} needs a block_type, e.g. s3-bucket or gcs-bucket.")
    try:
        return Block.get_block_class_from_key(block_type)
    except UnknownBlockType as error:
        # Prefect's message names the integration to install (prefect-aws for s3-bucket, ...).
        raise ConfigError(f"{where(environment)}: {error}") from None


def declaration_problems(environment: str, declared: Mapping[str, Any] | None) -> list[str]:
    """What is wrong with a declaration offline: its type, and fields the type does not have."""
    if not declared:
        return []
    if not isinstance(declared, Mapping):
        return [f"{where(environment)} must be a mapping of a block_type and its fields."]
    try:
        fields = set(block_class(environment, declared).model_fields)
    except ConfigError as error:
        return [str(error)]
    unknown = sorted(set(declared) - fields - {"block_type"})
    return [
        f"{where(environment)}: {name} is not a field of {declared['block_type']}"
        for name in unknown
    ]


def storage_problems(
    environment: str, declared: Mapping[str, Any] | None, environ: Mapping[str, str]
) -> list[str]:
    """What keeps a deploy from saving the declared block: the offline problems, and each
    ${NAME} it reads that the deploying environment leaves unset or empty (never a value)."""
    if not declared:
        return []
    problems = declaration_problems(environment, declared)
    if problems:
        return problems
    for name in sorted(variables_read(declared)):
        if not environ.get(name, "").strip():
            state = "empty" if name in environ else "unset"
            problems.append(
                f"{where(environment)} reads ${{{name}}}, and {name} is {state}: set it where "
                "you deploy (CI keeps it with the environment's variables)"
            )
    return problems


def undeclared_warning(environment: str, work_pool_type: str) -> str | None:
    """For an environment that declares no block: a warning when its results would go where
    a flow run's end deletes them, else None."""
    lost = LOST_WITH_THE_RUN.get(work_pool_type)
    if not lost:
        return None
    return (
        f"config/{environment}.yaml declares no result_storage: {work_pool_type} flow runs keep "
        f"their results on {lost}, so the cache never hits; declare the environment's storage "
        'block there (README, "Results and the cache").'
    )


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
    place = where(environment)
    cls = block_class(environment, declared)
    fields = {k: v for k, v in declared.items() if k != "block_type"}
    block_type = str(declared["block_type"])
    values = expanded(fields, place, os.environ if environ is None else environ)
    try:
        block = cls(**values)
    except ValidationError as error:
        # Field names and what is wrong, never the values: the input is not echoed.
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in error.errors())
        raise ConfigError(f"{place} is not a valid {block_type} block: {problems}") from None
    except (TypeError, ValueError) as error:  # a block's own validator
        raise ConfigError(
            f"{place} is not a valid {block_type} block ({type(error).__name__})"
        ) from None
    except Exception as error:
        # A block that looks its credentials up when it is made: prefect-gcp's gcs-bucket asks
        # google-auth for the deploying machine's Application Default Credentials. The type,
        # not the message: what the lookup says is not ours to vouch for.
        raise ConfigError(
            f"{place}: a {block_type} block could not be made here ({type(error).__name__}); "
            f"the deploying machine needs the credentials {block_type} looks up when it is "
            "made (gcs-bucket: GOOGLE_APPLICATION_CREDENTIALS or the machine's own identity)"
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
