"""Prefect's slot writes on a SQLite server against PostgreSQL: the wait issue 26 cannot cut.

A minimal reproduction, with nothing of the template in it, of what keeps the default
pipeline's render to `Completed` over its budget on SQLite (bench/README.md, "Where a deployed
run's time goes"): a flow maps tasks that each take a slot of a rate limit as they start, as the
example flow's extract does, then takes slots of a concurrency limit once, as its fan-out does.
On SQLite the server answers many of those increments 503 "database is locked" (it reads the
limits and then updates them in one deferred transaction, and the task run recorder commits each
task's own events in between), and Prefect's client waits about 2 s before asking again. The
bench times every acquisition on a server on each database, counts those that waited a back-off
and the server's logged retryable errors, and prints both side by side. It has no budget and
exits 0: it says whether the Prefect it runs still has the wait, so a release that fixes it can
be seen here before the pin moves.

    .venv/bin/python -m bench.slot_bench [--rounds 3] [--tasks 8] [--database sqlite|postgres|both]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from tests.e2e import postgres
from tests.e2e.server import running_server

# The Prefect this project's environment runs (the generated repositories pin the same).
PREFECT = Path(sys.executable).parent / "prefect"
# Prefect's client waits 2**1 s (with jitter) after its first 503; a quick acquisition takes
# 0.02-0.3 s here, so anything from 1 s on waited a back-off.
BACK_OFF_SECONDS = 1.0
# Every wait below is bounded: a flow run that hangs is killed and reported.
FLOW_TIMEOUT_SECONDS = 300
RATE_LIMIT, CONCURRENCY_LIMIT = "bench-source-reads", "bench-warehouse"
FLOW = f'''
import json
import time

from prefect import flow, task
from prefect.concurrency.sync import concurrency, rate_limit

@task
def read(i: int) -> float:
    start = time.perf_counter()
    rate_limit("{RATE_LIMIT}")
    return time.perf_counter() - start

@flow
def slots(tasks: int) -> None:
    reads = read.map(range(tasks)).result()
    start = time.perf_counter()
    with concurrency("{CONCURRENCY_LIMIT}", occupy=2, timeout_seconds=120):
        held = time.perf_counter() - start
    print(json.dumps({{"reads": reads, "held": held}}))

if __name__ == "__main__":
    import sys
    slots(int(sys.argv[1]))
'''
SETUP = f"""
import asyncio
from prefect.client.orchestration import get_client
from prefect.client.schemas.actions import GlobalConcurrencyLimitCreate

async def main() -> None:
    async with get_client() as client:
        # Generous limits: no acquisition waits for a slot (423), only for the server (503).
        await client.create_global_concurrency_limit(GlobalConcurrencyLimitCreate(
            name="{RATE_LIMIT}", limit=100, slot_decay_per_second=100.0))
        await client.create_global_concurrency_limit(GlobalConcurrencyLimitCreate(
            name="{CONCURRENCY_LIMIT}", limit=10))

asyncio.run(main())
"""


def run_python(script: Path, args: list[str], env: dict[str, str]) -> str:
    result = subprocess.run(
        [sys.executable, str(script), *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=FLOW_TIMEOUT_SECONDS,
        check=False,
    )
    if result.returncode != 0:
        raise SystemExit(f"a bench process failed ({result.returncode}):\n{result.stderr[-3000:]}")
    return result.stdout


def one_database(database: str, work: Path, rounds: int, tasks: int) -> dict[str, float]:
    """Acquisitions' seconds on a fresh server on `database`, and what waited a back-off,
    running the setup and flow scripts main wrote into `work`."""
    waits: list[float] = []
    backed_off = 0
    setup, flow = work / "setup.py", work / "slots.py"
    with postgres.running_postgres() if database == "postgres" else contextlib.nullcontext() as url:
        server_env = {**os.environ, "PREFECT_API_LOG_RETRYABLE_ERRORS": "true"}
        if url:
            server_env[postgres.DATABASE_URL_SETTING] = url
        log = work / f"{database}-server.log"
        with running_server(PREFECT, work / f"{database}-home", log, server_env) as server:
            env = {**os.environ, **server.env()}
            run_python(setup, [], env)
            for number in range(1, rounds + 1):
                line = run_python(flow, [str(tasks)], env).strip().splitlines()[-1]
                times = json.loads(line)
                these = [*times["reads"], times["held"]]
                slow = sum(1 for seconds in these if seconds >= BACK_OFF_SECONDS)
                print(
                    f"  {database}, flow run {number}: {tasks} rate-limit acquisitions "
                    f"{' '.join(f'{s:.2f}' for s in times['reads'])} s, the concurrency slots "
                    f"{times['held']:.2f} s; {slow} waited a back-off"
                )
                waits += these
                backed_off += slow
        errors = log.read_text(errors="replace").count("Encountered retryable exception")
    return {
        "acquisitions": len(waits),
        "backed_off": backed_off,
        "median": statistics.median(waits),
        "mean": statistics.fmean(waits),
        "retryable_errors": errors,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3, help="flow runs per database")
    parser.add_argument("--tasks", type=int, default=8, help="rate-limited tasks per flow run")
    parser.add_argument(
        "--database",
        choices=("sqlite", "postgres", "both"),
        default="both" if postgres.available() else "sqlite",
    )
    args = parser.parse_args()
    databases = ("sqlite", "postgres") if args.database == "both" else (args.database,)
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        (work / "setup.py").write_text(SETUP)
        (work / "slots.py").write_text(FLOW)
        for database in databases:
            results[database] = one_database(database, work, args.rounds, args.tasks)
    for database, result in results.items():
        print(
            f"{database}: {result['backed_off']} of {result['acquisitions']} acquisitions waited "
            f"{BACK_OFF_SECONDS:.0f} s or more; median {result['median']:.2f} s, mean "
            f"{result['mean']:.2f} s; the server logged {result['retryable_errors']} retryable "
            "errors"
        )
    if len(results) == 2:
        ratio = results["sqlite"]["mean"] / results["postgres"]["mean"]
        print(f"mean acquisition, SQLite against PostgreSQL: {ratio:.1f}x")


if __name__ == "__main__":
    main()
