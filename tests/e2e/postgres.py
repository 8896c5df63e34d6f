"""A throwaway PostgreSQL server on 127.0.0.1, for a Prefect server's database.

Prefect's own production advice is a PostgreSQL database behind its server; SQLite serves one
developer. The bench uses it to measure the template against the server a platform team runs
(bench.foundation_bench --database postgres). It needs PostgreSQL's server programs (Debian's
postgresql package); `available()` says whether this machine has them.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

from tests.e2e.server import free_port

# PostgreSQL refuses to run as root; Debian's package creates this account.
SERVICE_ACCOUNT = "postgres"
# The Prefect server's database setting (Prefect 3.9; PREFECT_API_DATABASE_CONNECTION_URL is its
# alias): where a server started with running_postgres()'s URL in it keeps its data.
DATABASE_URL_SETTING = "PREFECT_SERVER_DATABASE_CONNECTION_URL"


def bin_directory() -> Path | None:
    """Where initdb and pg_ctl are: on PATH, else Debian's versioned directory."""
    on_path = shutil.which("pg_ctl")
    if on_path:
        return Path(on_path).resolve().parent
    versions = sorted(Path("/usr/lib/postgresql").glob("*/bin/pg_ctl"))
    return versions[-1].parent if versions else None


def available() -> bool:
    return bin_directory() is not None


def as_server_user(command: list[str]) -> list[str]:
    if os.geteuid() != 0:
        return command
    return ["runuser", "-u", SERVICE_ACCOUNT, "--", *command]


def run(command: list[str], timeout: float) -> None:
    result = subprocess.run(
        as_server_user(command), capture_output=True, text=True, timeout=timeout, check=False
    )
    if result.returncode != 0:
        raise RuntimeError(f"{command[0]} exited {result.returncode}: {result.stderr.strip()}")


@contextlib.contextmanager
def running_postgres(timeout: float = 60) -> Iterator[str]:
    """A new cluster on a free loopback port, with a `prefect` database.

    Yields the SQLAlchemy URL a Prefect server reads from PREFECT_SERVER_DATABASE_CONNECTION_URL
    (no password: the cluster trusts loopback, and nothing but this machine reaches it). The
    cluster lives in a directory of its own under the system's temporary directory (the
    service account must reach it; a caller's private temporary directory would not do);
    stopped and removed on the way out. Every step is bounded by TIMEOUT seconds.
    """
    binaries = bin_directory()
    if binaries is None:
        raise RuntimeError("PostgreSQL's server programs (initdb, pg_ctl) are not installed")
    directory = Path(tempfile.mkdtemp(prefix="prefect-postgres-"))
    try:
        if os.geteuid() == 0:
            shutil.chown(directory, SERVICE_ACCOUNT)
        data, port = directory / "data", free_port()
        initdb = [str(binaries / "initdb"), "-D", str(data), "-U", "prefect", "--auth=trust"]
        run([*initdb, "-E", "UTF8"], timeout)
        options = f"-p {port} -k {directory} -c listen_addresses=127.0.0.1"
        pg_ctl = [str(binaries / "pg_ctl"), "-D", str(data), "-w", "-t", str(int(timeout))]
        run([*pg_ctl, "-o", options, "-l", str(directory / "server.log"), "start"], timeout)
        try:
            createdb = [str(binaries / "createdb"), "-h", "127.0.0.1", "-p", str(port)]
            run([*createdb, "-U", "prefect", "prefect"], timeout)
            yield f"postgresql+asyncpg://prefect@127.0.0.1:{port}/prefect"
        finally:
            run([*pg_ctl, "-m", "fast", "stop"], timeout)
    finally:
        shutil.rmtree(directory, ignore_errors=True)
