"""`executor: slurm` when things die (DESIGN §11, issue 11 "nothing runs twice, nothing is
lost"): the daemon killed between sbatch and recording the Slurm id, restarted while a Slurm
job runs or after it ended, and the Slurm controller down. On the real private cluster
(tests/slurm_cluster.py, the `cluster` fixture in conftest.py)."""

from __future__ import annotations

import signal
from pathlib import Path

import pytest

from tests.conftest import Host
from tests.dying_slurm_daemon import DIED_AFTER_SBATCH
from tests.slurm_cluster import Cluster
from tests.util import wait_for


def running_in_slurm(host: Host, job: str) -> str:
    """Wait until ``job`` runs on the node; its Slurm id."""
    doc = wait_for(lambda: (d := host.status(job)) and d["state"] == "running"
                   and d.get("slurm_job") and d, timeout=30, what=f"{job} running in Slurm")
    return str(doc["slurm_job"])


@pytest.mark.slow
def test_a_daemon_killed_right_after_sbatch_finds_the_job_by_its_name(
        slurm_host: Host, cluster: Cluster, tmp_path: Path) -> None:
    count = tmp_path / "count"
    slurm_host.entry = ["-m", "tests.dying_slurm_daemon"]
    proc = slurm_host.start()
    slurm_host.drop("once.yaml", f"commands: echo ran >> {count}; echo hello\n")
    assert proc.wait(timeout=30) == DIED_AFTER_SBATCH  # Slurm has it; the ledger has no id
    slurm_host.proc = None
    slurm_host.entry = ["-m", "filerexec"]
    slurm_host.start()
    doc = slurm_host.wait_state("once", "succeeded", timeout=30)
    assert cluster.submitted(str(slurm_host.state)) == [str(doc["slurm_job"])]  # one sbatch
    assert count.read_text() == "ran\n" and "hello" in slurm_host.log_of("once")
    assert f"found Slurm job {doc['slurm_job']} by its name" in slurm_host.log.read_text()


@pytest.mark.slow
def test_a_restarted_daemon_adopts_a_running_slurm_job(
        slurm_host: Host, cluster: Cluster, tmp_path: Path) -> None:
    go, end = tmp_path / "go", tmp_path / "end"
    slurm_host.start()
    slurm_host.drop("long.yaml", f"commands: echo before; until [ -e {go} ]; do sleep 0.1; done;"
                    f" echo after the restart; until [ -e {end} ]; do sleep 0.1; done; exit 4\n")
    job_id = running_in_slurm(slurm_host, "long")
    slurm_host.stop(signal.SIGKILL)
    slurm_host.start()
    go.touch()
    wait_for(lambda: "after the restart" in slurm_host.log_of("long"), timeout=20,
             what="output to keep reaching the log after the restart")
    assert slurm_host.status("long")["state"] == "running"  # type: ignore[index]
    end.touch()
    doc = slurm_host.wait_state("long", "failed", timeout=30)
    assert (doc["exit_code"], doc["slurm_job"]) == (4, job_id)
    assert cluster.submitted(str(slurm_host.state)) == [job_id]
    assert "adopted job long" in slurm_host.log.read_text()


@pytest.mark.slow
def test_a_job_that_ended_while_the_daemon_was_down_gets_its_exit_code(
        slurm_host: Host, cluster: Cluster, tmp_path: Path) -> None:
    end = tmp_path / "end"
    slurm_host.start()
    slurm_host.drop("brief.yaml", f"commands: until [ -e {end} ]; do sleep 0.1; done; "
                    "echo done; exit 5\n")
    job_id = running_in_slurm(slurm_host, "brief")
    assert slurm_host.stop() == 0
    end.touch()
    wait_for(lambda: cluster.state_of(job_id) == "FAILED", timeout=30,
             what="Slurm to see the job end")
    slurm_host.start()
    doc = slurm_host.wait_state("brief", "failed", timeout=30)
    assert (doc["exit_code"], doc["reason"]) == (5, "exit code 5")
    assert "done" in slurm_host.log_of("brief")
