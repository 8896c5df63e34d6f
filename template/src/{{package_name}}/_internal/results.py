"""Where an environment's task results (so the cached transform batches) live.

Each environment has its own store, so a run hits the cache of earlier runs of the same
environment and never another environment's: config/<env>.yaml's `result_storage` names a
storage block type (s3-bucket, gcs-bucket, azure-blob-storage-container, ...) that
`make reconcile` saves as `<project>-<env>-results`, or, undeclared, a directory of its own
under the flow run's local storage path (PREFECT_RESULTS_LOCAL_STORAGE_PATH, the worker's
$PREFECT_HOME/storage by default; the image sets a path its volume keeps).

A run outside a deployment (`make run`, the tests) takes the local directory whatever is
declared: reconcile saved the block on the deployment's API, not necessarily on the one this
process talks to, and such a run must not fill a deployment's cache.
"""

from __future__ import annotations

from pathlib import Path

from prefect.runtime import deployment
from prefect.settings import get_current_settings


def results_block_name(project: str, environment: str) -> str:
    """The name of the storage block `make reconcile` saves for an environment's results."""
    return f"{project}-{environment}-results"


def result_storage(project: str, environment: str, block_type: str | None) -> str | Path:
    """What the cached tasks of a run take as `result_storage`: the declared block's slug,
    which Prefect loads when the task runs, or the environment's local directory."""
    if block_type and deployment.id:
        return f"{block_type}/{results_block_name(project, environment)}"
    # A path, not an unsaved LocalFileSystem block: tasks take only saved blocks, or paths.
    return Path(get_current_settings().results.local_storage_path) / environment
