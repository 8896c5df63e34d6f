"""The tests' temporary Prefect API: Prefect's own test harness, on a database migrated once.

prefect_test_harness gives every session a new SQLite database, and the server it starts runs
every Alembic migration on it before it answers: about half of the harness's start (4-10 s on
two busy cores). The first session keeps a copy of that database as it is once the server is
up (migrated, before any test wrote to it) under .cache/prefect-test-api/, one per Prefect
version; later sessions start from a copy of it, so the server's migration step finds nothing
to do. A Prefect upgrade (make upgrade-prefect) migrates once again; deleting the directory
starts over. CI keeps it where it caches .cache/ between pipelines.
"""

from __future__ import annotations

import os
import shutil
import sqlite3
import tempfile
import warnings
from collections.abc import Iterator
from contextlib import closing, contextmanager
from pathlib import Path

import prefect
import prefect.testing.utilities as harness
import pytest
from prefect.testing.utilities import prefect_test_harness

CACHE = Path(__file__).resolve().parents[1] / ".cache" / "prefect-test-api"
# The harness names its database so inside the directory it makes; should a Prefect release
# rename it, a cached copy goes unused (the server migrates a new one) and nothing breaks.
DATABASE_NAME = "prefect-test.db"


@contextmanager
def temporary_api(startup_timeout: int) -> Iterator[None]:
    """prefect_test_harness, starting from the cached migrated database when there is one."""
    migrated = CACHE / f"prefect-{prefect.__version__}.db"
    directory = Path(tempfile.mkdtemp(prefix="prefect-test-api-"))
    if migrated.exists():
        shutil.copyfile(migrated, directory / DATABASE_NAME)
    with pytest.MonkeyPatch.context() as patch:
        # The harness removes the directory at exit, as it does its own.
        patch.setattr(harness, "mkdtemp", lambda *_: str(directory), raising=False)
        with prefect_test_harness(server_startup_timeout=startup_timeout):
            if not migrated.exists():
                keep_migrated(directory / DATABASE_NAME, migrated)
            yield


def keep_migrated(database: Path, target: Path) -> None:
    """Copy the running server's database for later sessions; SQLite's backup API reads a
    consistent copy while the server holds it open. A failure only costs the next session
    its migrations again."""
    partial = target.with_name(f"{target.name}.{os.getpid()}.partial")
    try:
        if not database.exists():
            raise FileNotFoundError(f"the harness made no {database}")
        target.parent.mkdir(parents=True, exist_ok=True)
        with closing(sqlite3.connect(database)) as live, closing(sqlite3.connect(partial)) as copy:
            live.backup(copy)
        partial.replace(target)
    except (OSError, sqlite3.Error) as error:
        partial.unlink(missing_ok=True)
        warnings.warn(f"the migrated test database was not kept: {error}", stacklevel=2)
