"""Fleets (DESIGN §12): host labels, and draining a host (`filerexec drain` / `resume`)."""

from __future__ import annotations

from pathlib import Path

import pytest

from filerexec import cli
from filerexec.config import ConfigError, parse_config
from filerexec.spec import parse_job
from tests.conftest import Host
from tests.test_daemon import started_runs
from tests.util import wait_for


def test_host_matches_names_and_labels_ignoring_case() -> None:
    gpu = parse_job("commands: nvidia-smi\nhost: GPU\n", "j")
    assert gpu.targets("box1", ("linux", "gpu")) and gpu.targets("gpu")
    assert not gpu.targets("box1", ("linux",)) and not gpu.targets("box1")
    both = parse_job("commands: ls\nhost: [nas, Linux]\n", "j")
    assert both.targets("NAS") and both.targets("pc", ("LINUX",)) and not both.targets("pc")
    assert parse_job("commands: ls\n", "j").targets("anything", ("gpu",))


def test_labels_in_the_config_file() -> None:
    found = parse_config("labels: [gpu, linux, GPU]\n")
    assert found["labels"] == (("gpu", "linux"), 1)  # a label named twice counts once
    assert parse_config("labels: gpu\n")["labels"][0] == ("gpu",)
    with pytest.raises(ConfigError, match=r"line 2: `labels`: 'a b' is not a label"):
        parse_config("host: x\nlabels: [a b]\n")


def test_a_job_for_a_label_runs_on_the_host_that_carries_it(
        host: Host, capsys: pytest.CaptureFixture[str]) -> None:
    host.extra_args += ["--label", "gpu", "--label", "Linux"]
    host.start()
    host.drop("for-gpu.yaml", "commands: 'true'\nhost: GPU\n")
    host.drop("for-arm.yaml", "commands: 'true'\nhost: arm\n")
    host.drop("any.yaml", "commands: 'true'\n")
    host.wait_state("for-gpu", "succeeded")
    host.wait_state("any", "succeeded")
    assert host.status("for-arm") is None and started_runs(host, "for-arm") == 0
    wait_for(lambda: host.heartbeat().get("labels") == ["gpu", "Linux"], what="the labels")
    index = (host.status_dir / "index.md").read_text()
    assert "Labels: gpu, Linux." in index
    wait_for(lambda: "labels: gpu, Linux" in (host.status_dir / "index.html").read_text(),
             what="index.html to show the labels")
    assert cli.main(["status", str(host.spool)]) == cli.OK
    hosts = capsys.readouterr().out.split("\n\n")[-1].splitlines()
    assert hosts[0].split() == ["HOST", "STATE", "LABELS"]
    assert hosts[1].split() == ["testhost", "serving", "gpu,", "Linux"]


def drain(host: Host, command: str = "drain") -> None:
    assert cli.main([command, str(host.spool), "--state-dir", str(host.state)]) == cli.OK


@pytest.mark.slow
def test_drain_finishes_running_jobs_starts_nothing_new_and_outlasts_a_restart(
        host: Host, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    gate, ran = tmp_path / "gate", tmp_path / "ran"
    host.start()
    host.drop("long.yaml", f"commands: while [ ! -e {gate} ]; do sleep 0.05; done\n")
    host.wait_state("long", "running")
    drain(host)
    assert "draining" in capsys.readouterr().out
    wait_for(lambda: host.heartbeat().get("state") == "draining", what="host.yaml: draining")
    assert "resume" in host.heartbeat()["reason"]
    host.drop("new.yaml", f"commands: touch {ran}\n")
    doc = host.wait_state("new", "pending")
    wait_for(lambda: "draining" in str((host.status("new") or {}).get("reason")),
             what="the reason: draining")
    host.stop()
    host.start()  # the drain outlasts a restart; the running job is adopted
    wait_for(lambda: host.heartbeat().get("state") == "draining", what="draining again")
    gate.touch()
    host.wait_state("long", "succeeded")
    wait_for(lambda: host.heartbeat().get("state") == "drained", what="host.yaml: drained")
    doc = host.wait_state("new", "pending")
    assert "filerexec resume" in doc["reason"] and started_runs(host, "new") == 0
    assert not ran.exists()
    drain(host, "resume")
    assert "resumed" in capsys.readouterr().out
    doc = host.wait_state("new", "succeeded")
    wait_for(lambda: host.heartbeat().get("state") == "serving", what="serving again")
    assert ran.exists() and started_runs(host, "new") == 1 and "reason" not in host.heartbeat()


def test_drain_and_resume_say_what_they_did(
        host: Host, capsys: pytest.CaptureFixture[str]) -> None:
    drain(host, "resume")
    assert "was not draining" in capsys.readouterr().out
    drain(host)
    drain(host)
    assert "already draining" in capsys.readouterr().out
