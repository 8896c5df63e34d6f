"""Prefect on an external Dask cluster against plain Dask (`python -m bench.cluster_bench`).

Renders the template with task_runner=dask, starts a local Prefect server and a Dask cluster
(`dask scheduler` + two single-threaded `dask worker` processes, outside the repository), then,
side by side in one run, fans M tasks of D seconds each out on that cluster:

- Prefect: a flow on the generated package's task runner (DASK_SCHEDULER_ADDRESS set), its
  tasks mapped as the example flow maps `transform`; each task cleans a batch with the example's
  `transform` and then holds for D seconds, standing for the IO of a real load;
- plain: the same function submitted with `distributed.Client.map`, no Prefect at all.

Each side is timed from the call to the last result (the flow's whole run for Prefect: flow run
creation, connecting to the scheduler, task runs reported to the server). The ideal is
ceil(M / workers) x D. The ratio Prefect / plain must stay within 1.5 (exit 1 otherwise).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

from tests.e2e.cluster import dask_cluster
from tests.e2e.server import running_server
from tests.rendering import BIN, answers_of, commit_lock, render, snapshot_template, sync

CEILING = 1.5
ROOT = Path(__file__).resolve().parents[1]

# Runs in the generated repository's environment, where the package and Dask are installed.
SIDE_BY_SIDE = """
import importlib, json, sys, time

from distributed import Client
from prefect import flow, task

package, address, tasks, seconds, runs = sys.argv[1:6]
tasks, seconds, runs = int(tasks), float(seconds), int(runs)
transform = importlib.import_module(package + ".flows.etl").transform
build_task_runner = importlib.import_module(package + ".task_runner").build_task_runner
ROW = {"order_id": "1", "customer": " ada ", "amount": "1.50", "currency": "eur"}


def work(index: int) -> int:
    orders = transform.fn([ROW] * 50)
    time.sleep(seconds)
    return len(orders)


work_task = task(work, name="work")


@flow(name="cluster-bench", task_runner=build_task_runner())
def fan_out() -> int:
    return sum(work_task.map(range(tasks)).result())


for _ in range(runs):
    start = time.perf_counter()
    assert fan_out() == 50 * tasks
    prefect_seconds = time.perf_counter() - start
    start = time.perf_counter()
    with Client(address, timeout=30) as client:
        assert sum(client.gather(client.map(work, range(tasks), pure=False))) == 50 * tasks
    plain_seconds = time.perf_counter() - start
    print(json.dumps({"prefect": prefect_seconds, "plain": plain_seconds}), flush=True)
"""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.cluster_bench", description=__doc__)
    parser.add_argument("--tasks", type=int, default=16, help="M, tasks fanned out (default 16)")
    parser.add_argument("--seconds", type=float, default=2.0, help="D, per task (default 2)")
    parser.add_argument("--runs", type=int, default=3, help="pairs to measure (default 3)")
    args = parser.parse_args(argv)
    workers = 2
    with tempfile.TemporaryDirectory(prefix="cluster-bench-") as tmp:
        workdir = Path(tmp)
        print("Rendering task_runner=dask and installing it (uv sync) ...", flush=True)
        repo = render(
            snapshot_template(workdir / "template"), workdir / "pipeline", {"task_runner": "dask"}
        )
        env = sync(repo)
        commit_lock(repo)  # the worker runs the deployed commit's uv.lock
        bin_dir = repo / ".venv" / "bin"
        print("Starting a Prefect server and a Dask cluster ...", flush=True)
        with (
            running_server(
                BIN / "prefect", workdir / "home", workdir / "server.log", env
            ) as server,
            dask_cluster(bin_dir, workdir / "cluster", {**env, **server.env()}, workers) as cluster,
        ):
            run_env = {**env, **server.env(), **cluster.env}
            package = answers_of(repo)["package_name"]
            side_by_side_args = [package, cluster.address, str(args.tasks), str(args.seconds)]
            side_by_side_args.append(str(args.runs))
            result = subprocess.run(
                [str(bin_dir / "python"), "-c", SIDE_BY_SIDE, *side_by_side_args],
                cwd=repo,
                env=run_env,
                capture_output=True,
                text=True,
                timeout=1800,
                check=False,
            )
    if result.returncode != 0:
        print(result.stdout + result.stderr, file=sys.stderr)
        return 1
    ideal = -(-args.tasks // workers) * args.seconds
    ratios = []
    for line in result.stdout.splitlines():
        if not line.startswith("{"):
            continue
        pair = json.loads(line)
        ratio = pair["prefect"] / pair["plain"]
        ratios.append(ratio)
        print(
            f"run {len(ratios)}: M={args.tasks} x {args.seconds:g} s on {workers} Dask workers: "
            f"Prefect {pair['prefect']:.1f} s, plain dask.distributed {pair['plain']:.1f} s "
            f"(ideal {ideal:.1f} s), ratio {ratio:.2f}"
        )
    ratios.sort()
    median = ratios[len(ratios) // 2]
    print(
        f"median ratio Prefect / plain {median:.2f} (min {ratios[0]:.2f}, max {ratios[-1]:.2f}); "
        f"within {CEILING}: {'yes' if median <= CEILING else 'NO'}"
    )
    return 0 if median <= CEILING else 1


if __name__ == "__main__":
    raise SystemExit(main())
