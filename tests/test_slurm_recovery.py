"""`executor: slurm` when things die (DESIGN §11, issue 11 "nothing runs twice, nothing is
lost"): the daemon killed between sbatch and recording the Slurm id, restarted while a Slurm
job runs or after it ended, and the Slurm controller down. On the real private cluster
(tests/slurm_cluster.py, the `cluster` fixture in conftest.py)."""

from __future__ import annotations

import os
import shutil
import signal
import time
from pathlib import Path

import pytest

from tests.conftest import Host
from tests.dying_slurm_daemon import DIED_AFTER_SBATCH
from tests.slurm_cluster import Cluster
from tests.util import wait_for


def slow_slurm(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, command: str,
               script: str) -> None:
    """Put a wrapper of one real Slurm command first on the daemon's PATH: ``script`` runs
    around the real one (``$REAL "$@"``): a slow controller, an answer that is lost."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    wrapper = bin_dir / command
    real = shutil.which(command)
    assert real is not None, command
    wrapper.write_text(f"#!/bin/sh\nREAL={real}\n{script}\n")
    wrapper.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")


FORGETFUL = ('out=$("$REAL" "$@") || exit; printf "%s\\n" "$out" | '
             "grep -v -E 'JobState=(COMPLETED|FAILED|CANCELLED|TIMEOUT)'; exit 0")
"""scontrol as a controller answers once MinJobAge has passed: ended jobs are not listed."""


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


@pytest.mark.slow
def test_with_the_controller_down_jobs_wait_and_the_loop_goes_on(
        slurm_host: Host, cluster: Cluster, tmp_path: Path) -> None:
    """sbatch and scontrol block ~9 s, then fail: the job waits `pending` with the reason,
    the daemon's loop goes on meanwhile, and once the controller is back it runs once. A job
    already on the node goes on and ends meanwhile; its exit code comes in afterwards."""
    count, end = tmp_path / "count", tmp_path / "end"
    slurm_host.start()
    slurm_host.drop("on-node.yaml", f"commands: until [ -e {end} ]; do sleep 0.1; done; "
                    "exit 9\n")
    running_in_slurm(slurm_host, "on-node")
    cluster.stop_controller()
    try:
        end.touch()  # it ends while nobody can ask Slurm about it
        slurm_host.drop("wait.yaml", f"commands: echo ran >> {count}\n")
        slurm_host.wait_state("wait", "pending")
        asked = time.monotonic()  # the worker is now blocked in a Slurm command
        slurm_host.drop("broken.yaml", "commands: [\n")
        slurm_host.drop("greedy.yaml", "commands: 'true'\nslurm: {partition: gpu}\n")
        slurm_host.wait_state("broken", "invalid", timeout=5)
        slurm_host.wait_state("greedy", "rejected", timeout=5)
        assert time.monotonic() - asked < 5  # not after the ~9 s Slurm's commands take
        doc = wait_for(lambda: (d := slurm_host.status("wait")) and
                       d["reason"].startswith("waiting for Slurm (") and d,
                       timeout=40, what="the reason to name the controller")
        assert doc["state"] == "pending" and "Unable to contact slurm controller" in \
            doc["reason"] and "slurm_job" not in doc
        assert slurm_host.heartbeat()["jobs"]["pending"] == 1
        assert slurm_host.status("on-node")["state"] == "running"  # type: ignore[index]
    finally:
        cluster.start_controller()
    doc = slurm_host.wait_state("wait", "succeeded", timeout=60)
    assert count.read_text() == "ran\n"
    on_node = slurm_host.wait_state("on-node", "failed", timeout=60)
    assert on_node["exit_code"] == 9
    assert sorted(cluster.submitted(str(slurm_host.state))) == sorted(
        [str(on_node["slurm_job"]), str(doc["slurm_job"])])


@pytest.mark.slow
def test_a_submission_whose_answer_was_lost_is_found_not_made_again(
        slurm_host: Host, cluster: Cluster, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """sbatch reached the controller, but its answer never came back (here: the real sbatch
    ran, then the wrapper says what sbatch says of a controller gone): the worker asks
    for the run's name before submitting again, and finds it."""
    count = tmp_path / "count"
    slow_slurm(tmp_path, monkeypatch, "sbatch", '"$REAL" "$@" >/dev/null || exit\n'
               'echo "sbatch: error: Batch job submission failed: Unable to contact slurm '
               'controller (connect failure)" >&2; exit 1')
    slurm_host.start()
    slurm_host.drop("lost-answer.yaml", f"commands: echo ran >> {count}\n")
    doc = slurm_host.wait_state("lost-answer", "succeeded", timeout=30)
    assert count.read_text() == "ran\n"
    assert cluster.submitted(str(slurm_host.state)) == [str(doc["slurm_job"])]
    log = slurm_host.log.read_text()
    assert "asking for it by name" in log and "by its name" in log


@pytest.mark.slow
def test_a_job_deleted_while_slurm_is_slow_to_answer_is_never_submitted(
        slurm_host: Host, cluster: Cluster, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The worker is asking Slurm what it knows (4 s, a busy controller) when the job's
    file is deleted and the loop cancels the run: the worker must not submit it after."""
    marker = tmp_path / "ran"
    slow_slurm(tmp_path, monkeypatch, "scontrol", 'sleep 4; exec "$REAL" "$@"')
    slurm_host.start()
    job = slurm_host.drop("gone.yaml", f"commands: touch {marker}\n")
    slurm_host.wait_state("gone", "pending")  # being submitted: the worker asks scontrol
    job.unlink()
    doc = slurm_host.wait_state("gone", "killed", timeout=15)
    assert doc["reason"] == "job file deleted" and "slurm_job" not in doc
    slurm_host.drop("next.yaml", "commands: 'true'\n")  # submitted only in a later round
    wait_for(lambda: (d := slurm_host.status("next")) and d.get("slurm_job"), timeout=40,
             what="the next job to be submitted")
    assert len(cluster.submitted(str(slurm_host.state))) == 1 and not marker.exists()


@pytest.mark.slow
def test_a_job_slurm_has_forgotten_gets_its_exit_code_from_its_exit_file(
        slurm_host: Host, cluster: Cluster, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Ended while the daemon was down, and Slurm no longer lists it (MinJobAge): one run
    whose id was recorded, one whose daemon died right after sbatch."""
    end = tmp_path / "end"
    slurm_host.start()
    slurm_host.drop("recorded.yaml", f"commands: until [ -e {end} ]; do sleep 0.1; done; "
                    "exit 6\n")
    recorded = running_in_slurm(slurm_host, "recorded")
    assert slurm_host.stop() == 0
    slurm_host.entry = ["-m", "tests.dying_slurm_daemon"]
    proc = slurm_host.start()
    slurm_host.drop("unrecorded.yaml", "commands: exit 7\n")
    assert proc.wait(timeout=30) == DIED_AFTER_SBATCH
    slurm_host.proc = None
    end.touch()
    [unrecorded] = [i for i in cluster.submitted(str(slurm_host.state)) if i != recorded]
    for job_id in (recorded, unrecorded):
        wait_for(lambda: cluster.state_of(job_id) == "FAILED", timeout=30,  # noqa: B023
                 what=f"Slurm to see job {job_id} end")
    slow_slurm(tmp_path, monkeypatch, "scontrol", FORGETFUL)
    slurm_host.entry = ["-m", "filerexec"]
    slurm_host.start()
    doc = slurm_host.wait_state("recorded", "failed", timeout=30)
    assert (doc["exit_code"], doc["slurm_job"]) == (6, recorded)
    doc = slurm_host.wait_state("unrecorded", "failed", timeout=30)
    assert doc["exit_code"] == 7
