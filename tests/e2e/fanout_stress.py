"""Run a generated repository's example flow many times in one process and check every run.

Run with the repository's interpreter, from its root: `python fanout_stress.py RUNS RUNNER
PACKAGE`. With RAY_ADDRESS or DASK_SCHEDULER_ADDRESS set, the flow runs fan out on that
external cluster; without, on one local cluster started here for all runs (as the repository's
own tests do). Each run loads the sample orders in batches of 25, 8 batches under the 5 slots of
the warehouse limit, so map_bounded waits for a finished load 3 times and then for all 8
results. Prints one line per run; exits non-zero on a wrong count (a hang is the caller's bound).
"""

from __future__ import annotations

import contextlib
import importlib
import os
import sqlite3
import sys
import time
from collections.abc import Iterator
from pathlib import Path


@contextlib.contextmanager
def cluster(runner: str) -> Iterator[None]:
    """Join the environment's cluster once, or start a local one, for every run."""
    if runner == "ray":
        import ray

        address = os.environ.get("RAY_ADDRESS")
        ray.init(address, **({} if address else {"num_cpus": 2}), include_dashboard=False)
        try:
            yield
        finally:
            ray.shutdown()
    elif runner == "dask":
        from distributed import Client, LocalCluster

        address = os.environ.get("DASK_SCHEDULER_ADDRESS")
        if address:
            # The flow's runner opens its own client to the address on each run.
            yield
        else:
            local = LocalCluster(
                n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None
            )
            with local, Client(local):
                yield
    else:
        yield


def main(runs: int, runner: str, package: str) -> int:
    etl = importlib.import_module(f"{package}.flows.etl").etl
    database = os.environ["WAREHOUSE_DSN"].removeprefix("sqlite:///")
    with Path("data/orders.csv").open(encoding="utf-8") as source:
        expected = sum(1 for _ in source) - 1
    with cluster(runner):
        for number in range(1, runs + 1):
            started = time.monotonic()
            loaded = etl(batch_size=25)
            with contextlib.closing(sqlite3.connect(database)) as db:
                stored = db.execute("SELECT COUNT(*) FROM orders").fetchone()[0]
            seconds = time.monotonic() - started
            print(f"run {number}: {loaded} rows loaded, {stored} stored, {seconds:.1f} s")
            sys.stdout.flush()
            if loaded != expected or stored != expected:
                print(f"expected {expected} rows", file=sys.stderr)
                return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(int(sys.argv[1]), sys.argv[2], sys.argv[3]))
