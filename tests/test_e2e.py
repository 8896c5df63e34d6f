"""`make demo`'s path, in the suite: render, real server, reconcile, worker, run, Completed."""

from __future__ import annotations

import csv
import math
import os
import time
import urllib.request
from pathlib import Path

import pytest
import yaml

from tests.e2e.demo import count_rows, demo
from tests.e2e.server import running_server, running_worker
from tests.rendering import BIN, answers_of, repo_env, run


@pytest.mark.slow
def test_default_pipeline_runs_to_completion_on_a_local_server(tmp_path: Path) -> None:
    result = demo(tmp_path, {}, timeout=420)

    assert result.state == "COMPLETED", (tmp_path / "logs" / "worker.log").read_text()
    with (result.repo / "data" / "orders.csv").open() as f:
        source_rows = sum(1 for _ in csv.DictReader(f))
    assert result.rows_loaded == source_rows
    batch_size = yaml.safe_load((result.repo / "config" / "dev.yaml").read_text())["batch_size"]
    assert len(result.artifact) == math.ceil(source_rows / batch_size)
    assert sum(row["rows"] for row in result.artifact) == source_rows
    assert result.run_url.startswith("http://127.0.0.1:")
    # Everything the demo started was stopped: the server no longer answers.
    server = result.run_url.split("/runs/")[0]
    with pytest.raises(OSError):
        urllib.request.urlopen(f"{server}/api/health", timeout=5)

    # `make run` on the same checkout: the flow in this process on the working tree, with no
    # server configured (Prefect's ephemeral one) and no git credential anywhere (#22).
    home = tmp_path / "no-credentials"
    home.mkdir()
    env = repo_env(str(answers_of(result.repo)["python_version"]))
    env |= {"HOME": str(home), "PREFECT_HOME": str(home / "prefect"), "GIT_TERMINAL_PROMPT": "0"}
    env |= {"GIT_CONFIG_GLOBAL": "/dev/null", "GIT_CONFIG_NOSYSTEM": "1"}
    database = tmp_path / "make-run.db"
    env["WAREHOUSE_DSN"] = f"sqlite:///{database}"
    environment = answers_of(result.repo)["environments"][0]
    output = run(["make", "run", f"ENV={environment}"], cwd=result.repo, env=env, timeout=300)
    assert count_rows(database) == source_rows, output[-3000:]


@pytest.mark.slow
def test_ctrl_c_stops_the_worker_and_the_server(tmp_path: Path) -> None:
    """What `make demo` does on Ctrl-C: the context managers stop both, the port closes."""
    prefect = BIN / "prefect"
    with (
        pytest.raises(KeyboardInterrupt),
        running_server(prefect, tmp_path / "home", tmp_path / "server.log", os.environ) as server,
        running_worker(
            [str(prefect), "worker", "start", "--pool", "ctrl-c", "--type", "process"],
            cwd=tmp_path,
            env={**os.environ, **server.env()},
            log=tmp_path / "worker.log",
        ) as worker,
    ):
        time.sleep(5)
        raise KeyboardInterrupt
    assert worker.poll() is not None, "the worker is still running"
    assert server.process.poll() is not None, "the server is still running"
    with pytest.raises(OSError):
        urllib.request.urlopen(f"{server.url}/api/health", timeout=5)
