"""`executor: slurm` against a real single-node Slurm cluster (tests/slurm_cluster.py)."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from filerexec.config import ConfigError, parse_config
from filerexec.slurmspec import (
    JobInfo,
    SlurmConfig,
    backstop,
    parse_jobs,
    sbatch_args,
    time_limit,
)
from filerexec.spec import JobSpec, SpecError, parse_job
from tests.conftest import Host
from tests.slurm_cluster import Cluster
from tests.util import holds, wait_for

ENDED = ("FAILED", "CANCELLED")  # a job ended by a signal (TERM, then KILL) or a cancel


def test_scontrol_lines_and_sbatch_arguments() -> None:
    line = ("JobId=7 JobName=filerexec-r1 UserId=root(0) JobState=FAILED Reason=NonZeroExitCode "
            "Dependency=(null) ExitCode=3:0")
    [info] = parse_jobs(line + "\n").values()
    assert (info.job_id, info.name, info.state, info.code, info.ended) == (
        "7", "filerexec-r1", "FAILED", 3, True)
    assert JobInfo("8", "n", "CANCELLED", exit_code="0:15").code == 128 + 15
    assert JobInfo("9", "n", "PENDING", "Priority").queued
    assert time_limit(5) == "1" and time_limit(61) == "2" and time_limit(7200) == "120"
    assert backstop(5) == "2" and backstop(7200) == "121"
    args = sbatch_args("n", "/o", "/w", SlurmConfig(partition="debug", sbatch_args=("--x",)),
                       {"cpus": "2"}, 90)
    assert args[-4:] == ["--partition=debug", "--x", "--cpus-per-task=2", "--time=3"]


@pytest.mark.slow
def test_a_run_is_one_sbatch_submission_with_its_output_and_exit_code(
        slurm_host: Host, cluster: Cluster) -> None:
    slurm_host.start()
    slurm_host.drop("ok.yaml", "commands: echo hello from $SLURM_JOB_ID; echo oops >&2\n")
    slurm_host.drop("bad.yaml", "commands:\n  - echo one\n  - exit 3\n")
    doc = slurm_host.wait_state("ok", "succeeded", timeout=30)
    assert doc["exit_code"] == 0 and doc["slurm_job"] and "pid" not in doc
    log = slurm_host.log_of("ok")
    assert f"hello from {doc['slurm_job']}" in log and "oops" in log
    info = cluster.scontrol("-o", "show", "job", str(doc["slurm_job"]))
    assert "JobName=filerexec-" in info and "JobState=COMPLETED" in info
    bad = slurm_host.wait_state("bad", "failed", timeout=30)
    assert bad["exit_code"] == 3 and bad["reason"] == "exit code 3"


@pytest.mark.slow
def test_deleting_a_job_cancels_it_in_slurm(slurm_host: Host, cluster: Cluster,
                                             tmp_path: Path) -> None:
    marker = tmp_path / "began"
    slurm_host.start()
    job = slurm_host.drop("long.yaml", f"commands: touch {marker}; sleep 300\n")
    wait_for(marker.exists, timeout=30, what="the job to begin on the node")
    doc = wait_for(lambda: (d := slurm_host.status("long")) and d["state"] == "running"
                   and d.get("slurm_job") and d, timeout=30, what="running, with its Slurm id")
    job_id = str(doc["slurm_job"])
    job.unlink()
    doc = slurm_host.wait_state("long", "killed", timeout=30)
    assert doc["reason"] == "job file deleted"
    assert cluster.state_of(job_id) in ENDED


@pytest.mark.slow
def test_a_queued_run_is_pending_with_slurms_reason_and_its_timeout_counts_from_its_start(
        slurm_host: Host, cluster: Cluster, tmp_path: Path) -> None:
    """A run that waits in Slurm's queue is `pending` with Slurm's reason everywhere (its
    status, host.yaml's counts); its timeout begins when Slurm starts it; `operation: stop`
    is scancel."""
    hog, began = tmp_path / "hog-began", tmp_path / "timed-began"
    slurm_host.start()
    hog_job = f"commands: touch {hog}; sleep 300\nslurm: {{cpus: {os.cpu_count()}}}\n"
    slurm_host.drop("hog.yaml", hog_job)  # every CPU of the node: the next job must queue
    wait_for(hog.exists, timeout=30, what="the hog to begin on the node")
    slurm_host.drop("timed.yaml", f"commands: touch {began}; sleep 300\ntimeout: 3s\n"
                    "slurm: {cpus: 1}\n")
    queued = slurm_host.wait_state("timed", "pending", timeout=30)
    queued = wait_for(lambda: (d := slurm_host.status("timed")) and d.get("slurm_job") and
                      d["reason"] == "queued in Slurm: Resources" and d, timeout=15,
                      what="Slurm's reason in the status")
    assert wait_for(lambda: (j := slurm_host.heartbeat().get("jobs")) and j.get("pending") and j,
                    what="host.yaml to count it") == {"running": 1, "pending": 1}
    assert "JobState=PENDING" in cluster.scontrol("-o", "show", "job", str(queued["slurm_job"]))
    # Queued for longer than its timeout, and not killed for it.
    holds(lambda: (d := slurm_host.status("timed")) and d["state"] == "pending", 4,
          what="pending while Slurm holds it")

    hog_id = str(slurm_host.status("hog")["slurm_job"])  # type: ignore[index]
    slurm_host.drop("hog.yaml", "operation: stop\n" + hog_job)
    stopped = slurm_host.wait_state("hog", "killed", timeout=30)
    assert stopped["reason"] == "stopped by operation: stop"
    assert cluster.state_of(hog_id) in ENDED

    wait_for(began.exists, timeout=30, what="the timed job to begin once the hog is gone")
    start = time.monotonic()
    done = slurm_host.wait_state("timed", "killed", timeout=30)
    assert time.monotonic() - start >= 2.5  # its 3 s counted from Slurm's start, not the queue
    assert done["reason"] == "timeout: ran longer than 3s", done
    assert cluster.state_of(str(done["slurm_job"])) in ENDED


@pytest.mark.slow
def test_a_job_that_ignores_term_is_killed_after_the_grace(
        slurm_host: Host, cluster: Cluster, tmp_path: Path, _isolated_config: Path) -> None:
    """A deletion is scancel: TERM reaches the job's commands, which have the daemon's kill
    grace (1 s here) to clean up, as local jobs do; then the daemon's KILL (`scancel --full
    --signal=KILL`) ends the tree, well before Slurm's own KillWait (30 s here)."""
    marker = tmp_path / "began"
    _isolated_config.write_text(_isolated_config.read_text() + "kill_grace: 1s\n")
    slurm_host.start()
    job = slurm_host.drop("stubborn.yaml", f"commands: trap 'echo got TERM' TERM; touch {marker};"
                          " while :; do sleep 0.1; done\n")
    wait_for(marker.exists, timeout=30, what="the job to begin on the node")
    wait_for(lambda: (d := slurm_host.status("stubborn")) and d.get("slurm_job"), timeout=30,
             what="its Slurm id")
    job.unlink()
    asked = time.monotonic()
    doc = slurm_host.wait_state("stubborn", "killed", timeout=40)
    assert time.monotonic() - asked < 15  # delete grace 2 s + kill grace 1 s, not KillWait
    assert doc["reason"] == "job file deleted" and doc["exit_code"] == 128 + 9
    assert "got TERM" in slurm_host.log_of("stubborn")
    assert cluster.state_of(str(doc["slurm_job"])) in ENDED


@pytest.mark.slow
def test_a_job_cancelled_in_slurm_by_someone_else_is_killed_with_that_reason(
        slurm_host: Host, cluster: Cluster) -> None:
    slurm_host.start()
    slurm_host.drop("victim.yaml", "commands: sleep 300\n")
    doc = wait_for(lambda: (d := slurm_host.status("victim")) and d["state"] == "running"
                   and d.get("slurm_job") and d, timeout=30, what="running, with its Slurm id")
    cluster.cancel(str(doc["slurm_job"]))  # the cluster's admin, or the user at a shell
    asked = time.monotonic()
    doc = slurm_host.wait_state("victim", "killed", timeout=40)
    assert time.monotonic() - asked < 15  # TERM reached the job's commands: no KillWait
    assert doc["reason"] == "cancelled in Slurm (scancel)" and doc["exit_code"] == 128 + 15


@pytest.mark.slow
def test_without_slurms_commands_on_its_path_a_job_waits_and_says_why(
        host: Host, tmp_path: Path, _isolated_config: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A service started without the shell's `module load slurm`: nothing found to run."""
    empty = tmp_path / "no-slurm-here"
    empty.mkdir()
    monkeypatch.setenv("PATH", str(empty))
    _isolated_config.write_text("executor: slurm\nslurm: {poll: 0.3}\n")
    host.start()
    host.drop("first.yaml", "commands: 'true'\n")
    doc = wait_for(lambda: (d := host.status("first")) and "PATH" in d["reason"] and d,
                   what="the reason to say what is missing")
    assert doc["state"] == "pending"
    assert doc["reason"] == "waiting for Slurm (scontrol is not on the daemon's PATH)"


@pytest.mark.slow
def test_a_job_may_ask_only_for_what_the_host_allows(slurm_host: Host) -> None:
    slurm_host.start()
    slurm_host.drop("greedy.yaml", "commands: 'true'\nslurm: {partition: gpu, cpus: 1}\n")
    slurm_host.drop("fine.yaml", "commands: 'true'\nslurm: {cpus: 1, time: 5m}\n")
    doc = slurm_host.wait_state("greedy", "rejected")
    assert "slurm: partition" in doc["reason"] and "cpus, time" in doc["reason"]
    slurm_host.wait_state("fine", "succeeded", timeout=30)


def test_the_hosts_slurm_settings() -> None:
    found = parse_config("executor: slurm\nslurm: {partition: debug, allow: [cpus]}\n")
    assert found["executor"][0] == "slurm"
    assert found["slurm"][0] == SlurmConfig(partition="debug", allow=("cpus",))
    with pytest.raises(ConfigError, match=r"line 1: `executor`: must be local or slurm"):
        parse_config("executor: pbs\n")
    with pytest.raises(ConfigError, match=r"`slurm`: `allow` must be a list of partition"):
        parse_config("slurm: {allow: [shell]}\n")


def test_slurm_keys_are_checked_and_in_the_digest() -> None:
    spec = parse_job("commands: ls\nslurm: {cpus: 4, partition: gpu, time: 90m}\n", "j")
    assert spec.slurm == (("cpus", "4"), ("partition", "gpu"), ("time", "90"))
    plain = parse_job("commands: ls\n", "j").digest
    assert spec.digest != plain and parse_job("commands: ls\nslurm: {cpus: 2}\n", "j").digest \
        != parse_job("commands: ls\nslurm: {cpus: 4}\n", "j").digest
    assert JobSpec(name="j", commands=("ls",)).digest == plain  # no slurm: the old digest
    with pytest.raises(SpecError, match=r"line 2, column 9: `slurm` has no key 'gpus'"):
        parse_job("commands: ls\nslurm: {gpus: 1}\n", "j")
    with pytest.raises(SpecError, match="is not a Slurm value"):
        parse_job("commands: ls\nslurm: {mem: '8G; rm'}\n", "j")
