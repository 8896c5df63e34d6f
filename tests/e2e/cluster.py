"""A real Dask or Ray cluster beside a local Prefect server, as a team's would run.

Each cluster runs as separate processes started from a working directory outside the generated
repository, with the generated package installed in their environment (the repository's
virtualenv). Every process of a cluster shares one process group (Dask) or one session (Ray,
whose raylet starts each worker in a group of its own): a load task, whose process and parent
the run-summary artifact records, ran on the cluster when either is in it; all of it is stopped
on the way out, on failure and on Ctrl-C too.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from bench.concurrency_bench import api
from tests.e2e.server import free_port

ADDRESS_VARS = {"dask": "DASK_SCHEDULER_ADDRESS", "ray": "RAY_ADDRESS"}
# Any local ray.init() writes a token to ~/.ray/auth_token, after which `ray start` turns token
# authentication on and a driver without that setup is refused. This throwaway loopback
# cluster opts out, and so do the flow runs that drive it. Ray also swaps a loopback address for
# the machine's network address unless told it runs no multi-host cluster: keep it on loopback.
RAY_SETTINGS = {"RAY_AUTH_MODE": "disabled", "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}
# Where the example flow's load task ran, as its run-summary artifact records it per batch.
LOADED_BY = re.compile(r"process (\d+) \(parent (\d+)\) on (\S+)")

# One single-threaded process per worker: the fan-out spreads over processes.
WORKER_ARGS = ["--nworkers", "1", "--nthreads", "1", "--no-dashboard"]
# Waits for the scheduler and both workers to register, then prints their process ids.
DASK_READY = """
import json, os, sys
from distributed import Client
with Client(sys.argv[1], timeout=60) as client:
    client.wait_for_workers(int(sys.argv[2]), timeout=120)
    print(json.dumps(sorted(client.run(os.getpid).values())))
"""


@dataclass(frozen=True)
class Load:
    rows: int
    pid: int
    parent: int
    host: str


@dataclass
class Cluster:
    kind: str
    address: str
    group: int
    worker_pids: list[int] = field(default_factory=list)

    @property
    def variable(self) -> str:
        return ADDRESS_VARS[self.kind]

    @property
    def env(self) -> dict[str, str]:
        """What points an environment's flow runs at this cluster."""
        return {self.variable: self.address}

    @property
    def driver_env(self) -> dict[str, str]:
        """What a process that submits to this cluster (a flow run) needs besides the address."""
        return dict(RAY_SETTINGS) if self.kind == "ray" else {}

    def ran(self, load: Load) -> bool:
        """Whether a load ran in this cluster: its process, or its parent (Ray ends idle workers,
        its raylet lives on), is the cluster's."""
        return self.owns(load.pid) or self.owns(load.parent)

    def owns(self, pid: int) -> bool:
        """Whether the process runs in this cluster's process group or session."""
        try:
            return self.group in (os.getpgid(pid), os.getsid(pid))
        except ProcessLookupError:
            return False


def group_members(group: int) -> list[int]:
    """The live processes whose process group or session is `group` (zombies left out)."""
    members = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError, ValueError):
                # /proc/<pid>/stat: pid (comm) state ppid pgrp session ...; comm may hold spaces.
                fields = (entry / "stat").read_text().rpartition(")")[2].split()
                state, pgrp, session = fields[0], int(fields[2]), int(fields[3])
                if group in (pgrp, session) and state != "Z":
                    members.append(int(entry.name))
    return members


def stop_group(group: int, timeout: float = 15) -> None:
    """SIGTERM every process of the group or session, then SIGKILL what is left."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid in group_members(group):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)
        deadline = time.monotonic() + timeout
        while group_members(group) and time.monotonic() < deadline:
            time.sleep(0.2)
        if not group_members(group):
            return


def start(
    command: list[str], cwd: Path, env: Mapping[str, str], log: Path, group: int | None = 0
) -> subprocess.Popen[bytes]:
    """A process in `group` (0: a new group; None: a new session), output to `log`."""
    cwd.mkdir(parents=True, exist_ok=True)
    placement = {"start_new_session": True} if group is None else {"process_group": group}
    with log.open("ab") as out:
        return subprocess.Popen(
            command,
            cwd=cwd,
            env=dict(env),
            stdout=out,
            stderr=subprocess.STDOUT,
            **placement,
        )


@contextlib.contextmanager
def dask_cluster(
    bin_dir: Path, workdir: Path, env: Mapping[str, str], workers: int = 2
) -> Iterator[Cluster]:
    """`dask scheduler` and `workers` x `dask worker` (one single-threaded process each)."""
    port = free_port()
    address = f"tcp://127.0.0.1:{port}"
    dask = str(bin_dir / "dask")
    processes = []
    scheduler = start(
        [dask, "scheduler", "--host", "127.0.0.1", "--port", str(port), "--no-dashboard"],
        workdir / "scheduler",
        env,
        workdir / "scheduler.log",
    )
    processes.append(scheduler)
    try:
        for number in range(1, workers + 1):
            name = f"worker-{number}"
            worker = start(
                [dask, "worker", address, "--host", "127.0.0.1", "--name", name, *WORKER_ARGS],
                workdir / name,
                env,
                workdir / f"{name}.log",
                group=scheduler.pid,
            )
            processes.append(worker)
        ready = subprocess.run(
            [str(bin_dir / "python"), "-c", DASK_READY, address, str(workers)],
            cwd=workdir,
            env=dict(env),
            capture_output=True,
            text=True,
            timeout=180,
            check=False,
        )
        if ready.returncode != 0:
            raise RuntimeError(f"the Dask cluster at {address} did not start:\n{ready.stderr}")
        pids = json.loads(ready.stdout.strip().splitlines()[-1])
        yield Cluster("dask", address, scheduler.pid, pids)
    finally:
        stop_group(scheduler.pid)
        for process in processes:
            process.wait()


@contextlib.contextmanager
def ray_cluster(bin_dir: Path, workdir: Path, env: Mapping[str, str]) -> Iterator[Cluster]:
    """`ray start --head` on a free port, its own temp dir and no fixed port of Ray's defaults.

    Every address it advertises is 127.0.0.1 (RAY_SETTINGS, --node-ip-address), so all of its
    traffic stays on loopback.
    """
    port = free_port()
    # A short path: Ray's Unix sockets live under it, and socket paths are limited to 107 bytes.
    temp = Path(tempfile.mkdtemp(prefix="ray-"))
    workdir.mkdir(parents=True, exist_ok=True)
    command = [
        str(bin_dir / "ray"),
        "start",
        "--head",
        f"--port={port}",
        "--node-ip-address=127.0.0.1",
        f"--ray-client-server-port={free_port()}",
        "--num-cpus=2",
        "--include-dashboard=false",
        "--dashboard-agent-listen-port=0",
        "--min-worker-port=0",
        "--max-worker-port=0",
        "--disable-usage-stats",
        f"--temp-dir={temp}",
    ]
    head = start(command, workdir, {**env, **RAY_SETTINGS}, workdir / "ray.log", group=None)
    try:
        if head.wait(timeout=180) != 0:
            log = (workdir / "ray.log").read_text(errors="replace")
            raise RuntimeError(f"ray start exited {head.returncode}:\n{log[-3000:]}")
        yield Cluster("ray", f"127.0.0.1:{port}", head.pid)
    finally:
        stop_group(head.pid)
        shutil.rmtree(temp, ignore_errors=True)


@contextlib.contextmanager
def cluster_for(
    task_runner: str, bin_dir: Path, workdir: Path, env: Mapping[str, str]
) -> Iterator[Cluster | None]:
    """The cluster a task runner fans out on, or None for threads (the flow run's own)."""
    if task_runner == "dask":
        with dask_cluster(bin_dir, workdir, env) as cluster:
            yield cluster
    elif task_runner == "ray":
        with ray_cluster(bin_dir, workdir, env) as cluster:
            yield cluster
    else:
        yield None


def loads_of_run(api_url: str, flow_run_id: str, slug: str) -> list[Load]:
    """The load tasks of a finished flow run, from its run-summary artifact."""
    artifact = api(f"{api_url}/artifacts/{slug}-run-summary/latest")
    if artifact["flow_run_id"] != flow_run_id:
        raise AssertionError(f"the latest run summary is not flow run {flow_run_id}'s")
    data = artifact["data"]
    batches = json.loads(data) if isinstance(data, str) else data
    loads = []
    for batch in batches:
        where = LOADED_BY.fullmatch(batch["loaded_by"])
        assert where, batch
        loads.append(Load(batch["rows"], int(where[1]), int(where[2]), where[3]))
    return loads


def where_tasks_ran(loads: list[Load], cluster: Cluster) -> list[str]:
    """One line per load task: where it ran, and whether that process is the cluster's."""
    return [
        f"{load.rows} rows loaded by process {load.pid} on {load.host}: "
        + (
            f"a {cluster.kind} worker of {cluster.address}"
            if cluster.ran(load)
            else "NOT a cluster worker"
        )
        for load in loads
    ]


@contextlib.contextmanager
def demo_cluster(
    task_runner: str, repo: Path, workdir: Path, env: dict[str, str]
) -> Iterator[Cluster | None]:
    """`make demo`'s cluster for dask or ray: started beside the server, its address added to
    `env` (the worker's, which flow runs inherit), stopped on the way out."""
    with cluster_for(task_runner, repo / ".venv" / "bin", workdir / "cluster", env) as cluster:
        if cluster:
            print(f"      {cluster.kind} cluster at {cluster.address}", flush=True)
            env.update(cluster.env | cluster.driver_env)
        yield cluster


def print_where_tasks_ran(api_url: str, flow_run_id: str, slug: str, cluster: Cluster) -> None:
    for line in where_tasks_ran(loads_of_run(api_url, flow_run_id, slug), cluster):
        print(f"      {line}", flush=True)
