"""Ctrl-C on `make demo DEMO_ARGS="--data runtime=docker"` while a flow-run container runs: the
demo stops and removes everything it started (containers, volume, worker, server, moto, the
registry), as its docstring promises.

A real SIGINT to make's process group, as a terminal sends it. The project name is the suite's
own, so the volume and pool never meet those of tests/test_docker_e2e.py running beside it.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest

from bench.concurrency_bench import api
from tests.e2e import docker
from tests.rendering import ROOT

pytestmark = pytest.mark.slow

SLUG = "interrupt-etl"


def read_until(
    process: subprocess.Popen[str], pattern: str, seen: list[str], timeout: float
) -> re.Match[str]:
    """The match in the first of the demo's output lines that matches pattern; fails when the
    demo exits or the time is up first."""
    deadline = time.monotonic() + timeout
    assert process.stdout is not None
    for line in process.stdout:
        seen.append(line)
        if found := re.search(pattern, line):
            return found
        if time.monotonic() > deadline:
            break
    pytest.fail(f"no line matching {pattern!r} after {timeout:.0f} s:\n{''.join(seen)}")


def answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=3):
            return True
    except OSError:
        return False


def processes_under(directory: Path) -> list[str]:
    """Command lines of live processes that name a path under directory."""
    found = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            command = cmdline.read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if str(directory) in command:
            found.append(command)
    return found


def test_ctrl_c_during_a_container_run_removes_everything(tmp_path: Path) -> None:
    reason = docker.unavailable()
    if reason:
        if os.environ.get("CI"):
            pytest.fail(f"CI runs the Docker end-to-end tests, but {reason}")
        pytest.skip(reason)
    workdir = tmp_path / "demo"
    arguments = f"--dir {workdir} --data runtime=docker --data project_name=Interrupt-ETL"
    started = time.monotonic()
    # A terminal's foreground job takes Ctrl-C. A process that ignores SIGINT (an xdist worker
    # of the whole suite can) hands that on to what it starts, and then neither make nor the
    # demo would ever see the signal: start the demo with SIGINT's default disposition.
    previous = signal.signal(signal.SIGINT, signal.SIG_DFL)
    try:
        demo = subprocess.Popen(
            ["make", "demo", f"DEMO_ARGS={arguments}"],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,  # its own process group, as a terminal's foreground job
        )
    finally:
        signal.signal(signal.SIGINT, previous)
    seen: list[str] = []
    try:
        services = read_until(demo, r"where: registry (\S+), moto \S+ \S+ (\S+)", seen, 120)
        registry, moto = services.groups()
        server = read_until(demo, r"where: (http://127\.0\.0\.1:\d+)", seen, 300)[1]
        worker = int(read_until(demo, r"where: host process (\d+)", seen, 600)[1])
        pool = api(f"{server}/api/work_pools/{SLUG}-dev")
        read_until(demo, r"flow run pending", seen, 300)
        # The worker is starting the container; it lives for seconds (Python, Prefect, the ETL).
        deadline = time.monotonic() + 120
        while not docker.pool_containers(pool["id"]):
            assert time.monotonic() < deadline, "no flow-run container started for the pool"
            time.sleep(0.2)
        os.killpg(demo.pid, signal.SIGINT)  # Ctrl-C
        rest, _ = demo.communicate(timeout=120)
    finally:
        if demo.poll() is None:
            os.killpg(demo.pid, signal.SIGKILL)
            demo.wait()
    output = "".join(seen) + rest
    print(f"\nCtrl-C test: {time.monotonic() - started:.0f} s")

    assert demo.returncode != 0, output
    assert "Interrupted: everything the demo started was stopped and removed." in output
    assert not docker.pool_containers(pool["id"]), output
    assert not docker.docker("volume", "ls", "-q", "--filter", f"name=^{SLUG}-dev$").split()
    assert not Path(f"/proc/{worker}").exists(), "the worker is still running"
    for url in (f"http://{registry}/v2/", f"{moto}/", f"{server}/api/health"):
        assert not answers(url), f"{url} still answers"
    assert not processes_under(workdir), processes_under(workdir)
    assert not list((workdir / "pipeline").glob(".prefect-prebuilt-*")), "a deploy file was left"
